"""The append-only, hash-chained audit log: record and verify."""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from typing import Any

from django.db import connection, transaction
from django.db.models import Q, QuerySet
from django.utils import timezone

from access.models import AffiliateGroup, AuditEvent, Organisation

GENESIS_HASH = "0" * 64
# Any constant works: it names the one PostgreSQL advisory lock that serialises appends to the chain.
_CHAIN_LOCK_ID = 0x636F7272616C


def _entry_hash(prev_hash: str, fields: dict[str, Any]) -> str:
    canonical = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256((prev_hash + canonical).encode()).hexdigest()


def _hashed_fields(event: AuditEvent) -> dict[str, Any]:
    return {
        "seq": event.seq,
        "at": event.at.isoformat(),
        "actor": event.actor,
        "action": event.action,
        "organisation": event.organisation_id,
        "group": event.group_id,
        "object_type": event.object_type,
        "object_id": event.object_id,
        "data": event.data,
    }


def audit_record(
    *,
    action: str,
    actor: str,
    organisation: Organisation | None = None,
    group: AffiliateGroup | None = None,
    obj: Any = None,
    data: dict[str, Any] | None = None,
) -> AuditEvent:
    """Append one event to the chain. Runs in the caller's transaction, so it lands or rolls back with it."""
    if group is None and organisation is not None:
        group = organisation.group
    with transaction.atomic():
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT pg_advisory_xact_lock(%s)", [_CHAIN_LOCK_ID])
        last = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
        event = AuditEvent(
            seq=(last.seq + 1) if last else 1,
            at=timezone.now(),
            actor=actor,
            action=action,
            organisation=organisation,
            group=group,
            object_type=type(obj).__name__ if obj is not None else "",
            object_id=str(obj.pk) if obj is not None else "",
            data=json.loads(json.dumps(data or {}, default=str)),
            prev_hash=last.hash if last else GENESIS_HASH,
        )
        event.hash = _entry_hash(event.prev_hash, _hashed_fields(event))
        event.save()
    return event


@dataclass(frozen=True)
class ChainVerification:
    ok: bool
    checked: int
    first_bad_seq: int | None
    reason: str


def audit_verify() -> ChainVerification:
    """Walk the whole chain; report the first entry whose link or content does not match."""
    prev_hash = GENESIS_HASH
    expected_seq = 1
    checked = 0
    for event in AuditEvent.objects.order_by("seq").iterator(chunk_size=2000):
        if event.seq != expected_seq:
            return ChainVerification(False, checked, expected_seq, f"entry #{expected_seq} is missing")
        if event.prev_hash != prev_hash:
            return ChainVerification(False, checked, event.seq, "link to the previous entry is broken")
        if _entry_hash(prev_hash, _hashed_fields(event)) != event.hash:
            return ChainVerification(False, checked, event.seq, "content does not match its hash")
        prev_hash = event.hash
        expected_seq += 1
        checked += 1
    return ChainVerification(True, checked, None, "intact")


def audit_events_visible(*, principal: Any) -> QuerySet[AuditEvent]:
    """The entries a caller may read: those of their groups that concern one of their own organisations, or
    the group as a whole; every entry of the groups they administer. A sibling organisation's keys, key
    prefixes, scopes and deployments stay with that organisation (and the group's admins)."""
    return AuditEvent.objects.filter(group__in=principal.group_ids()).filter(
        Q(organisation__in=principal.organisation_ids()) | Q(organisation__isnull=True)
        | Q(group__in=principal.admin_group_ids))


_VERIFY_CACHE_KEY = "audit:verification"


def audit_verify_cached(*, max_age_seconds: int = 300) -> ChainVerification:
    """The chain's verification, recomputed at most every ``max_age_seconds``: walking the whole chain on
    every API call or evidence report would let any tenant make the service do unbounded work."""
    from django.core.cache import cache

    cached = cache.get(_VERIFY_CACHE_KEY)
    if cached is not None:
        return ChainVerification(**cached)
    result = audit_verify()
    cache.set(_VERIFY_CACHE_KEY, result.__dict__, timeout=max_age_seconds)
    return result

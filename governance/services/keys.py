"""Writes of the governance app: API keys."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import time
from collections.abc import Iterable

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from governance.audit import audit_record
from governance.models import ApiKey, Scope
from licensing.models import Organisation, Product

KEY_PREFIX_MARK = "crl_"


class KeyRejected(Exception):
    """The presented key cannot be used; the message is safe to show to the caller."""


def _hash_secret(full_key: str) -> str:
    # Keys carry 256 bits of randomness, so a single SHA-256 is as strong as a slow password hash here.
    return hashlib.sha256(full_key.encode()).hexdigest()


def validate_scopes(scopes: Iterable[str]) -> list[str]:
    scopes = list(dict.fromkeys(scopes))
    unknown = sorted(set(scopes) - set(Scope.values))
    if unknown:
        raise ValueError(f"Unknown scope(s) {', '.join(unknown)}; allowed: {', '.join(Scope.values)}.")
    if not scopes:
        raise ValueError(f"At least one scope is required; allowed: {', '.join(Scope.values)}.")
    return scopes


def api_key_create(
    *,
    organisation: Organisation,
    name: str,
    scopes: Iterable[str],
    created_by: str,
    product: Product | None = None,
    expires_at: dt.datetime | None = None,
    requests_per_minute: int | None = None,
    tokens_per_minute: int | None = None,
    max_concurrent: int | None = None,
    default_user: str = "",
) -> tuple[ApiKey, str]:
    """Create a key and return it with its full secret, which is never stored and cannot be shown again."""
    scope_list = validate_scopes(scopes)
    if product is not None and product.organisation_id != organisation.pk:
        raise ValueError("The product belongs to another organisation.")
    if expires_at is not None and expires_at <= timezone.now():
        raise ValueError("expires_at must be in the future.")
    prefix = KEY_PREFIX_MARK + secrets.token_hex(4)
    full_key = f"{prefix}.{secrets.token_urlsafe(32)}"
    with transaction.atomic():
        api_key = ApiKey.objects.create(
            organisation=organisation,
            name=name,
            prefix=prefix,
            key_hash=_hash_secret(full_key),
            scopes=scope_list,
            product=product,
            expires_at=expires_at,
            created_by=created_by,
            requests_per_minute=requests_per_minute,
            tokens_per_minute=tokens_per_minute,
            max_concurrent=max_concurrent,
            default_user=default_user,
        )
        audit_record(
            action="api_key.created",
            actor=created_by,
            organisation=organisation,
            obj=api_key,
            data={"prefix": prefix, "name": name, "scopes": scope_list, "product": product and product.pk},
        )
    return api_key, full_key


def api_key_revoke(*, api_key: ApiKey, revoked_by: str) -> ApiKey:
    """Revoke a key; revoking a revoked key changes nothing and records nothing."""
    with transaction.atomic():
        changed = ApiKey.objects.filter(pk=api_key.pk, revoked_at__isnull=True).update(
            revoked_at=timezone.now(), revoked_by=revoked_by
        )
        if changed:
            audit_record(
                action="api_key.revoked",
                actor=revoked_by,
                organisation=api_key.organisation,
                obj=api_key,
                data={"prefix": api_key.prefix},
            )
    api_key_cache_forget(api_key.prefix)
    api_key.refresh_from_db()
    return api_key


def api_key_delete(*, api_key: ApiKey, deleted_by: str) -> None:
    """Revoke a key and take it out of the API (its listing and its URL answer as for no key); the row and the
    audit trail stay. Deleting a deleted key changes nothing and records nothing."""
    with transaction.atomic():
        api_key_revoke(api_key=api_key, revoked_by=deleted_by)
        if ApiKey.objects.filter(pk=api_key.pk, deleted_at__isnull=True).update(deleted_at=timezone.now()):
            audit_record(action="api_key.deleted", actor=deleted_by, organisation=api_key.organisation,
                         obj=api_key, data={"prefix": api_key.prefix})


# Key rows are cached in this process for API_KEY_CACHE_SECONDS, so a request does not pay a query to
# authenticate. Every check (hash, revocation, expiry, suspension) still runs on each request against the
# cached row; a revocation made in another process takes effect here within that many seconds (at once
# in the process that revoked it).
_key_cache: dict[str, tuple[ApiKey | None, float]] = {}
_KEY_CACHE_MAX = 10_000


def _key_row(prefix: str) -> ApiKey | None:
    ttl = settings.API_KEY_CACHE_SECONDS
    now = time.monotonic()
    cached = _key_cache.get(prefix)
    if cached is not None and now - cached[1] < ttl:
        return cached[0]
    api_key = ApiKey.objects.select_related("organisation", "organisation__group").filter(prefix=prefix).first()
    if ttl > 0:
        if len(_key_cache) >= _KEY_CACHE_MAX:
            _key_cache.clear()
        _key_cache[prefix] = (api_key, now)
    return api_key


def api_key_cache_forget(prefix: str) -> None:
    _key_cache.pop(prefix, None)


def api_key_authenticate(presented: str) -> ApiKey:
    """The active key matching ``presented``, or KeyRejected. Compares hashes in constant time."""
    prefix, dot, _secret = presented.partition(".")
    if not dot or not prefix.startswith(KEY_PREFIX_MARK) or len(prefix) > 16:
        raise KeyRejected("Invalid API key.")
    api_key = _key_row(prefix)
    # Hash even when no key has this prefix, so timing does not reveal which prefixes exist.
    presented_hash = _hash_secret(presented)
    stored_hash = api_key.key_hash if api_key else "0" * 64
    matched = hmac.compare_digest(presented_hash, stored_hash)  # before the None test: the same work either way
    if api_key is None or not matched:
        raise KeyRejected("Invalid API key.")
    now = timezone.now()
    if api_key.revoked_at is not None:
        raise KeyRejected("This API key has been revoked.")
    if api_key.is_expired(now):
        raise KeyRejected("This API key has expired.")
    if api_key.organisation.status != Organisation.Status.ACTIVE:
        raise KeyRejected("The organisation of this API key is suspended.")
    stale_before = now - settings.API_KEY_LAST_USED_RESOLUTION
    if api_key.last_used_at is None or api_key.last_used_at < stale_before:
        # Conditional, so concurrent requests write it once, and at most once per resolution period.
        ApiKey.objects.filter(pk=api_key.pk).exclude(last_used_at__gte=stale_before).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key

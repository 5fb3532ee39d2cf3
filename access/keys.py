"""API keys: creating, revoking and deleting them, and the one verifier (with its cache) that every surface
authenticates a presented key with: the REST API, the activity fast path and the inference gateway."""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import secrets
import threading
import time
from collections.abc import Iterable
from typing import Any, Protocol

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from access.audit import audit_record
from access.models import ApiKey, Organisation, Scope

KEY_PREFIX_MARK = "crl_"


class BoundProduct(Protocol):
    """What binding a key to a product needs of it (licensing's ``Product``, which builds on this app)."""

    pk: Any
    organisation_id: int


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
    product: BoundProduct | None = None,
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
            product_id=product.pk if product is not None else None,
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


# --- the one verifier, and its cache -----------------------------------------------------------------------

class KeyRejected(Exception):
    """The presented key cannot be used. ``reason`` is one of ``invalid``, ``revoked``, ``expired`` and
    ``suspended``; the message is safe to show to the caller (each surface puts it in its own error shape)."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class KeyCache:
    """Key rows by prefix, kept in this process for API_KEY_CACHE_SECONDS, so authenticating costs no query.

    The one cache of keys: the REST API, the activity fast path and the inference gateway all read it. It holds
    rows, not decisions: every check (hash, revocation, expiry, suspension) runs on each request against the
    cached row. A revocation in this process takes effect at once (``forget``); one made in another process
    within API_KEY_CACHE_SECONDS. An unknown prefix is cached too (as None), so a flood of made-up keys costs
    one query per prefix per period; when full, only expired entries are evicted, then everything.
    """

    max_entries = 50_000

    def __init__(self) -> None:
        self._entries: dict[str, tuple[ApiKey | None, float]] = {}
        # Request threads, the fast path's and the gateway's key threads all store here: eviction iterates.
        self._store_lock = threading.Lock()

    def cached(self, prefix: str) -> tuple[bool, ApiKey | None]:
        """(True, row or None) when a fresh entry exists, else (False, None): no query, safe on an event loop."""
        entry = self._entries.get(prefix)
        if entry is not None and entry[1] > time.monotonic():
            return True, entry[0]
        return False, None

    def load(self, prefix: str) -> ApiKey | None:
        """Read the row (with its organisation and group, so nothing loads lazily later) and keep it."""
        api_key = (ApiKey.objects.select_related("organisation", "organisation__group")
                   .filter(prefix=prefix).first())
        ttl = settings.API_KEY_CACHE_SECONDS
        if ttl > 0:
            self._store(prefix, api_key, ttl)
        return api_key

    def _store(self, prefix: str, api_key: ApiKey | None, ttl: float) -> None:
        with self._store_lock:
            now = time.monotonic()
            if len(self._entries) >= self.max_entries:
                for stale in [p for p, (_, until) in self._entries.items() if until <= now]:
                    del self._entries[stale]
                if len(self._entries) >= self.max_entries:
                    self._entries.clear()
            self._entries[prefix] = (api_key, now + ttl)

    def get(self, prefix: str) -> ApiKey | None:
        hit, api_key = self.cached(prefix)
        return api_key if hit else self.load(prefix)

    def forget(self, prefix: str) -> None:
        self._entries.pop(prefix, None)

    def clear(self) -> None:
        self._entries.clear()


key_cache = KeyCache()


def api_key_cache_forget(prefix: str) -> None:
    key_cache.forget(prefix)


def key_prefix(presented: str | bytes) -> str | None:
    """The prefix of a well-formed key (``crl_<hex>.<secret>``), or None: nothing else is looked up."""
    if isinstance(presented, bytes):
        try:
            presented = presented.decode("ascii")
        except UnicodeDecodeError:
            return None
    prefix, dot, _secret = presented.partition(".")
    if not dot or not prefix.startswith(KEY_PREFIX_MARK) or len(prefix) > 16:
        return None
    return prefix


_NO_KEY_HASH = "0" * 64


def key_verify(presented: str | bytes, api_key: ApiKey | None) -> ApiKey:
    """``api_key`` (the row of the presented key's prefix, None when there is none) if the presented key is its
    own and usable now; else KeyRejected. Hashes and compares in constant time even when there is no row, so
    timing does not tell which prefixes exist."""
    presented_bytes = presented.encode() if isinstance(presented, str) else presented
    presented_hash = hashlib.sha256(presented_bytes).hexdigest()
    matched = hmac.compare_digest(presented_hash, api_key.key_hash if api_key else _NO_KEY_HASH)
    if api_key is None or not matched:
        raise KeyRejected("invalid", "Invalid API key.")
    if api_key.revoked_at is not None:
        raise KeyRejected("revoked", "This API key has been revoked.")
    if api_key.is_expired():
        raise KeyRejected("expired", "This API key has expired.")
    if api_key.organisation.status != Organisation.Status.ACTIVE:
        raise KeyRejected("suspended", "The organisation of this API key is suspended.")
    return api_key


def api_key_authenticate(presented: str) -> ApiKey:
    """The REST API's and the fast path's authentication: the active key matching ``presented``, or
    KeyRejected; records its use at most once per API_KEY_LAST_USED_RESOLUTION (the gateway records its own
    with the usage it meters)."""
    prefix = key_prefix(presented)
    api_key = key_verify(presented, key_cache.get(prefix) if prefix else None)
    now = timezone.now()
    stale_before = now - settings.API_KEY_LAST_USED_RESOLUTION
    if api_key.last_used_at is None or api_key.last_used_at < stale_before:
        # Conditional, so concurrent requests write it once, and at most once per resolution period.
        ApiKey.objects.filter(pk=api_key.pk).exclude(last_used_at__gte=stale_before).update(last_used_at=now)
        api_key.last_used_at = now
    return api_key

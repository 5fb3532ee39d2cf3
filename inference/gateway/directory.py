"""What the gateway needs to know on every request, read from the database and cached in this process.

Keys come from the one key cache every surface shares (access/keys.py, API_KEY_CACHE_SECONDS); the gateway
only loads a missing one through its own threads. The deployments a key may name, its organisation's limits
and licence decisions are looked up with the ORM in a small thread pool and kept for GATEWAY_CACHE_SECONDS, so
a request normally costs no query at all, and a change (a deployment scaled, a group's status turning `over`,
a Meta grant) applies within that time in every gateway process (a key revoked or an organisation's move into
the EU: within API_KEY_CACHE_SECONDS). Concurrent requests for the same missing entry share one lookup. A lookup that fails
or takes longer than GATEWAY_BACKEND_TIMEOUT_SECONDS raises ``BackendUnavailable``: the gateway answers 503
rather than serve from an expired entry (fail closed).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TypeVar

from django.conf import settings
from django.db import close_old_connections, connections

from inference.gateway.limits import Limits

T = TypeVar("T")


class BackendUnavailable(Exception):
    """The database (or Redis) did not answer in time."""


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A verified key as the gateway uses it: its tenant, and the limits of key and organisation."""

    id: int
    organisation_id: int
    organisation_eu_domiciled: bool  # the EU clause of the 3.2 / 3.3 / 4 AUPs, refreshed with the key's row
    group_id: int
    product_id: int | None
    default_user: str
    key_limits: Limits
    org_limits: Limits
    max_tokens: int
    max_n: int


@dataclass(frozen=True, slots=True)
class OrganisationLimits:
    """An organisation's gateway limits (inference.GatewayLimit); None takes the setting's default."""

    key_requests_per_minute: int | None = None
    key_tokens_per_minute: int | None = None
    key_max_concurrent: int | None = None
    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    max_concurrent: int | None = None
    max_tokens: int | None = None
    max_n: int | None = None


@dataclass(frozen=True, slots=True)
class Upstream:
    replica_id: int
    endpoint: str
    authorization: str = field(repr=False)  # "Bearer <vLLM key>": never leaves the gateway, nor a repr


@dataclass(frozen=True, slots=True)
class DeploymentInfo:
    id: int
    organisation_id: int
    product_id: int
    licence_version_id: int
    served_model_name: str
    state: str
    created: int
    max_model_len: int
    upstreams: tuple[Upstream, ...]
    # What the EU clause needs of the model (licensing/eu_multimodal.py), read from the catalogue.
    version_name: str = ""
    licence_name: str = ""
    eu_multimodal_restriction: bool = False
    multimodal: bool = False


@dataclass(frozen=True, slots=True)
class Gate:
    allowed: bool
    reason: str
    detail: str


def _close_connections() -> None:
    for connection in connections.all(initialized_only=True):
        connection.close()  # back to the pool


def load_key_row(prefix: str) -> Any:
    """The key's row through the one key cache (access/keys.py), on a gateway thread."""
    from access.keys import key_cache

    close_old_connections()
    try:
        return key_cache.load(prefix)
    finally:
        _close_connections()


def load_limits(organisation_id: int) -> OrganisationLimits:
    from inference.models import GatewayLimit

    close_old_connections()
    try:
        row = GatewayLimit.objects.filter(organisation_id=organisation_id).first()
        if row is None:
            return OrganisationLimits()
        return OrganisationLimits(
            key_requests_per_minute=row.key_requests_per_minute, key_tokens_per_minute=row.key_tokens_per_minute,
            key_max_concurrent=row.key_max_concurrent, requests_per_minute=row.requests_per_minute,
            tokens_per_minute=row.tokens_per_minute, max_concurrent=row.max_concurrent,
            max_tokens=row.max_tokens, max_n=row.max_n)
    finally:
        _close_connections()


def _pick(own: int | None, organisation_value: int | None, default: int) -> int:
    return own if own is not None else (organisation_value if organisation_value is not None else default)


def key_info(key: Any, limits: OrganisationLimits) -> KeyInfo:
    """What the gateway uses of a verified key row: a key's own limit, else its organisation's, else the
    setting's."""
    return KeyInfo(
        id=key.pk, organisation_id=key.organisation_id, organisation_eu_domiciled=key.organisation.eu_domiciled,
        group_id=key.organisation.group_id, product_id=key.product_id, default_user=key.default_user,
        key_limits=Limits(
            _pick(key.requests_per_minute, limits.key_requests_per_minute, settings.GATEWAY_KEY_REQUESTS_PER_MINUTE),
            _pick(key.tokens_per_minute, limits.key_tokens_per_minute, settings.GATEWAY_KEY_TOKENS_PER_MINUTE),
            _pick(key.max_concurrent, limits.key_max_concurrent, settings.GATEWAY_KEY_MAX_CONCURRENT)),
        org_limits=Limits(
            _pick(None, limits.requests_per_minute, settings.GATEWAY_ORG_REQUESTS_PER_MINUTE),
            _pick(None, limits.tokens_per_minute, settings.GATEWAY_ORG_TOKENS_PER_MINUTE),
            _pick(None, limits.max_concurrent, settings.GATEWAY_ORG_MAX_CONCURRENT)),
        max_tokens=_pick(None, limits.max_tokens, settings.GATEWAY_MAX_TOKENS),
        max_n=_pick(None, limits.max_n, settings.GATEWAY_MAX_N),
    )


def _deployment_info(deployment: Any) -> DeploymentInfo:
    from inference.models import ReplicaState, replica_key

    version = deployment.base_model.licence_version
    upstreams = tuple(
        Upstream(r.pk, r.endpoint.rstrip("/"), f"Bearer {replica_key(r.pk, r.key_salt)}")
        for r in deployment.replica_set.all()
        if r.state == ReplicaState.READY and r.last_health_ok and r.endpoint
    )
    return DeploymentInfo(
        id=deployment.pk, organisation_id=deployment.organisation_id, product_id=deployment.product_id,
        licence_version_id=deployment.licence_version_id, served_model_name=deployment.served_model_name,
        state=deployment.state, created=int(deployment.created_at.timestamp()),
        max_model_len=deployment.max_model_len, upstreams=upstreams,
        version_name=version.name, licence_name=version.licence_name,
        eu_multimodal_restriction=version.eu_multimodal_restriction, multimodal=deployment.base_model.multimodal)


def load_deployments(organisation_id: int) -> dict[str, DeploymentInfo]:
    """The organisation's live deployments by served model name."""
    from inference.models import Deployment

    close_old_connections()
    try:
        deployments = (Deployment.objects.filter(organisation_id=organisation_id, deleted=False)
                       .select_related("base_model__licence_version").prefetch_related("replica_set"))
        return {d.served_model_name: _deployment_info(d) for d in deployments}
    finally:
        _close_connections()


def load_gate(organisation_id: int, licence_version_id: int) -> Gate:
    from access.models import Organisation
    from governance.compliance.services import access_check
    from licensing.models import LicenceVersion

    close_old_connections()
    try:
        organisation = Organisation.objects.get(pk=organisation_id)
        version = LicenceVersion.objects.get(pk=licence_version_id)
        decision = access_check(organisation=organisation, licence_version=version, fresh=True)
        return Gate(decision.allowed, decision.reason, decision.detail)
    finally:
        _close_connections()


class Directory:
    """TTL cache in front of the loaders above, with one lookup in flight per entry."""

    def __init__(self, *, ttl: float | None = None, timeout: float | None = None, threads: int = 4) -> None:
        self.ttl = settings.GATEWAY_CACHE_SECONDS if ttl is None else ttl
        self.timeout = settings.GATEWAY_BACKEND_TIMEOUT_SECONDS if timeout is None else timeout
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="gateway-db")
        # Key lookups have their own threads: a flood of made-up keys (each one a lookup) cannot starve the
        # deployment and licence lookups of the tenants whose keys are known.
        self.key_executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="gateway-keys")
        self._entries: dict[Any, tuple[Any, float]] = {}
        self._inflight: dict[Any, asyncio.Future[Any]] = {}
        # A verified key's KeyInfo, rebuilt only when its row (a new one after each key-cache refresh) or its
        # organisation's limits change: a derived value, never what decides whether the key is valid.
        self._key_infos: dict[int, tuple[Any, OrganisationLimits, KeyInfo]] = {}

    async def _get(self, cache_key: Any, load: Callable[..., T], *args: Any, executor: Any = None,
                   store: bool = True) -> T:
        if store:
            entry = self._entries.get(cache_key)
            if entry is not None and entry[1] > time.monotonic():
                return entry[0]
        future = self._inflight.get(cache_key)
        if future is None:
            future = asyncio.ensure_future(self._load(cache_key, load, *args, executor=executor, store=store))
            self._inflight[cache_key] = future
        return await asyncio.shield(future)

    async def _load(self, cache_key: Any, load: Callable[..., T], *args: Any, executor: Any = None,
                    store: bool = True) -> T:
        try:
            loop = asyncio.get_running_loop()
            value = await asyncio.wait_for(loop.run_in_executor(executor or self.executor, load, *args),
                                           self.timeout)
        except Exception as exc:
            self._entries.pop(cache_key, None)  # never serve from an entry that could not be refreshed
            raise BackendUnavailable(f"{type(exc).__name__}: {exc}") from exc
        finally:
            self._inflight.pop(cache_key, None)
        if store and self.ttl > 0:
            if len(self._entries) > 50_000:  # only expired entries go: a flood of unknown keys evicts no tenant
                now = time.monotonic()
                for stale in [k for k, (_, until) in self._entries.items() if until <= now]:
                    del self._entries[stale]
            self._entries[cache_key] = (value, time.monotonic() + self.ttl)
        return value

    def fresh(self, cache_key: Any) -> Any:
        """The cached value if it is still fresh, else None: the hot path's lookup, without a coroutine."""
        entry = self._entries.get(cache_key)
        return entry[0] if entry is not None and entry[1] > time.monotonic() else None

    def key_row(self, prefix: str) -> Awaitable[Any]:
        """Load a key the key cache does not hold (it keeps it; this keeps nothing), one lookup per prefix in
        flight, on threads of its own: a flood of made-up keys cannot starve the other lookups."""
        return self._get(("key", prefix), load_key_row, prefix, executor=self.key_executor, store=False)

    def limits(self, organisation_id: int) -> Awaitable[OrganisationLimits]:
        return self._get(("limits", organisation_id), load_limits, organisation_id)

    def key_info(self, key: Any, limits: OrganisationLimits) -> KeyInfo:
        memo = self._key_infos.get(key.pk)
        if memo is not None and memo[0] is key and memo[1] is limits:
            return memo[2]
        if len(self._key_infos) > 50_000:
            self._key_infos.clear()
        info = key_info(key, limits)
        self._key_infos[key.pk] = (key, limits, info)
        return info

    def deployments(self, organisation_id: int) -> Awaitable[dict[str, DeploymentInfo]]:
        return self._get(("deployments", organisation_id), load_deployments, organisation_id)

    def gate(self, organisation_id: int, licence_version_id: int) -> Awaitable[Gate]:
        return self._get(("gate", organisation_id, licence_version_id), load_gate, organisation_id,
                         licence_version_id)

    def forget(self) -> None:
        """Forget everything this process knows, keys included."""
        from access.keys import key_cache

        self._entries.clear()
        self._key_infos.clear()
        key_cache.clear()

    def close(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        self.key_executor.shutdown(wait=False, cancel_futures=True)

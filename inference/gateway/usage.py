"""Gateway metering: tokens per key, deployment and day, and the users fed to MAU, without a database write
per request.

``record`` adds to counters in memory (no I/O); ``flush`` (every GATEWAY_USAGE_FLUSH_SECONDS from the
gateway's background task, and at shutdown) adds them to TokenUsage rows with one upsert per row that
increments in the database, so any number of gateway processes add up, and writes the buffered MAU sketches
through governance's GatewayMeter. A failed flush keeps everything buffered and marks the meter unhealthy;
the gateway then refuses new requests with 503 until a flush succeeds, so nothing is served unmetered.
"""

from __future__ import annotations

import datetime as dt
import logging
import threading
from dataclasses import dataclass

from django.db import close_old_connections, connections, transaction
from django.utils import timezone

from config.observability import METERING_FLUSH_BACKLOG, METERING_FLUSH_ERRORS

logger = logging.getLogger("corral.gateway")


@dataclass(slots=True)
class Counters:
    requests: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cancelled_requests: int = 0
    failed_requests: int = 0
    requests_without_user: int = 0


_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "cancelled_requests", "failed_requests",
           "requests_without_user")
UsageKey = tuple[int, int, int, dt.date]  # organisation, key, deployment, day


class UsageMeter:
    def __init__(self) -> None:
        from governance.metering.services import gateway_meter

        self._lock = threading.Lock()
        self._flush_lock = threading.Lock()
        self._counters: dict[UsageKey, Counters] = {}
        self.users = gateway_meter()
        self.healthy = True

    def record(self, *, organisation_id: int, key_id: int, deployment_id: int, product_id: int,
               prompt_tokens: int, completion_tokens: int, user: str | None, cancelled: bool = False,
               failed: bool = False) -> None:
        day = dt.datetime.now(dt.timezone.utc).date()
        with self._lock:
            counters = self._counters.get((organisation_id, key_id, deployment_id, day))
            if counters is None:
                counters = self._counters[(organisation_id, key_id, deployment_id, day)] = Counters()
            counters.requests += 1
            counters.prompt_tokens += prompt_tokens
            counters.completion_tokens += completion_tokens
            counters.cancelled_requests += cancelled
            counters.failed_requests += failed
            counters.requests_without_user += user is None
        if user is not None:
            self.users.record(product_id=product_id, user=user, day=day)

    def pending(self) -> int:
        with self._lock:
            return sum(c.requests for c in self._counters.values())

    def flush(self) -> int:
        """Write what is buffered (runs in a worker thread). Returns the number of usage rows written."""
        with self._flush_lock:  # one flush at a time (the periodic one and the one at shutdown)
            try:
                return self._flush()
            except Exception:
                METERING_FLUSH_ERRORS.inc()
                raise
            finally:
                METERING_FLUSH_BACKLOG.set(self.pending())

    def _flush(self) -> int:
        from access.models import ApiKey
        from inference.models import TokenUsage

        with self._lock:
            buffered, self._counters = self._counters, {}
        try:
            if buffered:
                table = TokenUsage._meta.db_table
                columns = ", ".join(_FIELDS)
                sql = (f"INSERT INTO {table} (organisation_id, api_key_id, deployment_id, day, {columns}, updated_at) "
                       f"VALUES (%s, %s, %s, %s, {', '.join(['%s'] * len(_FIELDS))}, %s) "
                       f"ON CONFLICT (api_key_id, deployment_id, day) DO UPDATE SET "
                       + ", ".join(f"{f} = {table}.{f} + EXCLUDED.{f}" for f in _FIELDS)
                       + ", updated_at = EXCLUDED.updated_at")
                now = timezone.now()
                # Rows in one order in every process, so two flushes lock them in the same order (no deadlock).
                rows = [(org, key, dep, day, *(getattr(c, f) for f in _FIELDS), now)
                        for (org, key, dep, day), c in sorted(buffered.items(), key=lambda item: item[0][1:])]
                try:
                    with transaction.atomic(), connections["default"].cursor() as cursor:
                        cursor.executemany(sql, rows)
                except Exception:
                    self._restore(buffered)
                    raise
                # Outside the usage transaction: it takes no lock the upserts could wait on.
                ApiKey.objects.filter(pk__in={key for _, key, _, _ in buffered}).update(last_used_at=now)
            self.users.flush()
            self.healthy = True
            return len(buffered)
        except Exception:
            self.healthy = False
            raise

    def flush_in_thread(self) -> int:
        """``flush`` from a worker thread of the gateway: the thread's connections go back to the pool after."""
        close_old_connections()
        try:
            return self.flush()
        finally:
            for connection in connections.all(initialized_only=True):
                connection.close()

    def _restore(self, buffered: dict[UsageKey, Counters]) -> None:
        with self._lock:
            for key, counters in buffered.items():
                current = self._counters.setdefault(key, Counters())
                for f in _FIELDS:
                    setattr(current, f, getattr(current, f) + getattr(counters, f))

    def close(self) -> None:
        try:
            self.flush_in_thread()
        except Exception:
            logger.exception("gateway: could not write usage at shutdown; %d requests not recorded", self.pending())

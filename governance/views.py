"""/healthz: whether this process can reach what it depends on, and whether background work keeps up.

An unreachable database, cache or broker is a 503 ("degraded"). Beat not running or compaction lagging is
"degraded" with a 200: restarting this pod would not fix either, so a liveness probe must not see a failure.
``degraded`` lists the checks that are not ok.
"""

from __future__ import annotations

import time
import uuid

from django.conf import settings
from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from config.celery import app as celery_app
from governance.models import ActivityPart, Heartbeat


def _check_database() -> str:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")
    return "ok"


def _check_cache() -> str:
    probe = f"healthz:{uuid.uuid4().hex}"
    cache.set(probe, "1", timeout=10)
    ok = cache.get(probe) == "1"
    cache.delete(probe)
    return "ok" if ok else "cache did not return what was written"


def _check_broker() -> str:
    with celery_app.connection_for_write() as conn:
        conn.ensure_connection(max_retries=1, timeout=2)
    return "ok"


def _check_beat(beat: Heartbeat | None) -> str:
    if beat is None:
        return "degraded: beat has never run"
    age = (timezone.now() - beat.seen_at).total_seconds()
    if age > settings.HEALTHZ_BEAT_STALE_SECONDS:
        return f"degraded: beat last ran {age:.0f} s ago (limit {settings.HEALTHZ_BEAT_STALE_SECONDS} s)"
    return "ok"


def _check_compaction() -> str:
    oldest = (ActivityPart.objects.filter(quarantined_at__isnull=True).order_by("created_at")
              .values_list("created_at", flat=True).first())
    lag = (timezone.now() - oldest).total_seconds() if oldest else 0.0
    limit = settings.HEALTHZ_COMPACTION_LAG_SECONDS
    if lag > limit:
        return f"degraded: oldest uncompacted part is {lag:.0f} s old (limit {limit} s)"
    return "ok"


@require_GET
def healthz(request: HttpRequest) -> JsonResponse:
    checks: dict[str, str] = {}
    for name, check in (("database", _check_database), ("cache", _check_cache), ("broker", _check_broker)):
        started = time.monotonic()
        try:
            checks[name] = check()
        except Exception as exc:  # a health check reports every failure rather than raising it
            checks[name] = f"error: {type(exc).__name__}"
        checks[f"{name}_ms"] = f"{(time.monotonic() - started) * 1000:.1f}"
    beat = Heartbeat.objects.filter(component="beat").first() if checks["database"] == "ok" else None
    healthy = all(checks[name] == "ok" for name in ("database", "cache", "broker"))
    if checks["database"] == "ok":
        checks["beat"] = _check_beat(beat)
        try:
            checks["compaction"] = _check_compaction()
        except Exception as exc:  # reported, like every other check
            checks["compaction"] = f"error: {type(exc).__name__}"
    degraded = [name for name in ("database", "cache", "broker", "beat", "compaction")
                if name in checks and checks[name] != "ok"]
    body = {
        "status": "degraded" if degraded else "ok",
        "degraded": degraded,
        "checks": checks,
        "beat_last_seen": beat.seen_at.isoformat() if beat else None,
        "time": timezone.now().isoformat(),
    }
    return JsonResponse(body, status=200 if healthy else 503)

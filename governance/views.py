"""/healthz: whether this process can reach what it depends on."""

from __future__ import annotations

import time
import uuid

from django.core.cache import cache
from django.db import connection
from django.http import HttpRequest, JsonResponse
from django.utils import timezone
from django.views.decorators.http import require_GET

from config.celery import app as celery_app
from governance.models import Heartbeat


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
    body = {
        "status": "ok" if healthy else "degraded",
        "checks": checks,
        "beat_last_seen": beat.seen_at.isoformat() if beat else None,
        "time": timezone.now().isoformat(),
    }
    return JsonResponse(body, status=200 if healthy else 503)

from __future__ import annotations

import logging
import time

from celery import shared_task
from django.core.cache import cache

logger = logging.getLogger(__name__)
_LOCK = "inference:reconcile-lock"


@shared_task(ignore_result=True)
def reconcile_pool(max_seconds: float = 8.0) -> int:
    """Beat (every 10 s) and every change: converge deployments, replicas and GPUs to the database.

    One reconciler runs at a time (a short cache lock; the steps are safe to run concurrently anyway, this
    only avoids duplicate work). Repeats while a pass changes something, up to ``max_seconds``.
    """
    from inference.reconciler import reconcile_once

    if not cache.add(_LOCK, 1, timeout=60):
        return 0
    passes = 0
    try:
        started = time.monotonic()
        while time.monotonic() - started < max_seconds:
            passes += 1
            if not reconcile_once():
                break
    finally:
        cache.delete(_LOCK)
    return passes

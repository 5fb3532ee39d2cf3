"""Run a background task soon after a burst of changes, once, without Celery ETA tasks.

ETA (countdown) tasks sit in the worker's timer, and with the Redis transport and the prefork pool that
kept the worker's main process spinning (measured: 40% of a core in epoll register/unregister under
ingestion load). Instead, producers raise a "dirty" flag and queue the task at once unless one is already
queued or running; the task works until the flag stays down, and re-checks after releasing its claim, so a
change that lands while it finishes is never left for the once-a-minute beat safety net.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from django.conf import settings
from django.core.cache import cache

logger = logging.getLogger(__name__)
CLAIM_SECONDS = 300  # a crashed worker's claim expires, so the work is picked up again


def _cache_is_shared() -> bool:
    """Debouncing needs one cache for the web process and the workers (Redis). The embedded default's
    in-process cache is one per process, so there every change queues its task (they are idempotent)."""
    backend = settings.CACHES["default"]["BACKEND"]
    return not backend.endswith(("LocMemCache", "DummyCache"))


def request_run(name: str, enqueue: Callable[[], Any]) -> None:
    """Producer side: mark ``name`` dirty and queue its task unless one is queued or running.

    Never raises: it runs after the producer's transaction committed (``on_commit``), so an exception here
    would answer 500 for work that is already durable.
    """
    if not _cache_is_shared():
        try:
            enqueue()
        except Exception:
            logger.exception("could not queue %s; beat will pick the work up", name)
        return
    try:
        cache.set(f"debounce:{name}:dirty", 1, timeout=CLAIM_SECONDS)
        if not cache.add(f"debounce:{name}:claim", 1, timeout=CLAIM_SECONDS):
            return
    except Exception:  # without the cache, queue every time: the tasks are safe to run twice
        logger.warning("cache unavailable; queueing %s without debounce", name)
    try:
        enqueue()
    except Exception:  # the work is durable; beat picks it up within a minute
        logger.exception("could not queue %s; beat will pick the work up", name)
        try:
            cache.delete(f"debounce:{name}:claim")
        except Exception:  # Redis is down (the usual reason the broker is): its claim went with it
            logger.warning("cache unavailable; could not release the claim of %s", name)


def run_until_clean(name: str, work: Callable[[], Any], *, min_interval: float = 0.0, max_seconds: float = 50.0
                    ) -> int:
    """Task side: run ``work`` until no change arrived meanwhile. Returns how many times it ran.

    ``min_interval`` spaces repeated runs under sustained changes (an expensive evaluation need not run
    back to back); the first run is immediate.
    """
    dirty, claim = f"debounce:{name}:dirty", f"debounce:{name}:claim"
    started, runs = time.monotonic(), 0
    cache.set(claim, 1, timeout=CLAIM_SECONDS)  # also when queued by beat, so producers do not pile up
    while True:
        cache.delete(dirty)
        begun = time.monotonic()
        work()
        runs += 1
        if time.monotonic() - started > max_seconds:
            break
        if cache.get(dirty):
            time.sleep(max(0.0, min_interval - (time.monotonic() - begun)))
            continue
        cache.delete(claim)
        # A change that landed after the check above found the claim still held and queued nothing:
        # take the claim back and go round again.
        if cache.get(dirty) and cache.add(claim, 1, timeout=CLAIM_SECONDS):
            continue
        return runs
    cache.delete(claim)  # out of time: the next change (or beat, within a minute) queues a fresh task
    return runs

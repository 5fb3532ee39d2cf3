"""Run a background task soon after a burst of changes, once, without Celery ETA tasks.

ETA (countdown) tasks sit in the worker's timer, and with the Redis transport and the prefork pool that
kept the worker's main process spinning (measured: 40% of a core in epoll register/unregister under
ingestion load). Instead, producers raise a "dirty" flag and queue the task at once unless one is already
queued or running; the task works until the flag stays down, and re-checks after releasing its claim, so a
change that lands while it finishes is never left for the once-a-minute beat safety net.

Request threads on the ingestion hot path call ``request_run_soon``: it hands the name to one thread per
process, which raises each name once per burst a few milliseconds later, so a request waits for neither
Redis nor the broker (bench/mau.py: the four round trips per batch had each cost a wait for the GIL behind
other requests' hashing). The part is already committed; if the process dies in those milliseconds, beat's
once-a-minute run picks the work up.
"""

from __future__ import annotations

import atexit
import logging
import os
import threading
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
    backend = str(settings.CACHES["default"]["BACKEND"])
    return not backend.endswith(("LocMemCache", "DummyCache"))


def request_run(name: str, enqueue: Callable[[], Any], *, urgent: bool = False) -> None:
    """Producer side: mark ``name`` dirty and queue its task unless one is queued or running.

    ``urgent``: a task that is already looping goes round again at once rather than after its
    ``min_interval`` (a Meta grant must reach the gateway within seconds even while activity keeps the
    group's evaluation busy).

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
        if urgent:  # before the dirty flag: a task that sees the change also sees that it is urgent
            cache.set(f"debounce:{name}:urgent", 1, timeout=CLAIM_SECONDS)
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


class _Signals:
    """Names handed over by request threads, raised by one thread per process, a burst at a time."""

    DELAY = 0.01  # gather what arrives meanwhile into the same burst
    # ... and under sustained load, at most one burst per this many seconds: each burst costs two Redis
    # round trips per name, taken while the GIL is wanted by requests (bench/mau.py). A lone signal still
    # goes out within DELAY.
    MIN_GAP = 0.1

    def __init__(self) -> None:
        self._reset()
        os.register_at_fork(after_in_child=self._reset)  # a forked worker starts with no thread and no lock held

    def _reset(self) -> None:
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._pending: dict[str, tuple[Callable[[], Any], bool]] = {}
        self._thread: threading.Thread | None = None

    def submit(self, name: str, enqueue: Callable[[], Any], urgent: bool = False) -> None:
        with self._lock:
            self._pending[name] = (enqueue, urgent or self._pending.get(name, (None, False))[1])
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="debounce-signals", daemon=True)
                self._thread.start()
        self._wake.set()

    def _run(self) -> None:
        while True:
            self._wake.wait()
            time.sleep(self.DELAY)
            self._wake.clear()
            try:
                self.flush()
            except Exception:  # never let the thread die: the next burst tries again
                logger.exception("could not raise debounced work; beat will pick it up")
            time.sleep(self.MIN_GAP)

    def flush(self) -> None:
        with self._lock:
            batch, self._pending = self._pending, {}
        for name, (enqueue, urgent) in batch.items():
            request_run(name, enqueue, urgent=urgent)


_signals = _Signals()
atexit.register(_signals.flush)  # a clean shutdown sends what is still waiting


def request_run_soon(name: str, enqueue: Callable[[], Any], *, urgent: bool = False) -> None:
    """``request_run`` without waiting: the flags are raised from a background thread within milliseconds.
    With tasks run eagerly (tests) or without a shared cache, it is ``request_run`` itself."""
    from config.celery import app

    if not _cache_is_shared() or app.conf.task_always_eager:
        request_run(name, enqueue, urgent=urgent)
    else:
        _signals.submit(name, enqueue, urgent)


def run_until_clean(name: str, work: Callable[[], Any], *, min_interval: float = 0.0, max_seconds: float = 50.0
                    ) -> int:
    """Task side: run ``work`` until no change arrived meanwhile. Returns how many times it ran.

    ``min_interval`` spaces repeated runs under sustained changes (an expensive evaluation need not run
    back to back); the first run is immediate.
    """
    dirty, claim, urgent = f"debounce:{name}:dirty", f"debounce:{name}:claim", f"debounce:{name}:urgent"
    started, runs = time.monotonic(), 0
    cache.set(claim, 1, timeout=CLAIM_SECONDS)  # also when queued by beat, so producers do not pile up
    while True:
        cache.delete_many([dirty, urgent])
        begun = time.monotonic()
        work()
        runs += 1
        if time.monotonic() - started > max_seconds:
            break
        if cache.get(dirty):
            if not cache.get(urgent):
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

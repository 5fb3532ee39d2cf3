"""Work handed to inference's Celery tasks, found by name (governance/queue.py says why: services never import
the tasks that import them)."""

from __future__ import annotations

import logging

from governance.queue import task

logger = logging.getLogger(__name__)


def reconcile_soon() -> None:
    """Converge the pool to the database now; beat reconciles every 10 seconds whatever happens here."""
    try:
        task("inference.tasks.reconcile_pool").delay()
    except Exception:
        logger.warning("could not queue a reconcile; beat's next pass does it", exc_info=True)


def replica_log_read_soon(replica_id: int, organisation_id: int, *, queue: str | None) -> bool:
    """Ask the worker on ``queue`` (None: the default queue) to read a replica's last log lines into the cache.
    False when it could not be queued: unlike the rows above, nothing would pick the request up later."""
    try:
        task("inference.tasks.read_replica_log").apply_async(args=[replica_id, organisation_id], queue=queue)
    except Exception:
        logger.warning("could not queue a read of replica %s's log", replica_id, exc_info=True)
        return False
    return True

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

"""Work handed to governance's Celery tasks. Services and views queue through here, never by importing
governance/tasks.py: the tasks import the services, so that import would run back up and close a circle.

Tasks are found by name in the Celery app's registry (loading each app's tasks.py the first time, as a worker
does at start-up), so routing, eager mode in tests and retries are the task's own. Queueing never fails the
caller: every row a task works on is durable, and beat's sweeps pick up whatever a broker outage dropped.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import current_app

from governance.debounce import request_run_soon

logger = logging.getLogger(__name__)


def task(name: str) -> Any:
    """The registered task ``name`` (e.g. ``governance.tasks.dispatch_alert``)."""
    registry = current_app.tasks
    if name not in registry:
        current_app.loader.import_default_modules()  # autodiscovery: each installed app's tasks.py
    return registry[name]


def alert_dispatch_soon(alert_id: int) -> None:
    """Email the alert and deliver its webhooks; beat's sweep of undispatched alerts is the fallback."""
    try:
        task("governance.tasks.dispatch_alert").delay(alert_id)
    except Exception:
        logger.exception("could not queue alert %s for delivery", alert_id)


def webhook_delivery_soon(delivery_id: int) -> None:
    """Try a webhook delivery now; beat retries due deliveries every 30 s whatever happens here."""
    try:
        task("governance.tasks.deliver_webhook").delay(delivery_id)
    except Exception:
        logger.exception("could not queue webhook delivery %s", delivery_id)


def evaluation_soon(group_id: int, *, urgent: bool = False) -> None:
    """One evaluation of the group for a burst of changes (governance/debounce.py)."""
    request_run_soon(f"evaluation:{group_id}", lambda: task("governance.tasks.evaluate_group").delay(group_id),
                     urgent=urgent)


def compaction_soon() -> None:
    """One compaction for a burst of activity batches (governance/debounce.py)."""
    request_run_soon("compaction", lambda: task("governance.tasks.compact_metering").delay())

from __future__ import annotations

import logging

from celery import shared_task
from django.utils import timezone

from governance.models import Heartbeat

logger = logging.getLogger(__name__)


@shared_task(ignore_result=True)
def record_heartbeat(component: str = "beat") -> None:
    """Beat schedules this every minute; /healthz and the portal show when it last ran."""
    Heartbeat.objects.update_or_create(component=component, defaults={"seen_at": timezone.now()})
    logger.debug("heartbeat recorded for %s", component)


@shared_task(ignore_result=True, acks_late=True)
def compact_metering(max_seconds: float = 50.0) -> int:
    """Fold pending activity parts into rollups. Safe to run twice.

    Keeps going only while it finds full batches (a backlog): in steady state one step a second (the rate
    ingestion schedules it at) folds everything that arrived, instead of rewriting the same rollups for
    every few parts.
    """
    import time

    from django.conf import settings

    from governance.services import metering_compact_step

    started, folded = time.monotonic(), 0
    while time.monotonic() - started < max_seconds:
        step = metering_compact_step()
        folded += step
        if step < settings.METERING_COMPACT_BATCH:
            break
    if folded:
        logger.info("metering compaction folded %d parts", folded)
    return folded


@shared_task(ignore_result=True)
def purge_idempotency_records() -> int:
    from governance.services import idempotency_purge

    deleted = idempotency_purge()
    logger.info("purged %d expired idempotency records", deleted)
    return deleted

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

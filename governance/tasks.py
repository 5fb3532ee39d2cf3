from __future__ import annotations

import logging
import smtplib

from celery import shared_task
from django.conf import settings
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
    """Fold pending activity parts into rollups until none arrive meanwhile. Safe to run twice."""
    from governance.debounce import run_until_clean
    from governance.metering.services import metering_compact_step

    folded = 0

    def drain() -> None:
        # Until a step finds fewer parts than it may take: the parts that arrived during the last step wait
        # for the next round, so a step is never spent rewriting every rollup for a handful of parts.
        nonlocal folded
        while True:
            step = metering_compact_step()
            folded += step
            if step < settings.METERING_COMPACT_BATCH:
                break

    # Each step rewrites the rollups it touches (128 KiB sketches): under sustained ingestion, one step every
    # 5 s is enough, as every query also reads the parts not yet folded.
    run_until_clean("compaction", drain, min_interval=5.0, max_seconds=max_seconds)
    if folded:
        logger.info("metering compaction folded %d parts", folded)
    return folded


@shared_task(ignore_result=True)
def settle_rollups() -> int:
    """Beat (every 6 hours): store rollups of settled periods compactly (HLL_4), in bounded rounds."""
    from governance.metering.services import rollups_settle

    total = 0
    while (done := rollups_settle(limit=1000)) > 0:
        total += done
    if total:
        logger.info("re-encoded %d settled rollups as HLL_4", total)
    return total


@shared_task(ignore_result=True)
def purge_idempotency_records() -> int:
    from governance.metering.services import idempotency_purge

    deleted = idempotency_purge()
    logger.info("purged %d expired idempotency records", deleted)
    return deleted


@shared_task(ignore_result=True, acks_late=True)
def evaluate_group(group_id: int) -> None:
    """Evaluate one affiliate group (statuses, decision, forecast, alerts). Safe to run twice.

    Under sustained ingestion it re-evaluates at most every 5 seconds: new alerts go out within seconds,
    and an evaluation is not repeated back to back for every batch.
    """
    from access.models import AffiliateGroup
    from governance.compliance.services import group_evaluate
    from governance.debounce import run_until_clean

    group = AffiliateGroup.objects.filter(pk=group_id).first()
    if group is None:
        return

    def evaluate() -> None:
        result = group_evaluate(group=group)
        logger.info("evaluated group %s: %d statuses, %d alerts", group_id, len(result.statuses), len(result.alerts))

    run_until_clean(f"evaluation:{group_id}", evaluate, min_interval=5.0)


@shared_task(ignore_result=True)
def evaluate_all_groups() -> int:
    """Beat (hourly by default, editable in the admin): queue an evaluation of every group."""
    from access.models import AffiliateGroup

    ids = list(AffiliateGroup.objects.values_list("pk", flat=True))
    for group_id in ids:
        evaluate_group.delay(group_id)
    return len(ids)


@shared_task(ignore_result=True, acks_late=True, autoretry_for=(OSError, smtplib.SMTPException), retry_backoff=10,
             retry_backoff_max=600, max_retries=8)
def dispatch_alert(alert_id: int) -> None:
    """Email an alert and queue its webhook deliveries, then try each delivery at once."""
    from governance.compliance.services import alert_deliver
    from governance.models import Alert

    alert = Alert.objects.select_related("group", "licence_version").filter(pk=alert_id).first()
    if alert is None:
        return
    alert_deliver(alert=alert)
    for delivery_id in alert.deliveries.filter(status="pending").values_list("pk", flat=True):
        deliver_webhook.delay(delivery_id)


@shared_task(ignore_result=True, acks_late=True)
def deliver_webhook(delivery_id: int) -> None:
    from governance.models import WebhookDelivery
    from governance.webhooks.services import webhook_attempt

    try:
        webhook_attempt(delivery_id=delivery_id)
    except WebhookDelivery.DoesNotExist:  # deleted with its endpoint meanwhile: nothing to deliver
        logger.info("webhook delivery %s no longer exists", delivery_id)


@shared_task(ignore_result=True)
def deliver_due_webhooks() -> int:
    """Beat, every 30 s: retry every delivery whose next attempt is due (the backoff lives in the database)."""
    from governance.webhooks.services import webhook_deliver_due

    return webhook_deliver_due()


@shared_task(ignore_result=True)
def dispatch_undispatched_alerts() -> int:
    """Beat, every minute: dispatch alerts whose first dispatch never completed."""
    from governance.compliance.services import alerts_undispatched

    ids = alerts_undispatched()
    for alert_id in ids:
        dispatch_alert.delay(alert_id)
    return len(ids)

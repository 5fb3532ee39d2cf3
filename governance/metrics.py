"""Governance's state for the metrics scrape (config/observability.py): compaction, evaluations, beat and
webhook deliveries; registered in GovernanceConfig.ready."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count, Max, Min
from django.utils import timezone
from prometheus_client.core import GaugeMetricFamily

from governance.models import ActivityPart, ComplianceStatus, Heartbeat, WebhookDelivery


def state_metrics() -> Iterator[GaugeMetricFamily]:
    now = timezone.now()
    parts = ActivityPart.objects.filter(quarantined_at__isnull=True).aggregate(oldest=Min("created_at"),
                                                                               count=Count("id"))
    lag = GaugeMetricFamily("corral_metering_compaction_lag_seconds",
                            "Age of the oldest activity part not yet compacted (0 when none waits)")
    lag.add_metric([], (now - parts["oldest"]).total_seconds() if parts["oldest"] else 0.0)
    yield lag
    pending = GaugeMetricFamily("corral_metering_parts_pending", "Activity parts waiting for compaction")
    pending.add_metric([], parts["count"])
    yield pending

    ages = GaugeMetricFamily("corral_evaluation_age_seconds", "Time since each affiliate group was last "
                             "evaluated", labels=["group"])
    for row in ComplianceStatus.objects.values("group_id").annotate(last=Max("evaluated_at")).order_by():
        ages.add_metric([str(row["group_id"])], (now - row["last"]).total_seconds())
    yield ages

    beat = Heartbeat.objects.filter(component="beat").first()
    heartbeat = GaugeMetricFamily("corral_beat_heartbeat_age_seconds", "Time since Celery beat last ran its "
                                  "heartbeat task (absent before the first)")
    if beat is not None:
        heartbeat.add_metric([], (now - beat.seen_at).total_seconds())
    yield heartbeat

    deliveries = GaugeMetricFamily("corral_webhook_deliveries", "Webhook deliveries by status; `failed` "
                                   "means retries exhausted", labels=["status"])
    counts = dict(WebhookDelivery.objects.values_list("status").annotate(n=Count("id")).order_by())
    for status in WebhookDelivery.Status.values:
        deliveries.add_metric([status], counts.get(status, 0))
    yield deliveries

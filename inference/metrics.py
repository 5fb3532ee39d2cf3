"""The pool's state for the metrics scrape (config/observability.py); registered in InferenceConfig.ready."""

from __future__ import annotations

from collections.abc import Iterator

from django.db.models import Count
from prometheus_client.core import GaugeMetricFamily

from inference.models import Replica, ReplicaState


def state_metrics() -> Iterator[GaugeMetricFamily]:
    replicas = GaugeMetricFamily("corral_replicas", "Inference replicas by state", labels=["state"])
    counts = dict(Replica.objects.values_list("state").annotate(n=Count("id")).order_by())
    for state in ReplicaState.values:
        replicas.add_metric([state], counts.get(state, 0))
    yield replicas

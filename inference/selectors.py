"""Reads of the inference app: deployments and their replicas, GPU placement, quotas and token use. Each takes
the organisations it reads for (the caller's); the whole pool, which only Corral staff see, says "unscoped"."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from django.db.models import Prefetch, Q, QuerySet, Sum

from access.models import Organisation
from inference.models import Deployment, GpuAllocation, GpuQuota, Node, Replica, TokenUsage
from licensing.models import Product

Organisations = QuerySet[Organisation] | Iterable[Organisation] | Iterable[int]


def _replicas() -> Prefetch:
    return Prefetch("replica_set", queryset=Replica.objects.select_related("node").prefetch_related(
        "gpu_allocations__gpu"))


def deployment_get(*, organisations: Organisations, pk: int) -> Deployment | None:
    """Deployment ``pk`` if one of ``organisations`` owns it, with what its page shows (its replicas with their
    node and GPUs), else None."""
    return (Deployment.objects.filter(pk=pk, organisation__in=organisations)
            .select_related("organisation", "product", "base_model", "licence_version")
            .prefetch_related(_replicas()).first())


def deployment_list(*, organisations: Organisations, include_stopped: bool = False) -> QuerySet[Deployment]:
    """Deployments of these organisations with their replicas, newest first. A deleted deployment is left out
    once it has stopped, unless ``include_stopped``."""
    deployments = (Deployment.objects.filter(organisation__in=organisations)
                   .select_related("organisation", "product", "base_model").prefetch_related(_replicas()))
    if not include_stopped:
        deployments = deployments.filter(Q(deleted=False) | ~Q(state="stopped"))
    return deployments


def product_deployments(*, product: Product) -> QuerySet[Deployment]:
    """The product's deployments that are not deleted."""
    return Deployment.objects.filter(product=product, deleted=False)


def _placement(nodes: QuerySet[Node]) -> QuerySet[Node]:
    return nodes.prefetch_related(Prefetch("gpus__allocation", queryset=GpuAllocation.objects.select_related(
        "replica__deployment")))


def node_placement(*, organisations: Organisations) -> QuerySet[Node]:
    """The nodes these organisations' replicas run on, with every GPU's allocation (other tenants' included, for
    the page to show as "in use" without naming them)."""
    return _placement(Node.objects.filter(replicas__deployment__organisation__in=organisations).distinct())


def node_placement_unscoped() -> QuerySet[Node]:
    """Every active node of the pool with its GPUs' allocations: for Corral staff only."""
    return _placement(Node.objects.filter(active=True))


def gpu_quotas(*, organisations: Organisations) -> dict[int, GpuQuota]:
    """The quotas set for these organisations, by organisation id (one without a quota is missing)."""
    return {quota.organisation_id: quota for quota in GpuQuota.objects.filter(organisation__in=organisations)}


USAGE_FIELDS = ("requests", "prompt_tokens", "completion_tokens", "failed_requests")


@dataclass(frozen=True)
class UsageSummary:
    """Gateway use summed per key and per deployment (most completion tokens first) and in total."""

    by_key: QuerySet[TokenUsage, dict[str, Any]]  # rows of dicts: api_key, api_key__prefix, api_key__name, organisation__name, sums
    by_deployment: QuerySet[TokenUsage, dict[str, Any]]  # deployment, deployment__served_model_name, organisation__name, sums
    totals: dict[str, Any]


def token_usage_summary(*, organisation_ids: Iterable[int], since: dt.date) -> UsageSummary:
    """The organisations' gateway use from ``since`` (a UTC day) on."""
    rows = TokenUsage.objects.filter(organisation__in=organisation_ids, day__gte=since)
    sums = {name: Sum(name) for name in USAGE_FIELDS}
    return UsageSummary(
        by_key=(rows.values("api_key", "api_key__prefix", "api_key__name", "organisation__name").annotate(**sums)
                .order_by("-completion_tokens", "api_key")),
        by_deployment=(rows.values("deployment", "deployment__served_model_name", "organisation__name")
                       .annotate(**sums).order_by("-completion_tokens", "deployment")),
        totals=rows.aggregate(**sums),
    )

"""Reads of webhook endpoints and their deliveries. Each takes the group it reads for, or the groups the
caller sees."""

from __future__ import annotations

from django.db.models import QuerySet

from access.models import AffiliateGroup
from governance.models import WebhookDelivery, WebhookEndpoint


def webhook_endpoint_list(*, group: AffiliateGroup) -> QuerySet[WebhookEndpoint]:
    return WebhookEndpoint.objects.filter(group=group)


def webhook_endpoint_get(*, groups: QuerySet[AffiliateGroup], pk: int) -> WebhookEndpoint | None:
    """Endpoint ``pk`` with its group if it is of one of ``groups`` (those the caller sees), else None."""
    return WebhookEndpoint.objects.filter(pk=pk, group__in=groups).select_related("group").first()


def webhook_delivery_list(*, endpoint: WebhookEndpoint) -> QuerySet[WebhookDelivery]:
    """The endpoint's deliveries with their attempts, newest first."""
    return WebhookDelivery.objects.filter(endpoint=endpoint).prefetch_related("attempt_log")

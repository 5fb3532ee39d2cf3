"""Reads of the access app: API keys and the audit log. Each takes the caller's organisations or the entries
they may see; the one read of every tenant's entries says so in its name."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable

from django.db.models import QuerySet

from access.models import AffiliateGroup, ApiKey, AuditEvent, Organisation


def api_key_list(*, organisation_ids: list[int]) -> QuerySet[ApiKey]:
    """Keys of these organisations (the caller's) with their organisation and product, newest first."""
    return ApiKey.objects.filter(organisation__in=organisation_ids).select_related("organisation", "product")


def api_key_get(*, organisations: QuerySet[Organisation], pk: int) -> ApiKey | None:
    """Key ``pk`` with its organisation if one of ``organisations`` (the caller's) holds it, else None."""
    return ApiKey.objects.filter(pk=pk, organisation__in=organisations).select_related("organisation").first()


def audit_events_unscoped() -> QuerySet[AuditEvent]:
    """Every audit entry of every tenant: for Corral staff only."""
    return AuditEvent.objects.all()


def audit_event_search(*, events: QuerySet[AuditEvent], group: AffiliateGroup | None = None, action: str = "",
                       actor: str = "", since: dt.date | None = None, until: dt.date | None = None,
                       hidden_actors: Iterable[str] = ()) -> QuerySet[AuditEvent]:
    """Those of ``events`` (the entries the caller sees: ``audit_events_visible``) that match every filter given,
    newest first: of the group, whose action starts with ``action``, whose actor contains ``actor`` (any case),
    recorded from ``since`` to ``until`` (UTC days, both included)."""
    if group is not None:
        events = events.filter(group=group)
    if action:
        events = events.filter(action__startswith=action)
    if actor:
        # Searching by actor must not spell out a key prefix the page hides (``hidden_actors``), one character
        # at a time.
        events = events.filter(actor__icontains=actor).exclude(actor__in=list(hidden_actors))
    if since:
        events = events.filter(at__date__gte=since)
    if until:
        events = events.filter(at__date__lte=until)
    return events.select_related("organisation", "group").order_by("-seq")

"""Reads of the verdict's records: statuses, forecasts, alerts, declarations and proposals. Each takes the
group it reads for, or the groups the caller sees (a queryset from the tenancy rules)."""

from __future__ import annotations

from django.db.models import QuerySet

from access.models import AffiliateGroup
from governance.models import (
    Alert,
    ComplianceStatus,
    DeclarationProposal,
    DeclaredFigure,
    EvaluationRule,
    GroupForecast,
)
from licensing.models import LicenceVersion


def licence_statuses(*, group_id: int, licence_version: LicenceVersion | None) -> list[ComplianceStatus]:
    """The group's statuses for a version that say whether it may use it, in this order: the licence's own
    test, then last month's monitoring (a rule not yet evaluated is missing). None for no version."""
    if licence_version is None:
        return []
    order: list[str] = [EvaluationRule.LICENCE_ACCURATE, EvaluationRule.LAST_MONTH]
    found = ComplianceStatus.objects.filter(group_id=group_id, licence_version=licence_version, rule__in=order)
    return sorted(found, key=lambda status: order.index(status.rule))


def group_forecast(*, group: AffiliateGroup) -> GroupForecast | None:
    return GroupForecast.objects.filter(group=group).first()


def alert_list(*, groups: QuerySet[AffiliateGroup] | list[AffiliateGroup], open_only: bool = False,
               group_id: int | None = None) -> QuerySet[Alert]:
    """Alerts of these groups (those the caller sees), newest first; ``open_only``: raised and not acknowledged;
    ``group_id``: of that one of them only."""
    alerts = Alert.objects.filter(group__in=groups).select_related("group", "licence_version")
    if open_only:
        alerts = alerts.filter(kind=Alert.Kind.RAISED, acknowledged_at__isnull=True)
    if group_id is not None:
        alerts = alerts.filter(group_id=group_id)
    return alerts


def alert_list_latest(*, group: AffiliateGroup, limit: int = 5) -> list[Alert]:
    """The group's newest alerts, at most ``limit``."""
    return list(Alert.objects.filter(group=group).select_related("licence_version")[:limit])


def alert_get(*, groups: QuerySet[AffiliateGroup], pk: int) -> Alert | None:
    """Alert ``pk`` with its group if it is of one of ``groups`` (those the caller sees), else None."""
    return Alert.objects.filter(pk=pk, group__in=groups).select_related("group").first()


def declared_figure_list(*, group: AffiliateGroup) -> QuerySet[DeclaredFigure]:
    """Every figure declared for the group, latest month first, then latest declaration first."""
    return DeclaredFigure.objects.filter(group=group).order_by("-month", "-declared_at", "-id")


def declaration_proposal_list(*, group: AffiliateGroup) -> QuerySet[DeclarationProposal]:
    """Every figure proposed for the group with the proposing organisation, newest first."""
    return DeclarationProposal.objects.filter(group=group).select_related("organisation").order_by(
        "-proposed_at", "-id")


def declaration_proposal_get(*, group: AffiliateGroup, pk: int) -> DeclarationProposal | None:
    """Proposal ``pk`` if it was made for the group, else None."""
    return DeclarationProposal.objects.filter(group=group, pk=pk).first()

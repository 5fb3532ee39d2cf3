"""The compliance reads the portal's pages go through: another group's records are never returned."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from access.models import AffiliateGroup
from governance.compliance import selectors as compliance_selectors
from governance.models import Alert, ComplianceStatus, DeclarationProposal, EvaluationRule, WebhookEndpoint
from governance.webhooks import selectors as webhook_selectors
from tests.factories import GroupFactory, OrganisationFactory, licence

pytestmark = pytest.mark.django_db
JUNE = dt.date(2024, 6, 1)


@pytest.fixture
def groups() -> tuple[AffiliateGroup, AffiliateGroup]:
    return GroupFactory(name="Acme Holdings"), GroupFactory(name="Globex Holdings")


def _alert(group: AffiliateGroup, level: str, kind: str = Alert.Kind.RAISED, **fields: Any) -> Alert:
    return Alert.objects.create(group=group, licence_version=licence(), level=level, kind=kind, month=JUNE,
                                message=level, **fields)


def _status(group: AffiliateGroup, rule: str) -> ComplianceStatus:
    now = timezone.now()
    return ComplianceStatus.objects.create(group=group, licence_version=licence(), rule=rule, state="below",
                                           threshold=700_000_000, explanation=rule, since=now, evaluated_at=now)


def test_it_lists_alerts_of_the_groups_given_open_or_of_one_group(groups: tuple[AffiliateGroup, ...]) -> None:
    acme, globex = groups
    fifty = _alert(acme, "50%")
    acknowledged = _alert(acme, "75%", acknowledged_at=timezone.now())
    cleared = _alert(acme, "75%", kind=Alert.Kind.RECOVERED)
    _alert(globex, "90%")
    mine = AffiliateGroup.objects.filter(pk=acme.pk)
    assert set(compliance_selectors.alert_list(groups=mine)) == {fifty, acknowledged, cleared}
    assert list(compliance_selectors.alert_list(groups=mine, open_only=True)) == [fifty]
    assert list(compliance_selectors.alert_list(groups=mine, group_id=globex.pk)) == []
    assert compliance_selectors.alert_get(groups=mine, pk=fifty.pk) == fifty
    assert compliance_selectors.alert_get(groups=mine, pk=Alert.objects.get(group=globex).pk) is None
    assert compliance_selectors.alert_list_latest(group=acme, limit=2) == [cleared, acknowledged]


def test_it_orders_a_versions_statuses_licence_test_first_and_reads_only_the_group(
        groups: tuple[AffiliateGroup, ...]) -> None:
    acme, globex = groups
    last_month = _status(acme, EvaluationRule.LAST_MONTH)
    accurate = _status(acme, EvaluationRule.LICENCE_ACCURATE)
    _status(acme, EvaluationRule.PROJECTED)
    _status(globex, EvaluationRule.LICENCE_ACCURATE)
    assert compliance_selectors.licence_statuses(group_id=acme.pk, licence_version=licence()) == [accurate, last_month]
    assert compliance_selectors.licence_statuses(group_id=acme.pk, licence_version=licence("llama-3.3")) == []
    assert compliance_selectors.licence_statuses(group_id=acme.pk, licence_version=None) == []


def test_it_finds_a_proposal_or_endpoint_only_in_the_callers_groups(groups: tuple[AffiliateGroup, ...]) -> None:
    acme, globex = groups
    theirs = DeclarationProposal.objects.create(group=globex, organisation=OrganisationFactory(group=globex),
                                                month=JUNE, mau=5, evidence="x", proposed_by="user:al")
    assert compliance_selectors.declaration_proposal_get(group=globex, pk=theirs.pk) == theirs
    assert compliance_selectors.declaration_proposal_get(group=acme, pk=theirs.pk) is None
    assert list(compliance_selectors.declaration_proposal_list(group=acme)) == []
    hook = WebhookEndpoint.objects.create(group=globex, url="https://example.com/h", secret_salt="s",
                                          secret_prefix="p", created_by="t")
    assert webhook_selectors.webhook_endpoint_get(groups=AffiliateGroup.objects.filter(pk=acme.pk), pk=hook.pk) is None
    assert webhook_selectors.webhook_endpoint_get(groups=AffiliateGroup.objects.all(), pk=hook.pk) == hook
    assert list(webhook_selectors.webhook_endpoint_list(group=acme)) == []

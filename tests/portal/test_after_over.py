"""After "over": declarations and Meta grants entered in the portal, the product page's next step, alert
acknowledgements with a note, the overview's alert line, and the styled 403 that names the role needed."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from django.utils import timezone

from access.models import AuditEvent
from governance.models import Alert, ComplianceStatus, DeclaredFigure, EvaluationRule
from licensing.models import LicenceVersion, MetaGrant, Product
from tests.portal.conftest import Tenancy

pytestmark = pytest.mark.django_db


@pytest.fixture(autouse=True)
def _no_evaluation(monkeypatch: pytest.MonkeyPatch) -> None:
    """A declaration or grant schedules an evaluation after commit: not needed to check what was recorded."""
    monkeypatch.setattr("governance.compliance.services.evaluation_schedule", lambda **kwargs: None)


def _over(product: Product, rule: str = EvaluationRule.LICENCE_ACCURATE) -> ComplianceStatus:
    now = timezone.now()
    return ComplianceStatus.objects.create(
        group=product.organisation.group, licence_version=product.licence_version, rule=rule, state="over",
        month=dt.date(2024, 11, 1), estimate=720_000_000, lower=720_000_000, upper=720_000_000,
        threshold=700_000_000, explanation="720,000,000 declared for November 2024 is over the 700M limit.",
        since=now, evaluated_at=now)


def _last_month() -> str:
    first = timezone.now().date().replace(day=1)
    return (first - dt.timedelta(days=1)).strftime("%Y-%m")


# --- declarations ---------------------------------------------------------------------------------------------


def test_it_lets_a_group_admin_declare_a_figure_with_its_evidence(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    response = login("admin").post(f"/groups/{group.pk}/declarations/", {
        "month": _last_month(), "mau": "720000000", "lower": "710000000", "upper": "730000000",
        "evidence": "Board report Q4, table 3"}, follow=True)
    figure = DeclaredFigure.objects.get(group=group)
    assert (figure.mau, figure.lower, figure.upper, figure.declared_by) == (720_000_000, 710_000_000, 730_000_000,
                                                                            "user:admin")
    assert AuditEvent.objects.filter(action="figure.declared", actor="user:admin").exists()
    body = response.content.decode()
    assert "720,000,000" in body and "Board report Q4, table 3" in body and "user:admin" in body


def test_it_puts_the_services_refusal_of_a_declaration_next_to_its_field(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    future = (timezone.now().date().replace(day=1) + dt.timedelta(days=40)).strftime("%Y-%m")
    response = login("owner").post(f"/groups/{group.pk}/declarations/", {
        "month": future, "mau": "5", "evidence": "x"})
    assert response.status_code == 400
    assert "is in the future" in response.content.decode()
    response = login("owner").post(f"/groups/{group.pk}/declarations/", {
        "month": _last_month(), "mau": "5", "lower": "9", "evidence": "x"})
    assert response.status_code == 400 and "Must be at most" in response.content.decode()
    assert not DeclaredFigure.objects.exists()


def test_it_refuses_a_declaration_to_a_member_and_hides_the_group_from_an_outsider(tenancy: Tenancy,
                                                                                  login: Any) -> None:
    group = tenancy.organisation.group
    data = {"month": _last_month(), "mau": "1", "evidence": "x"}
    refused = login("member").post(f"/groups/{group.pk}/declarations/", data)
    assert refused.status_code == 403 and "Only a group admin" in refused.content.decode()
    page = login("viewer").get(f"/groups/{group.pk}/declarations/")
    assert page.status_code == 200 and 'name="mau"' not in page.content.decode()
    assert login("outsider").get(f"/groups/{group.pk}/declarations/").status_code == 404
    assert login("outsider").post(f"/groups/{group.pk}/declarations/", data).status_code == 404
    assert not DeclaredFigure.objects.exists()


def test_a_sibling_admin_proposes_and_a_group_admin_confirms_or_rejects(tenancy: Tenancy, login: Any) -> None:
    from access.models import Membership
    from governance.models import DeclarationProposal
    from tests.factories import MembershipFactory

    group = tenancy.organisation.group
    tenancy.users["sibling"] = MembershipFactory(organisation=tenancy.sibling, role=Membership.Role.ADMIN,
                                                 user__username="sibling").user
    sibling = login("sibling")
    page = sibling.get(f"/groups/{group.pk}/declarations/").content.decode()
    assert 'value="propose"' in page and 'value="declare"' not in page
    for month, mau in ((_last_month(), "720000000"), (_last_month(), "1")):
        assert sibling.post(f"/groups/{group.pk}/declarations/", {
            "action": "propose", "proposal-organisation": tenancy.sibling.pk, "proposal-month": month,
            "proposal-mau": mau, "proposal-evidence": "Cloud's analytics export"}).status_code == 302
    high, low = DeclarationProposal.objects.order_by("mau").reverse()
    assert not DeclaredFigure.objects.exists()  # a proposal counts only once confirmed
    # the sibling cannot decide, nor propose for an organisation it does not administer
    assert sibling.post(f"/groups/{group.pk}/declarations/", {"action": "confirm", "proposal": high.pk}
                        ).status_code == 403
    refused = sibling.post(f"/groups/{group.pk}/declarations/", {
        "action": "propose", "proposal-organisation": tenancy.organisation.pk, "proposal-month": _last_month(),
        "proposal-mau": "5", "proposal-evidence": "x"})
    assert refused.status_code == 400 and DeclarationProposal.objects.count() == 2

    admin = login("admin")
    page = admin.get(f"/groups/{group.pk}/declarations/")  # a GET binds no form: 200, no errors shown
    assert page.status_code == 200 and 'value="confirm"' in page.content.decode()
    assert sibling.get(f"/groups/{group.pk}/declarations/").status_code == 200
    admin.post(f"/groups/{group.pk}/declarations/", {"action": "confirm", "proposal": high.pk, "note": "checked"})
    admin.post(f"/groups/{group.pk}/declarations/", {"action": "reject", "proposal": low.pk, "note": "typo"})
    figure = DeclaredFigure.objects.get(group=group)
    assert figure.mau == 720_000_000 and "proposed by user:sibling" in figure.declared_by
    high.refresh_from_db(), low.refresh_from_db()
    assert (high.status, high.decision_note, low.status) == ("confirmed", "checked", "rejected")
    again = admin.post(f"/groups/{group.pk}/declarations/", {"action": "confirm", "proposal": low.pk}, follow=True)
    assert "already rejected" in again.content.decode() and DeclaredFigure.objects.count() == 1
    outsider = tenancy.outsider_org.group.pk
    assert admin.post(f"/groups/{outsider}/declarations/", {"action": "confirm", "proposal": high.pk}
                      ).status_code == 404
    assert login("outsider").post(f"/groups/{group.pk}/declarations/", {"action": "confirm", "proposal": low.pk}
                                  ).status_code == 404


# --- grants ---------------------------------------------------------------------------------------------------


def test_it_lets_staff_record_correct_and_withdraw_a_grant(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    version = LicenceVersion.objects.get(slug="llama-3.3")
    base = {"licence_versions": [version.pk], "reference": "META-2024-17", "scope": "All products",
            "granted_on": "2024-12-02", "valid_from": "2024-12-01", "valid_until": ""}
    assert login("staff").post(f"/groups/{group.pk}/grants/", base).status_code == 302
    grant = MetaGrant.objects.get(group=group)
    assert grant.recorded_by == "user:staff" and list(grant.licence_versions.all()) == [version]
    assert grant.valid_until is None and grant.granted_on == dt.date(2024, 12, 2)
    withdrawal = login("staff").post(f"/groups/{group.pk}/grants/", {**base, "supersedes": grant.pk,
                                                                     "revoked": "on"}, follow=True)
    assert MetaGrant.objects.filter(supersedes=grant, revoked=True).exists()
    assert "withdrawal" in withdrawal.content.decode()
    assert AuditEvent.objects.filter(action="grant.revoked").exists()


def test_it_names_the_grant_rule_on_the_field(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    version = LicenceVersion.objects.get(slug="llama-3.3")
    response = login("staff").post(f"/groups/{group.pk}/grants/", {
        "licence_versions": [version.pk], "reference": "R", "granted_on": "2024-12-02",
        "valid_from": "2024-12-01", "revoked": "on"})
    assert response.status_code == 400
    assert "A revocation must name the grant it withdraws" in response.content.decode()
    assert not MetaGrant.objects.exists()


def test_it_lets_only_staff_record_a_grant(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    refused = login("owner").post(f"/groups/{group.pk}/grants/", {"reference": "R"})
    assert refused.status_code == 403 and "recorded by Corral staff" in refused.content.decode()
    assert 'name="reference"' not in login("owner").get(f"/groups/{group.pk}/grants/").content.decode()
    assert login("outsider").get(f"/groups/{group.pk}/grants/").status_code == 404
    assert not MetaGrant.objects.exists()


# --- the product page after "over" ----------------------------------------------------------------------------


def test_it_shows_over_and_the_next_step_on_the_product_page(tenancy: Tenancy, login: Any, product: Product) -> None:
    body = login("member").get(f"/products/{product.pk}/").content.decode()
    assert "is over the limit" not in body
    _over(product)
    _over(product, rule=EvaluationRule.LAST_MONTH)
    body = login("member").get(f"/products/{product.pk}/").content.decode()
    assert body.count("is over the limit for") == 1
    assert "request one from Meta" in body and "November 2024" in body
    assert f"/groups/{product.organisation.group_id}/grants/" in body
    staff_body = login("staff").get(f"/products/{product.pk}/").content.decode()
    assert ">record the grant</a>" in staff_body


# --- alerts ---------------------------------------------------------------------------------------------------


def test_it_keeps_and_shows_the_note_of_an_acknowledgement(tenancy: Tenancy, login: Any, product: Product) -> None:
    group = tenancy.organisation.group
    alert = Alert.objects.create(group=group, licence_version=product.licence_version, level="over",
                                 kind=Alert.Kind.RAISED, month="2024-11-01", message="Over the limit.")
    response = login("admin").post(f"/alerts/{alert.pk}/acknowledge/",
                                   {"note": "Licence requested from Meta, ticket LEGAL-42"}, follow=True)
    alert.refresh_from_db()
    assert alert.acknowledged_by == "user:admin"
    assert alert.acknowledgement_note == "Licence requested from Meta, ticket LEGAL-42"
    event = AuditEvent.objects.get(action="alert.acknowledged")
    assert event.data["note"] == "Licence requested from Meta, ticket LEGAL-42"
    assert "ticket LEGAL-42" in response.content.decode()


def test_it_acknowledges_without_a_note_and_refuses_a_note_too_long(tenancy: Tenancy, login: Any) -> None:
    group = tenancy.organisation.group
    first = Alert.objects.create(group=group, level="50%", kind=Alert.Kind.RAISED, month="2024-11-01", message="a")
    second = Alert.objects.create(group=group, level="75%", kind=Alert.Kind.RAISED, month="2024-11-01", message="b")
    login("admin").post(f"/alerts/{first.pk}/acknowledge/")
    first.refresh_from_db()
    assert first.acknowledged_at is not None and first.acknowledgement_note == ""
    page = login("admin").post(f"/alerts/{second.pk}/acknowledge/", {"note": "x" * 2001}, follow=True)
    second.refresh_from_db()
    assert second.acknowledged_at is None and "At most 2,000 characters" in page.content.decode()


def test_it_does_not_say_no_open_alerts_beside_an_over(tenancy: Tenancy, login: Any, product: Product) -> None:
    _over(product)
    body = login("viewer").get("/").content.decode()
    assert "is over the limit" in body and "(its alert was acknowledged)" in body
    assert ">none</dd>" not in body


# --- 403 ------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("debug", [True, False])
def test_it_answers_a_refusal_with_a_page_naming_the_role(tenancy: Tenancy, login: Any, settings: Any,
                                                          product: Product, debug: bool) -> None:
    settings.DEBUG = debug
    group = tenancy.organisation.group
    response = login("member").post(f"/groups/{group.pk}/policy/", {"mode": "alert"})
    body = response.content.decode()
    assert response.status_code == 403
    assert "<h1>Not allowed</h1>" in body and "Only a group admin can change this" in body
    assert 'href="/static/portal/portal.css"' in body or "portal.css" in body
    viewer = login("viewer").post("/products/new/", {"name": "x"})
    assert viewer.status_code == 403
    assert ("Your role does not allow creating products: it needs the &#x27;write&#x27; scope, which the member role "
            "and those above it hold.") in viewer.content.decode()
    key_refused = login("viewer").post(f"/products/{product.pk}/accept/", {})
    assert key_refused.status_code == 403 and "the member role" in key_refused.content.decode()


def test_it_keeps_the_apis_403_as_json(tenancy: Tenancy) -> None:
    from django.test import Client

    from tests.factories import make_key

    key = make_key(tenancy.organisation, ["read"])
    response = Client().post("/api/v1/products/", {}, HTTP_AUTHORIZATION=f"Bearer {key}")
    assert response.status_code == 403 and response["Content-Type"].startswith("application/json")

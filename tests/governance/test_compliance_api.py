"""The compliance API: statuses, policy, declarations, alerts, webhooks, audit and evidence, per tenant."""

from __future__ import annotations

import csv
import datetime as dt
import io

import pytest
from django.core.management import call_command
from django.utils import timezone

from access.models import AuditEvent
from governance.metering.services import activity_ingest
from governance.models import Alert, DeclaredFigure, GroupPolicy, WebhookEndpoint
from licensing.services import licence_accept
from tests.factories import OrganisationFactory, ProductFactory, licence

pytestmark = pytest.mark.django_db
TODAY = timezone.now().date()


@pytest.fixture
def group_setup(owner_org):
    version = licence("llama-3.1")
    version.mau_threshold = 1000  # the threshold comes from the catalogue: small, so real counts cross it
    version.save()
    product = ProductFactory(organisation=owner_org, licence_version=version)
    licence_accept(organisation=owner_org, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="test")
    return owner_org.group, product, version


def test_it_evaluates_and_reports_statuses_decisions_and_forecast(group_setup, client_for, owner_org) -> None:
    group, product, version = group_setup
    activity_ingest(product=product, day=TODAY, user_ids=list(range(950)))
    client = client_for(owner_org, ["read", "write"])
    evaluated = client.post(f"/api/v1/groups/{group.pk}/evaluate/")
    assert evaluated.status_code == 200, evaluated.content
    body = client.get(f"/api/v1/groups/{group.pk}/compliance/").json()
    projected = next(s for s in body["statuses"] if s["rule"] == "projected")
    assert (projected["state"], projected["estimate"], projected["level"]) == ("approaching", 950, 0.9)
    accurate = next(s for s in body["statuses"] if s["rule"] == "licence_accurate")
    assert accurate["state"] == "unknown" and accurate["month"] == "2024-06-01"
    assert body["decisions"][0]["allowed"] is True
    assert body["forecast"]["method"].startswith("Theil-Sen")
    # The test month (June 2024) has no figure: besides the level, an "unknown" alert asks for a declaration.
    assert [a["level"] for a in evaluated.json()["alerts"]] == ["90%", "unknown"]
    history = client.get(f"/api/v1/groups/{group.pk}/compliance/history/").json()
    assert {c["rule"] for c in history["results"]} == {"licence_accurate", "last_month", "projected"}


def test_an_outsider_gets_404_on_every_compliance_endpoint(group_setup, client_for, outsider_org) -> None:
    group, _, _ = group_setup
    outsider = client_for(outsider_org, ["read", "write", "admin"])
    for method, path in [
        ("get", "compliance/"), ("post", "evaluate/"), ("get", "compliance/history/"), ("get", "policy/"),
        ("put", "policy/"), ("get", "declarations/"), ("post", "declarations/"), ("get", "evidence/?month=2026-01"),
    ]:
        assert getattr(outsider, method)(f"/api/v1/groups/{group.pk}/{path}", {}, format="json").status_code == 404, path


def test_a_teammate_in_an_affiliate_reads_the_group_but_needs_group_admin_for_the_policy(
        group_setup, client_for, owner_org) -> None:
    group, _, _ = group_setup
    affiliate = OrganisationFactory(group=group)
    teammate = client_for(affiliate, ["read", "write"])
    assert teammate.get(f"/api/v1/groups/{group.pk}/policy/").json()["levels"] == [0.5, 0.75, 0.9]
    refused = teammate.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json")
    assert refused.status_code == 403
    affiliate_admin = client_for(affiliate, ["read", "admin"])  # an admin, but not of the managing organisation
    refused = affiliate_admin.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json")
    assert refused.status_code == 403 and "group admin" in refused.json()["detail"]
    admin = client_for(owner_org, ["read", "admin"])  # the group's first organisation manages it
    changed = admin.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "grace", "grace_days": 14,
                                                                 "levels": [0.9, 0.6]}, format="json")
    assert changed.status_code == 200, changed.content
    policy = GroupPolicy.objects.get(group=group)
    assert (policy.mode, policy.grace_days, policy.levels) == ("grace", 14, [0.6, 0.9])
    assert AuditEvent.objects.filter(action="policy.updated").count() == 1


@pytest.mark.parametrize("payload, field", [
    ({"mode": "sometimes"}, "mode"), ({"levels": []}, "levels"), ({"levels": [1.5]}, "levels"),
    ({"levels": [0.5, 0.5]}, "levels"), ({"grace_days": -1}, "grace_days"),
    ({"email_recipients": ["not-an-email"]}, "email_recipients"), ({"hysteresis": 0.9}, "hysteresis"),
])
def test_it_refuses_a_bad_policy_naming_the_field(payload, field, group_setup, client_for, owner_org) -> None:
    group, _, _ = group_setup
    response = client_for(owner_org, ["admin"]).patch(f"/api/v1/groups/{group.pk}/policy/", payload, format="json")
    assert response.status_code == 400 and field in response.json(), response.content


def test_declared_figures_are_recorded_and_used_for_the_licence_accurate_month(group_setup, client_for,
                                                                                owner_org) -> None:
    group, _, _ = group_setup
    refused = client_for(owner_org, ["read", "write"]).post(
        f"/api/v1/groups/{group.pk}/declarations/", {"month": "2024-06", "mau": 0, "evidence": "x"}, format="json")
    assert refused.status_code == 403  # a declaration can unblock the gate: admin only
    client = client_for(owner_org, ["read", "write", "admin"])
    created = client.post(f"/api/v1/groups/{group.pk}/declarations/",
                          {"month": "2024-06", "mau": 1500, "evidence": "Board report 2024-07"}, format="json")
    assert created.status_code == 201, created.content
    assert DeclaredFigure.objects.get().month == dt.date(2024, 6, 1)
    client.post(f"/api/v1/groups/{group.pk}/evaluate/")
    accurate = next(s for s in client.get(f"/api/v1/groups/{group.pk}/compliance/").json()["statuses"]
                    if s["rule"] == "licence_accurate")
    assert (accurate["state"], accurate["source"], accurate["estimate"]) == ("over", "declared", 1500)
    decision = client.get(f"/api/v1/groups/{group.pk}/compliance/").json()["decisions"][0]
    assert (decision["allowed"], decision["reason"]) == (False, "over_threshold")
    bad = client.post(f"/api/v1/groups/{group.pk}/declarations/", {"month": "2024-13", "mau": -1}, format="json")
    assert bad.status_code == 400 and {"month", "mau", "evidence"} <= set(bad.json())


def test_alerts_are_listed_per_tenant_and_acknowledged_once(group_setup, client_for, owner_org, outsider_org) -> None:
    group, product, _ = group_setup
    activity_ingest(product=product, day=TODAY, user_ids=list(range(800)))
    client = client_for(owner_org, ["read", "write", "admin"])
    client.post(f"/api/v1/groups/{group.pk}/evaluate/")
    alerts = client.get("/api/v1/alerts/?level=75%25").json()["results"]
    assert [a["level"] for a in alerts] == ["75%"]
    writer = client_for(owner_org, ["read", "write"])  # acknowledging is a group admin's call
    assert writer.post(f"/api/v1/alerts/{alerts[0]['id']}/acknowledge/").status_code == 403
    assert client_for(outsider_org, ["read", "write"]).post(f"/api/v1/alerts/{alerts[0]['id']}/acknowledge/"
                                                            ).status_code == 404
    acked = client.post(f"/api/v1/alerts/{alerts[0]['id']}/acknowledge/").json()
    assert acked["acknowledged_by"].startswith("api-key:")
    again = client.post(f"/api/v1/alerts/{alerts[0]['id']}/acknowledge/").json()
    assert again["acknowledged_at"] == acked["acknowledged_at"]
    assert AuditEvent.objects.filter(action="alert.acknowledged").count() == 1


def test_webhook_endpoints_show_the_secret_once_and_stay_inside_the_tenant(
    group_setup, client_for, owner_org, outsider_org, settings
) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    group, _, _ = group_setup
    admin = client_for(owner_org, ["read", "admin"])
    refused = admin.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/hook"}, format="json")
    assert refused.status_code == 400 and "url" in refused.json()
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    created = admin.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/hook", "description": "ops"},
                         format="json")
    assert created.status_code == 201, created.content
    secret = created.json()["secret"]
    endpoint_id = created.json()["id"]
    assert secret.startswith(created.json()["secret_prefix"])
    for body in (admin.get("/api/v1/webhooks/").content, admin.get(f"/api/v1/webhooks/{endpoint_id}/").content):
        assert secret.encode() not in body
    assert secret not in str(WebhookEndpoint.objects.filter(pk=endpoint_id).values().get())
    outsider = client_for(outsider_org, ["read", "admin"])
    assert outsider.get(f"/api/v1/webhooks/{endpoint_id}/").status_code == 404
    assert outsider.delete(f"/api/v1/webhooks/{endpoint_id}/").status_code == 404
    assert client_for(owner_org, ["read", "write"]).post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/x"},
                                                          format="json").status_code == 403
    test_event = admin.post(f"/api/v1/webhooks/{endpoint_id}/test/")
    assert test_event.status_code == 202 and test_event.json()["event_type"] == "alert.test"
    deliveries = admin.get(f"/api/v1/webhooks/{endpoint_id}/deliveries/").json()["results"]
    assert deliveries[0]["attempts"] == 1 and deliveries[0]["attempt_log"][0]["error"]  # port 9: refused
    assert admin.delete(f"/api/v1/webhooks/{endpoint_id}/").status_code == 204


def test_the_audit_log_shows_the_callers_group_and_verifies_the_chain(group_setup, client_for, owner_org,
                                                                        outsider_org) -> None:
    group, _, _ = group_setup
    client = client_for(owner_org, ["read"])
    events = client.get("/api/v1/audit/").json()["results"]
    assert events and all(e["group"] == group.pk for e in events)
    assert all(e["group"] != group.pk for e in client_for(outsider_org, ["read"]).get("/api/v1/audit/").json()["results"])
    verified = client.get("/api/v1/audit/verify/").json()
    assert verified["ok"] is True and verified["head"]["seq"] == AuditEvent.objects.count()


def test_the_evidence_report_in_json_csv_and_html(group_setup, client_for, owner_org) -> None:
    group, product, _ = group_setup
    activity_ingest(product=product, day=TODAY, user_ids=list(range(300)))
    client = client_for(owner_org, ["read", "write"])
    client.post(f"/api/v1/groups/{group.pk}/evaluate/")
    month = TODAY.strftime("%Y-%m")
    report = client.get(f"/api/v1/groups/{group.pk}/evidence/?month={month}").json()
    assert report["mau"]["estimate"] == 300
    assert report["organisations"][0]["products"][0]["mau"]["estimate"] == 300
    assert report["audit_chain"]["verified"] is True and report["statuses"]
    rows = list(csv.reader(io.StringIO(client.get(f"/api/v1/groups/{group.pk}/evidence/?month={month}&format=csv")
                                       .content.decode())))
    assert rows[0][0] == "section" and ["mau", "group", group.name] == rows[1][:3] and rows[1][5] == "300"
    html = client.get(f"/api/v1/groups/{group.pk}/evidence/?month={month}&format=html")
    assert html["Content-Type"].startswith("text/html") and b"Evidence report" in html.content
    assert client.get(f"/api/v1/groups/{group.pk}/evidence/").status_code == 400
    assert client.get(f"/api/v1/groups/{group.pk}/evidence/?month={month}&format=pdf").status_code == 400


def test_audit_verify_command_names_a_broken_entry(group_setup, capsys) -> None:
    call_command("audit_verify")
    assert "intact" in capsys.readouterr().out
    AuditEvent.objects.filter(seq=1).update(actor="forger")
    with pytest.raises(Exception, match="#1"):
        call_command("audit_verify")


def test_alert_rows_are_unique_per_level_and_month(group_setup) -> None:
    group, _, version = group_setup
    Alert.objects.create(group=group, licence_version=version, level="90%", kind="raised", month=TODAY.replace(day=1),
                         message="m")
    with pytest.raises(Exception):
        Alert.objects.create(group=group, licence_version=version, level="90%", kind="raised",
                             month=TODAY.replace(day=1), message="m")


def test_a_viewer_in_one_group_cannot_write_there_whatever_they_hold_elsewhere(group_setup, owner_org) -> None:
    from rest_framework.test import APIClient

    from tests.factories import MembershipFactory

    group, _, _ = group_setup
    other = OrganisationFactory()
    membership = MembershipFactory(organisation=other, role="admin")
    MembershipFactory(user=membership.user, organisation=owner_org, role="viewer")
    session = APIClient()
    session.force_login(membership.user)
    assert session.get(f"/api/v1/groups/{group.pk}/policy/").status_code == 200
    assert session.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json").status_code == 403
    assert session.post(f"/api/v1/groups/{group.pk}/declarations/", {"month": "2024-06", "mau": 0, "evidence": "x"},
                        format="json").status_code == 403
    assert GroupPolicy.objects.get(group=group).mode == "enforce"


def test_a_product_bound_key_cannot_change_group_objects(group_setup, client_for, owner_org) -> None:
    group, product, _ = group_setup
    bound = client_for(owner_org, ["read", "write", "admin"], product=product)
    assert bound.get(f"/api/v1/groups/{group.pk}/policy/").status_code == 200
    assert bound.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json").status_code == 403


def test_uncertain_then_over_escalates_without_a_false_recovery(group_setup) -> None:
    from governance.compliance.services import group_evaluate

    group, product, version = group_setup
    version.mau_threshold = 100_000
    version.save()
    activity_ingest(product=product, day=TODAY, user_ids=list(range(60_000)))
    activity_ingest(product=product, day=TODAY, user_ids=list(range(60_000, 100_100)))  # straddles 100,000
    group_evaluate(group=group)
    activity_ingest(product=product, day=TODAY, user_ids=list(range(100_100, 103_000)))  # now surely over
    group_evaluate(group=group)
    alerts = list(Alert.objects.filter(group=group).exclude(level="unknown").order_by("id")
                  .values_list("kind", "level"))
    assert alerts == [("raised", "uncertain"), ("raised", "over")]


def test_severity_keeps_the_worse_reading_of_an_ambiguous_month() -> None:
    from governance.compliance import rules

    month = dt.date(2023, 6, 1)
    over = rules.classify(rules.Figure(800, 790, 810, month, "declared"), threshold=700, rule="licence_accurate")
    below = rules.classify(rules.Figure(100, 100, 100, month, "declared"), threshold=700, rule="licence_accurate")
    unknown = rules.classify(None, threshold=700, rule="licence_accurate")
    assert max([below, over, unknown], key=rules.severity) is over
    assert max([below, unknown], key=rules.severity) is unknown


def test_an_alert_whose_dispatch_failed_is_swept_up_and_sent_once(group_setup, settings, mailoutbox) -> None:
    from governance.compliance.services import alert_deliver, alerts_undispatched, group_evaluate, group_policy_get
    from governance.webhooks.services import webhook_endpoint_create

    group, product, _ = group_setup
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    policy = group_policy_get(group=group)
    policy.email_recipients = ["counsel@example.com"]
    policy.save()
    webhook_endpoint_create(group=group, url="http://127.0.0.1:9/hook", created_by="test")
    activity_ingest(product=product, day=TODAY, user_ids=list(range(600)))
    alert = group_evaluate(group=group).alerts[0]  # the broker "failed": nothing dispatched it
    Alert.objects.filter(pk=alert.pk).update(created_at=timezone.now() - dt.timedelta(minutes=5))
    assert alerts_undispatched() == [alert.pk]
    alert_deliver(alert=alert)
    alert_deliver(alert=Alert.objects.get(pk=alert.pk))  # a retried dispatch changes nothing
    assert alerts_undispatched() == []
    assert len(mailoutbox) == 1 and alert.deliveries.count() == 1


def test_a_webhook_endpoint_can_be_paused_and_renamed_but_not_moved(group_setup, client_for, owner_org, outsider_org,
                                                                     settings) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = True
    admin = client_for(owner_org, ["read", "admin"])
    endpoint_id = admin.post("/api/v1/webhooks/", {"url": "http://127.0.0.1:9/hook"}, format="json").json()["id"]
    changed = admin.patch(f"/api/v1/webhooks/{endpoint_id}/", {"active": False, "description": "paused"},
                          format="json")
    assert changed.status_code == 200 and changed.json()["active"] is False
    assert WebhookEndpoint.objects.get(pk=endpoint_id).description == "paused"
    moved = admin.patch(f"/api/v1/webhooks/{endpoint_id}/", {"url": "http://127.0.0.1:10/x"}, format="json")
    assert moved.status_code == 400 and "url" in moved.json()
    assert client_for(owner_org, ["read", "write"]).patch(f"/api/v1/webhooks/{endpoint_id}/", {"active": True},
                                                          format="json").status_code == 403
    assert client_for(outsider_org, ["read", "admin"]).patch(f"/api/v1/webhooks/{endpoint_id}/", {"active": True},
                                                             format="json").status_code == 404
    assert AuditEvent.objects.filter(action="webhook_endpoint.updated").count() == 1


def test_the_evidence_report_reads_in_the_same_number_of_queries_for_more_products(db) -> None:
    import datetime as dt

    from django.db import connection
    from django.test.utils import CaptureQueriesContext

    from governance.compliance.evidence import evidence_report
    from tests.factories import GroupFactory, OrganisationFactory, ProductFactory

    group = GroupFactory(name="Evidence Group")
    month = dt.date(2026, 10, 1)

    def grow() -> int:
        organisation = OrganisationFactory(group=group)
        for i in range(3):
            product = ProductFactory(organisation=organisation)
            activity_ingest(product=product, day=month + dt.timedelta(days=i), user_ids=[f"u{i}-{n}" for n in range(5)])
        with CaptureQueriesContext(connection) as captured:
            report = evidence_report(group=group, month=month)
        assert sum(len(o["products"]) for o in report["organisations"]) == 3 * len(report["organisations"])
        return len(captured.captured_queries)

    first = grow()
    assert grow() == first and grow() == first


@pytest.mark.parametrize("path", ["groups/{group}/policy/", "groups/{group}/declarations/", "groups/{group}/evaluate/",
                                  "groups/{group}/compliance/history/", "groups/{group}/mau/?month=2026-01",
                                  "products/{product}/activity/", "products/{product}/sketches/",
                                  "organisations/{org}/mau/?month=2026-01"])
def test_options_and_a_stray_ordering_are_answered_not_500(owner_org, product, client_for, path) -> None:
    """Found by schemathesis: detail actions without a serializer class answered OPTIONS, and ?ordering=, with 500."""
    client = client_for(owner_org, ["read", "write", "ingest", "admin"])
    url = "/api/v1/" + path.format(group=owner_org.group_id, product=product.pk, org=owner_org.pk)
    assert client.options(url).status_code == 200
    separator = "&" if "?" in url else "?"
    assert client.get(f"{url}{separator}ordering=%C3%9F%C3%A1").status_code in (200, 405)

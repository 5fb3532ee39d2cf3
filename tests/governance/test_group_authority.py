"""Who may change what a whole affiliate group is judged by, what siblings see, and a product-bound key's reach.

The requests are the ones an attacker sent with an admin key of a sibling organisation (not the group's
manager) and with a key bound to one product: each was accepted before and must now be refused, leaving
nothing changed.
"""

from __future__ import annotations

import datetime as dt
import json
from typing import Any

import pytest
from django.test import Client
from django.utils import timezone
from rest_framework.test import APIClient

from access.audit import audit_verify
from access.keys import api_key_create
from access.models import ApiKey, AuditEvent, GroupAdmin, Membership
from governance.compliance.services import declared_figure_record, group_evaluate
from governance.models import Alert, DeclaredFigure, GroupPolicy, WebhookEndpoint
from governance.webhooks.services import webhook_endpoint_create
from inference.models import Deployment
from licensing.models import BaseModel, LicenceAcceptance
from licensing.services import organisation_create, product_create
from tests.factories import MembershipFactory, licence

pytestmark = pytest.mark.django_db
WEBHOOK_URL = "https://93.184.216.34/corral/T000/B000/secret-path"  # public: no DNS in tests


@pytest.fixture
def group_of_two(settings):
    """Acme Social manages the group (it came first); Acme Cloud is its sibling. Each has an admin key."""
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    manager = organisation_create(name="Acme Social", group_name="Acme Holdings", actor="test")
    sibling = organisation_create(name="Acme Cloud", group_name="Acme Holdings", actor="test")
    version = licence("llama-3.1")
    products = {
        org.pk: product_create(organisation=org, name=f"{org.name} Chat", licence_version=version, actor="test")
        for org in (manager, sibling)
    }
    return manager, sibling, products


def key_client(organisation, scopes, **kwargs) -> APIClient:
    _, full_key = api_key_create(organisation=organisation, name="k", scopes=scopes, created_by="test", **kwargs)
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {full_key}")
    return client


ALL = ["read", "write", "ingest", "inference", "admin"]


def test_it_makes_the_first_organisation_the_manager_and_says_who_is_group_admin(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    group = manager.group
    group.refresh_from_db()
    assert group.managing_organisation_id == manager.pk
    seen_by_manager = key_client(manager, ALL).get(f"/api/v1/groups/{group.pk}/").json()
    seen_by_sibling = key_client(sibling, ALL).get(f"/api/v1/groups/{group.pk}/").json()
    assert (seen_by_manager["managing_organisation"], seen_by_manager["you_are_group_admin"]) == (manager.pk, True)
    assert (seen_by_sibling["managing_organisation"], seen_by_sibling["you_are_group_admin"]) == (manager.pk, False)


def test_it_refuses_a_sibling_admin_every_group_wide_write_and_changes_nothing(group_of_two) -> None:
    """The attack: a sibling's admin key switched the policy to monitor, declared 1 user, deleted and rotated
    the manager's webhook and acknowledged the group's alerts."""
    manager, sibling, _ = group_of_two
    group = manager.group
    endpoint, _ = webhook_endpoint_create(group=group, url=WEBHOOK_URL, created_by="test")
    alert = Alert.objects.create(group=group, licence_version=licence("llama-3.1"), level="over", kind="raised",
                                 month=timezone.now().date().replace(day=1), message="over")
    declared_figure_record(group=group, month=dt.date(2024, 6, 1), mau=800_000_000, evidence="board pack",
                           declared_by="api-key:manager")
    attacker = key_client(sibling, ALL)
    attempts = [
        attacker.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json"),
        attacker.put(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor", "levels": [0.5], "hysteresis": 0,
                                                            "grace_days": 0, "forecast_days": 1}, format="json"),
        attacker.post(f"/api/v1/groups/{group.pk}/declarations/",
                      {"month": "2024-06", "mau": 1, "evidence": "trust me"}, format="json"),
        attacker.delete(f"/api/v1/webhooks/{endpoint.pk}/"),
        attacker.post(f"/api/v1/webhooks/{endpoint.pk}/rotate-secret/"),
        attacker.patch(f"/api/v1/webhooks/{endpoint.pk}/", {"active": False}, format="json"),
        attacker.post("/api/v1/webhooks/", {"url": "https://93.184.216.35/hook"}, format="json"),
        attacker.post(f"/api/v1/alerts/{alert.pk}/acknowledge/"),
    ]
    for response in attempts:
        assert response.status_code == 403, (response.request["PATH_INFO"], response.content)
        assert "group admin" in response.json()["detail"]
    assert GroupPolicy.objects.get(group=group).mode == GroupPolicy.Mode.ENFORCE
    assert list(DeclaredFigure.objects.filter(group=group).values_list("mau", flat=True)) == [800_000_000]
    endpoint.refresh_from_db()
    assert endpoint.active and WebhookEndpoint.objects.filter(group=group).count() == 1
    alert.refresh_from_db()
    assert alert.acknowledged_at is None
    # It still reads everything the group is judged by.
    assert attacker.get(f"/api/v1/groups/{group.pk}/policy/").status_code == 200
    assert attacker.get(f"/api/v1/groups/{group.pk}/compliance/").status_code == 200
    assert attacker.get(f"/api/v1/groups/{group.pk}/declarations/").json()["count"] == 1
    webhooks = attacker.get("/api/v1/webhooks/").json()["results"]
    assert webhooks[0]["url"] == "https://93.184.216.34/…"  # the path may be a credential


def test_it_lets_the_managing_organisations_admin_change_group_wide_state(group_of_two) -> None:
    manager, _, _ = group_of_two
    group = manager.group
    admin = key_client(manager, ALL)
    assert admin.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "grace"}, format="json").status_code == 200
    declared = admin.post(f"/api/v1/groups/{group.pk}/declarations/",
                          {"month": "2024-06", "mau": 5, "evidence": "report"}, format="json")
    assert declared.status_code == 201
    created = admin.post("/api/v1/webhooks/", {"url": WEBHOOK_URL}, format="json")
    assert created.status_code == 201 and created.json()["secret"]
    assert admin.get("/api/v1/webhooks/").json()["results"][0]["url"] == WEBHOOK_URL
    # A manager's key without the admin scope is not a group admin.
    writer = key_client(manager, ["read", "write"])
    assert writer.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json").status_code == 403
    assert GroupPolicy.objects.get(group=group).mode == GroupPolicy.Mode.GRACE


def test_it_counts_a_siblings_proposal_only_once_a_group_admin_confirms_it(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    group = manager.group
    proposer = key_client(sibling, ALL)
    proposed = proposer.post("/api/v1/declaration-proposals/",
                             {"month": "2024-06", "mau": 800_000_000, "evidence": "Acme Cloud June report"},
                             format="json")
    assert proposed.status_code == 201, proposed.content
    body = proposed.json()
    assert (body["status"], body["group"], body["organisation"], body["month"]) == (
        "proposed", group.pk, sibling.pk, "2024-06")
    assert not DeclaredFigure.objects.filter(group=group).exists()
    accurate = next(s for s in group_evaluate(group=group).statuses if s.rule == "licence_accurate")
    assert accurate.state == "unknown"  # a proposal counts for nothing
    refused = proposer.post(f"/api/v1/declaration-proposals/{body['id']}/confirm/", {}, format="json")
    assert refused.status_code == 403
    confirmer = key_client(manager, ALL)
    listed = confirmer.get("/api/v1/declaration-proposals/?status=proposed").json()["results"]
    assert [p["id"] for p in listed] == [body["id"]]
    confirmed = confirmer.post(f"/api/v1/declaration-proposals/{body['id']}/confirm/", {"note": "checked"},
                               format="json")
    assert confirmed.status_code == 200, confirmed.content
    figure = DeclaredFigure.objects.get(group=group)
    assert (figure.mau, figure.month, confirmed.json()["declared_figure"]) == (800_000_000, dt.date(2024, 6, 1),
                                                                                figure.pk)
    assert "proposed by api-key:" in figure.declared_by
    accurate = next(s for s in group_evaluate(group=group).statuses if s.rule == "licence_accurate")
    assert (accurate.state, accurate.estimate) == ("over", 800_000_000)
    again = confirmer.post(f"/api/v1/declaration-proposals/{body['id']}/reject/", {}, format="json")
    assert again.status_code == 400 and "already confirmed" in again.json()["status"][0]
    assert list(AuditEvent.objects.filter(action__startswith="figure.").values_list("action", flat=True)) == [
        "figure.proposed", "figure.declared", "figure.proposal_confirmed"]


def test_it_hands_over_management_and_the_authority_moves_with_it(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    group = manager.group
    old, new = key_client(manager, ALL), key_client(sibling, ALL)
    assert new.post(f"/api/v1/groups/{group.pk}/management/", {"organisation": sibling.pk},
                    format="json").status_code == 403
    moved = old.post(f"/api/v1/groups/{group.pk}/management/", {"organisation": sibling.pk}, format="json")
    assert moved.status_code == 200 and moved.json()["managing_organisation"] == sibling.pk
    assert old.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "monitor"}, format="json").status_code == 403
    assert new.patch(f"/api/v1/groups/{group.pk}/policy/", {"mode": "grace"}, format="json").status_code == 200
    outside = organisation_create(name="Other Corp", group_name="Other Holdings", actor="test")
    bad = new.post(f"/api/v1/groups/{group.pk}/management/", {"organisation": outside.pk}, format="json")
    assert bad.status_code == 400 and "organisation" in bad.json()
    assert AuditEvent.objects.filter(action="group.management_transferred").count() == 1


def test_it_lets_a_group_admin_appoint_members_of_the_group_only(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    group = manager.group
    officer = MembershipFactory(organisation=sibling, role=Membership.Role.MEMBER).user
    stranger = MembershipFactory(role=Membership.Role.OWNER).user  # in another group
    admin = key_client(manager, ALL)
    appointed = admin.post(f"/api/v1/groups/{group.pk}/admins/", {"username": officer.username}, format="json")
    assert appointed.status_code == 201, appointed.content
    for username in (stranger.username, "nobody-at-all"):
        refused = admin.post(f"/api/v1/groups/{group.pk}/admins/", {"username": username}, format="json")
        assert refused.status_code == 400
        assert refused.json() == {"username": ["No member of this group's organisations has that username."]}
    # The appointed officer changes the policy in the portal, although only a member of the sibling.
    browser = Client()
    browser.force_login(officer)
    changed = browser.post(f"/groups/{group.pk}/policy/", {
        "mode": "monitor", "grace_days": 30, "levels": "50, 75, 90", "hysteresis": 2, "forecast_days": 90,
        "email_enabled": "on", "webhooks_enabled": "on", "email_recipients": ""})
    assert changed.status_code in (200, 302), changed.content
    assert GroupPolicy.objects.get(group=group).mode == GroupPolicy.Mode.MONITOR
    role = GroupAdmin.objects.get(group=group, user=officer)
    assert admin.delete(f"/api/v1/groups/{group.pk}/admins/{role.pk}/").status_code == 204
    browser.post(f"/groups/{group.pk}/policy/", {"mode": "enforce"})
    assert GroupPolicy.objects.get(group=group).mode == GroupPolicy.Mode.MONITOR
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="group.admin_")] == [
        "group.admin_appointed", "group.admin_removed"]


def test_it_shows_each_organisation_its_own_audit_entries_and_the_group_admins_all(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    manager_key, sibling_key = key_client(manager, ALL), key_client(sibling, ALL)
    sibling_member = MembershipFactory(organisation=sibling, role=Membership.Role.ADMIN).user
    seen_by_sibling = sibling_key.get("/api/v1/audit/?page_size=200").json()["results"]
    assert {e["organisation"] for e in seen_by_sibling} <= {sibling.pk, None}
    assert not [e for e in seen_by_sibling if e["data"].get("prefix", "").startswith(
        ApiKey.objects.filter(organisation=manager).first().prefix)]
    assert any(e["action"] == "api_key.created" and e["organisation"] == sibling.pk for e in seen_by_sibling)
    seen_by_manager = manager_key.get("/api/v1/audit/?page_size=200").json()["results"]
    assert {manager.pk, sibling.pk} <= {e["organisation"] for e in seen_by_manager}
    browser = Client()
    browser.force_login(sibling_member)
    page = browser.get("/audit/").content.decode()
    assert "Acme Cloud Chat" in page and "Acme Social Chat" not in page


def test_it_never_shows_a_sibling_another_organisations_key_prefix(group_of_two) -> None:
    """The audit found Acme Social's key prefixes in answers to Acme Cloud: in the actor of group-level audit
    entries (policy.updated, webhook_endpoint.created), in ``declared_by``, in the proposal's decision, and in
    the compliance explanation ("declared by api-key:crl_..."), in the API and in the portal. Each is shown to
    the sibling as "an API key of Acme Social"; a group admin still sees the prefix."""
    manager, sibling, _ = group_of_two
    group = manager.group
    manager_key, sibling_key = key_client(manager, ALL), key_client(sibling, ALL)
    assert manager_key.patch(f"/api/v1/groups/{group.pk}/policy/", {"grace_days": 20},
                             format="json").status_code == 200
    assert manager_key.post("/api/v1/webhooks/", {"url": WEBHOOK_URL}, format="json").status_code == 201
    assert manager_key.post(f"/api/v1/groups/{group.pk}/declarations/",
                            {"month": "2024-06", "mau": 800_000_000, "evidence": "board pack"},
                            format="json").status_code == 201
    proposal = sibling_key.post("/api/v1/declaration-proposals/",
                                {"month": "2024-07", "mau": 5, "evidence": "report"}, format="json").json()
    assert manager_key.post(f"/api/v1/declaration-proposals/{proposal['id']}/reject/", {"note": "no"},
                            format="json").status_code == 200
    assert manager_key.post(f"/api/v1/groups/{group.pk}/evaluate/").status_code == 200
    manager_prefixes = list(ApiKey.objects.filter(organisation=manager).values_list("prefix", flat=True))
    sibling_prefixes = list(ApiKey.objects.filter(organisation=sibling).values_list("prefix", flat=True))
    assert AuditEvent.objects.filter(actor__in=[f"api-key:{p}" for p in manager_prefixes],
                                     organisation__isnull=True).exists()  # recorded as it was: the chain holds
    api_paths = ["/api/v1/audit/?page_size=200", f"/api/v1/groups/{group.pk}/compliance/",
                 f"/api/v1/groups/{group.pk}/declarations/", "/api/v1/declaration-proposals/", "/api/v1/webhooks/",
                 f"/api/v1/groups/{group.pk}/evidence/?month=2024-06",
                 f"/api/v1/groups/{group.pk}/evidence/?month=2024-06&format=html"]
    sibling_member = MembershipFactory(organisation=sibling, role=Membership.Role.ADMIN).user
    manager_member = MembershipFactory(organisation=manager, role=Membership.Role.ADMIN).user
    portal_paths = ["/audit/", f"/groups/{group.pk}/", f"/groups/{group.pk}/declarations/", "/",
                    f"/groups/{group.pk}/webhooks/", f"/groups/{group.pk}/evidence/?month=2024-06"]

    def bodies(client: Any, paths: list[str]) -> dict[str, str]:
        answers = {path: client.get(path) for path in paths}
        assert {path: a.status_code for path, a in answers.items()} == dict.fromkeys(paths, 200)
        return {path: a.content.decode() for path, a in answers.items()}

    sibling_browser, manager_browser = Client(), Client()
    sibling_browser.force_login(sibling_member)
    manager_browser.force_login(manager_member)
    seen_by_sibling = {**bodies(sibling_key, api_paths), **bodies(sibling_browser, portal_paths)}
    for path, body in seen_by_sibling.items():
        assert not [p for p in manager_prefixes if p in body], path
    assert "an API key of Acme Social" in seen_by_sibling["/api/v1/audit/?page_size=200"]
    assert "declared by an API key of Acme Social" in seen_by_sibling[f"/api/v1/groups/{group.pk}/compliance/"]
    assert "an API key of Acme Social" in seen_by_sibling[f"/groups/{group.pk}/declarations/"]
    assert "an API key of Acme Social" in seen_by_sibling["/audit/"]
    assert any(p in seen_by_sibling["/api/v1/audit/?page_size=200"] for p in sibling_prefixes)  # its own keys
    # Nor can the sibling spell a prefix out through the portal's search by actor.
    for prefix in manager_prefixes:
        searched = sibling_browser.get(f"/audit/?actor=api-key:{prefix[:6]}").content.decode()
        assert "No entries match." in searched, prefix
    assert "No entries match." not in manager_browser.get(f"/audit/?actor=api-key:{manager_prefixes[0][:6]}"
                                                          ).content.decode()
    # The group's admins (the managing organisation's) see every prefix, in the API and in the portal.
    seen_by_admin = {**bodies(manager_key, api_paths), **bodies(manager_browser, portal_paths)}
    for path in ("/api/v1/audit/?page_size=200", f"/api/v1/groups/{group.pk}/compliance/",
                 f"/api/v1/groups/{group.pk}/declarations/", "/audit/", f"/groups/{group.pk}/declarations/"):
        assert any(p in seen_by_admin[path] for p in manager_prefixes), path
        assert "an API key of" not in seen_by_admin[path], path
    # An entry whose key is hidden keeps its hashes from the sibling: with every other hashed field shown, the
    # hash would let it try the 2^32 prefixes offline until one matched. Its own entries keep theirs.
    def entries(client: Any) -> dict[int, dict[str, Any]]:
        return {e["seq"]: e for e in client.get("/api/v1/audit/?page_size=200").json()["results"]}

    mine, theirs = entries(sibling_key), entries(manager_key)
    masked = [e for e in mine.values() if "an API key of Acme Social" in e["actor"]]
    assert masked and all(e["hash"] is None and e["prev_hash"] is None for e in masked)
    assert all(theirs[e["seq"]]["hash"] for e in masked)  # the group admin sees them
    assert all(e["hash"] for e in mine.values() if "an API key of" not in json.dumps(e))
    assert not any(theirs[e["seq"]]["hash"][:19] in seen_by_sibling["/audit/"] for e in masked)
    assert audit_verify().ok


def test_it_keeps_a_product_bound_key_to_its_product(group_of_two) -> None:
    """The attack: a key bound to one product created a deployment and an acceptance for another product of
    its organisation, listed every key, revoked an unbound key and created a webhook."""
    manager, _, products = group_of_two
    mine = products[manager.pk]
    other = product_create(organisation=manager, name="Acme Social Search", licence_version=licence("llama-3.1"),
                           actor="test")
    unbound, _ = api_key_create(organisation=manager, name="unbound", scopes=["read"], created_by="test")
    bound = key_client(manager, ALL, product=mine)
    version = licence("llama-3.1")
    base = BaseModel.objects.filter(licence_version=version).first()
    deployment = bound.post("/api/v1/deployments/", {
        "product": other.pk, "base_model": base.repo_id, "served_model_name": "takeover", "device": "cpu"},
        format="json")
    assert deployment.status_code == 400 and "product" in deployment.json()
    acceptance = {"licence_version": version.slug, "licence_sha256": version.licence_sha256,
                  "aup_version": version.aup_version, "aup_sha256": version.aup_sha256}
    for body in ({**acceptance, "product": other.pk}, acceptance):
        refused = bound.post("/api/v1/acceptances/", body, format="json")
        assert refused.status_code == 400 and "product" in refused.json(), refused.content
    assert not Deployment.objects.exists() and not LicenceAcceptance.objects.exists()
    listed = bound.get("/api/v1/keys/").json()["results"]
    assert {k["product"] for k in listed} == {mine.pk}
    assert bound.post(f"/api/v1/keys/{unbound.pk}/revoke/").status_code in (403, 404)
    assert bound.post("/api/v1/keys/", {"name": "child", "scopes": ["read"]}, format="json").status_code == 403
    created = bound.post("/api/v1/webhooks/", {"url": WEBHOOK_URL}, format="json")
    assert created.status_code == 403 and "bound to one product" in created.json()["detail"]
    unbound.refresh_from_db()
    assert unbound.revoked_at is None and not WebhookEndpoint.objects.exists()
    assert ApiKey.objects.filter(organisation=manager).count() == 2  # the bound key and the unbound one
    # What it may do: act on its own product.
    own = bound.post("/api/v1/acceptances/", {**acceptance, "product": mine.pk}, format="json")
    assert own.status_code == 201, own.content
    assert [p["id"] for p in bound.get("/api/v1/products/").json()["results"]] == [mine.pk]
    assert bound.get(f"/api/v1/products/{other.pk}/").status_code == 404


def test_the_portal_tells_a_sibling_admin_who_administers_the_group(group_of_two) -> None:
    manager, sibling, _ = group_of_two
    group = manager.group
    sibling_admin = MembershipFactory(organisation=sibling, role=Membership.Role.OWNER).user
    manager_admin = MembershipFactory(organisation=manager, role=Membership.Role.ADMIN).user
    browser = Client()
    browser.force_login(sibling_admin)
    page = browser.get(f"/groups/{group.pk}/").content.decode()
    assert "Who administers the group" in page and "Acme Social" in page
    assert "Appoint group admin" not in page
    assert browser.post(f"/groups/{group.pk}/policy/", {"mode": "monitor"}).status_code == 403
    assert browser.post(f"/groups/{group.pk}/admins/", {"username": sibling_admin.username}).status_code == 403
    browser.force_login(manager_admin)
    assert "Appoint group admin" in browser.get(f"/groups/{group.pk}/").content.decode()
    browser.post(f"/groups/{group.pk}/admins/", {"username": sibling_admin.username})
    assert GroupAdmin.objects.filter(group=group, user=sibling_admin).exists()

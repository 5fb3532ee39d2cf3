"""Who may do what in the portal: every POST view for every role, and the pages' answers to outsiders.

The owner, admin, member and viewer belong to Acme Social; the outsider owns Globex, in another group; staff
belong to no organisation. An outsider gets 404 for anything of Acme's, a role short of the action a 403, and
nothing changes in either case.
"""

from __future__ import annotations

import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pytest
from django.test import Client

from access.keys import api_key_create
from access.models import ApiKey, AuditEvent, Organisation
from governance.models import Alert, GroupPolicy, WebhookDelivery, WebhookEndpoint
from governance.webhooks import services as webhook_services
from inference.models import Deployment, GpuQuota
from licensing.models import BaseModel, Exemption, LicenceAcceptance, LicenceVersion, Product
from licensing.services import exemption_record, licence_accept
from tests.factories import ProductFactory
from tests.portal.conftest import Tenancy

pytestmark = pytest.mark.django_db


def _public_resolver(host: str, port: int, *args: Any, **kwargs: Any) -> list[tuple[Any, ...]]:
    return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", ("93.184.216.34", port))]


@pytest.fixture(autouse=True)
def _no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Webhook URLs resolve to a public address and every POST to a receiver answers 204; no reconciler runs."""
    monkeypatch.setattr(webhook_services, "resolver", _public_resolver)
    monkeypatch.setattr(webhook_services, "_post", lambda endpoint, event, event_type: (204, ""))
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)


@dataclass
class Objects:
    tenancy: Tenancy
    product: Product
    alert: Alert
    endpoint: WebhookEndpoint
    deployment: Deployment
    member_key: ApiKey
    admin_key: ApiKey


@pytest.fixture
def objects(tenancy: Tenancy, product: Product) -> Objects:
    org = tenancy.organisation
    version = product.licence_version
    licence_accept(organisation=org, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="setup")
    alert = Alert.objects.create(group=org.group, licence_version=version, level="50%", kind=Alert.Kind.RAISED,
                                 month="2026-01-01", message="Acme Holdings: at or above 50%.")
    endpoint, _ = webhook_services.webhook_endpoint_create(group=org.group, url="https://hooks.example.com/acme",
                                                           created_by="setup")
    GpuQuota.objects.create(organisation=org, max_gpus=8)
    deployment = Deployment.objects.create(
        organisation=org, product=product, licence_version=version,
        base_model=BaseModel.objects.filter(licence_version=version).first(), model_source="meta-llama/x",
        served_model_name="acme-chat", replicas=1, created_by="setup")
    member_key, _ = api_key_create(organisation=org, name="ingest", scopes=["read", "ingest"], created_by="setup")
    admin_key, _ = api_key_create(organisation=org, name="admin", scopes=["admin"], created_by="setup")
    return Objects(tenancy, product, alert, endpoint, deployment, member_key, admin_key)


@dataclass(frozen=True)
class Case:
    name: str
    url: Callable[[Objects], str]
    data: Callable[[Objects], dict[str, Any]]
    allowed: tuple[str, ...]
    changed: Callable[[Objects], bool]
    success: int = 302


def _version(slug: str = "llama-3.1") -> LicenceVersion:
    return LicenceVersion.objects.get(slug=slug)


WRITERS = ("owner", "admin", "member", "staff")
ADMINS = ("owner", "admin", "staff")

CASES = [
    # Evaluating a group without activity records its first statuses ("unknown"), in the audit log.
    Case("evaluate the group", lambda o: f"/groups/{o.tenancy.organisation.group_id}/evaluate/", lambda o: {},
         WRITERS, lambda o: AuditEvent.objects.filter(action="status.changed").exists()),
    Case("create a product", lambda o: "/products/new/",
         lambda o: {"organisation": o.tenancy.organisation.pk, "name": "Acme Notes",
                    "licence_version": _version().pk, "status": "development"},
         WRITERS, lambda o: Product.objects.filter(name="Acme Notes").exists()),
    Case("edit a product", lambda o: f"/products/{o.product.pk}/edit/",
         lambda o: {"name": "Acme Chat 2", "licence_version": _version().pk, "status": "live"},
         WRITERS, lambda o: Product.objects.filter(name="Acme Chat 2").exists()),
    Case("accept a licence", lambda o: f"/products/{o.product.pk}/accept/",
         lambda o: {"licence_sha256": _version().licence_sha256, "aup_version": _version().aup_version,
                    "confirm": "on"},
         WRITERS, lambda o: LicenceAcceptance.objects.filter(product=o.product).exists()),
    Case("acknowledge an alert", lambda o: f"/alerts/{o.alert.pk}/acknowledge/", lambda o: {},
         ADMINS, lambda o: Alert.objects.filter(pk=o.alert.pk, acknowledged_at__isnull=False).exists()),
    Case("edit the alert policy", lambda o: f"/groups/{o.tenancy.organisation.group_id}/policy/",
         lambda o: {"mode": "monitor", "grace_days": 10, "levels": "60, 80", "hysteresis": 2, "forecast_days": 30,
                    "email_recipients": "", "webhooks_enabled": "on"},
         ADMINS, lambda o: GroupPolicy.objects.filter(group=o.tenancy.organisation.group, mode="monitor").exists()),
    Case("add a webhook", lambda o: f"/groups/{o.tenancy.organisation.group_id}/webhooks/",
         lambda o: {"url": "https://hooks.example.com/new", "description": "ops"},
         ADMINS, lambda o: WebhookEndpoint.objects.filter(url="https://hooks.example.com/new").exists(), 200),
    Case("send a test event", lambda o: f"/webhooks/{o.endpoint.pk}/test/", lambda o: {},
         ADMINS, lambda o: WebhookDelivery.objects.filter(endpoint=o.endpoint, event_type="alert.test",
                                                          status="delivered").exists()),
    Case("pause a webhook", lambda o: f"/webhooks/{o.endpoint.pk}/toggle/", lambda o: {},
         ADMINS, lambda o: WebhookEndpoint.objects.filter(pk=o.endpoint.pk, active=False).exists()),
    Case("delete a webhook", lambda o: f"/webhooks/{o.endpoint.pk}/delete/", lambda o: {},
         ADMINS, lambda o: not WebhookEndpoint.objects.filter(pk=o.endpoint.pk).exists()),
    Case("request a deployment", lambda o: "/deployments/new/",
         lambda o: {"organisation": o.tenancy.organisation.pk, "product": o.product.pk,
                    "base_model": BaseModel.objects.filter(licence_version=_version()).first().pk,
                    "served_model_name": "acme-notes", "device": "gpu", "replicas": 1, "tensor_parallel_size": 1,
                    "max_model_len": 4096, "dtype": "auto", "quantization": ""},
         WRITERS, lambda o: Deployment.objects.filter(served_model_name="acme-notes").exists()),
    Case("scale a deployment", lambda o: f"/deployments/{o.deployment.pk}/scale/", lambda o: {"replicas": 2},
         WRITERS, lambda o: Deployment.objects.filter(pk=o.deployment.pk, replicas=2).exists()),
    Case("delete a deployment", lambda o: f"/deployments/{o.deployment.pk}/delete/", lambda o: {},
         WRITERS, lambda o: Deployment.objects.filter(pk=o.deployment.pk, deleted=True).exists()),
    Case("create a key", lambda o: "/keys/",
         lambda o: {"organisation": o.tenancy.organisation.pk, "name": "new key", "scopes": ["read", "ingest"]},
         WRITERS, lambda o: ApiKey.objects.filter(name="new key").exists(), 200),
    Case("revoke a key", lambda o: f"/keys/{o.member_key.pk}/revoke/", lambda o: {},
         WRITERS, lambda o: ApiKey.objects.filter(pk=o.member_key.pk, revoked_at__isnull=False).exists()),
    Case("record the EU domicile", lambda o: f"/organisations/{o.tenancy.organisation.pk}/domicile/",
         lambda o: {"eu_domiciled": "on"},
         ADMINS, lambda o: Organisation.objects.filter(pk=o.tenancy.organisation.pk, eu_domiciled=True).exists()),
]


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.name)
@pytest.mark.parametrize("who", ["owner", "admin", "member", "viewer", "outsider", "staff"])
def test_it_lets_only_the_right_roles_change_things(case: Case, who: str, objects: Objects, login: Any) -> None:
    client = login(who)
    response = client.post(case.url(objects), case.data(objects))
    if who in case.allowed:
        assert response.status_code == case.success, response.content[:2000]
        assert case.changed(objects), f"{who} could not {case.name}"
    else:
        # Outsiders never learn the object exists: 404, or for creation forms a refused choice (400).
        expected = {404, 400} if who == "outsider" else {403}
        assert response.status_code in expected, (who, response.status_code)
        assert not case.changed(objects), f"{who} could {case.name}"


def test_it_refuses_every_change_without_a_csrf_token(objects: Objects, tenancy: Tenancy) -> None:
    client = Client(enforce_csrf_checks=True)
    client.force_login(tenancy.users["owner"])
    for case in CASES:
        assert client.post(case.url(objects), case.data(objects)).status_code == 403, case.name
    assert not Product.objects.filter(name="Acme Notes").exists()


def test_it_refuses_a_get_on_every_action_that_changes_state(objects: Objects, login: Any) -> None:
    client = login("owner")
    for url in [f"/products/{objects.product.pk}/accept/", f"/alerts/{objects.alert.pk}/acknowledge/",
                f"/webhooks/{objects.endpoint.pk}/test/", f"/webhooks/{objects.endpoint.pk}/delete/",
                f"/groups/{objects.tenancy.organisation.group_id}/evaluate/", "/logout/",
                f"/organisations/{objects.tenancy.organisation.pk}/domicile/",
                f"/organisations/{objects.tenancy.organisation.pk}/exemption/",
                f"/organisations/{objects.tenancy.organisation.pk}/exemption/withdraw/"]:
        assert client.get(url).status_code == 405, url
    assert WebhookEndpoint.objects.filter(pk=objects.endpoint.pk).exists()


def test_it_does_not_let_a_member_mint_or_revoke_a_stronger_key(objects: Objects, login: Any) -> None:
    client = login("member")
    response = client.post("/keys/", {"organisation": objects.tenancy.organisation.pk, "name": "escalate",
                                      "scopes": ["read", "admin"]})
    assert response.status_code == 400
    assert "admin is not one of the available choices" in response.content.decode()
    assert not ApiKey.objects.filter(name="escalate").exists()
    assert client.post(f"/keys/{objects.admin_key.pk}/revoke/").status_code == 403
    assert ApiKey.objects.get(pk=objects.admin_key.pk).revoked_at is None
    assert login("admin").post(f"/keys/{objects.admin_key.pk}/revoke/").status_code == 302


def test_it_shows_a_new_key_once_and_keeps_only_its_hash(objects: Objects, login: Any, caplog: Any) -> None:
    client = login("member")
    response = client.post("/keys/", {"organisation": objects.tenancy.organisation.pk, "name": "once",
                                      "scopes": ["ingest"]})
    body = response.content.decode()
    key = ApiKey.objects.get(name="once")
    secret = body.split('id="new-key">')[1].split("<")[0]
    assert secret.startswith(key.prefix + ".")
    assert "no-store" in response["Cache-Control"]
    assert secret not in client.get("/keys/").content.decode()
    assert secret not in caplog.text
    assert key.key_hash != secret and secret not in str(AuditEvent.objects.values_list("data", flat=True))


def test_it_puts_service_refusals_next_to_the_field(objects: Objects, login: Any) -> None:
    client = login("owner")
    other_version = _version("llama-2")
    wrong_base = BaseModel.objects.filter(licence_version=_version("llama-3.3")).first()
    response = client.post("/products/new/", {"organisation": objects.tenancy.organisation.pk, "name": "Acme Chat",
                                              "licence_version": other_version.pk, "base_model": wrong_base.pk,
                                              "status": "live"})
    assert response.status_code == 400
    errors = response.context["form"].errors
    assert "is released under Llama 3.3" in errors["base_model"][0]
    response = client.post("/products/new/", {"organisation": objects.tenancy.organisation.pk, "name": "Acme Chat",
                                              "licence_version": _version().pk, "status": "live"})
    assert "already has a product named 'Acme Chat'" in response.context["form"].errors["name"][0]
    response = client.post(f"/groups/{objects.tenancy.organisation.group_id}/policy/", {
        "mode": "enforce", "grace_days": 1, "levels": "50, 50", "hysteresis": 2, "forecast_days": 30})
    assert response.context["form"].errors["levels"] == ["Levels must be distinct."]
    response = client.post(f"/groups/{objects.tenancy.organisation.group_id}/webhooks/",
                           {"url": "https://127.0.0.1/hook"})
    assert response.status_code == 400 and response.context["form"].errors["url"]
    response = client.post(f"/deployments/{objects.deployment.pk}/scale/", {"replicas": 99})
    assert response.status_code == 400 and response.context["form"].errors["replicas"]
    response = client.post("/deployments/new/", {
        "organisation": objects.tenancy.organisation.pk, "product": objects.product.pk,
        "base_model": BaseModel.objects.filter(licence_version=_version()).first().pk,
        "served_model_name": "acme-chat", "device": "gpu", "replicas": 1, "tensor_parallel_size": 1,
        "max_model_len": 4096, "dtype": "auto"})
    assert "already deployed" in response.context["form"].errors["served_model_name"][0]


OUTSIDER_PAGES = [
    lambda o: f"/groups/{o.tenancy.organisation.group_id}/",
    lambda o: f"/groups/{o.tenancy.organisation.group_id}/policy/",
    lambda o: f"/groups/{o.tenancy.organisation.group_id}/webhooks/",
    lambda o: f"/groups/{o.tenancy.organisation.group_id}/evidence/?month=2026-01",
    lambda o: f"/products/{o.product.pk}/",
    lambda o: f"/products/{o.product.pk}/edit/",
    lambda o: f"/products/{o.product.pk}/notice/",
    lambda o: f"/webhooks/{o.endpoint.pk}/",
    lambda o: f"/deployments/{o.deployment.pk}/",
    lambda o: f"/organisations/{o.tenancy.organisation.pk}/",
]


def test_it_answers_404_to_an_outsider_for_every_page_of_another_group(objects: Objects, login: Any) -> None:
    outsider, owner = login("outsider"), login("owner")
    for page in OUTSIDER_PAGES:
        url = page(objects)
        assert owner.get(url).status_code == 200, url
        assert outsider.get(url).status_code == 404, url
    for listing in ["/", "/products/", "/alerts/", "/deployments/", "/keys/", "/audit/"]:
        body = outsider.get(listing).content.decode()
        assert "Acme" not in body, listing


def test_it_shows_staff_every_group_and_members_their_own(objects: Objects, login: Any) -> None:
    staff = login("staff").get("/").content.decode()
    assert "Acme Holdings" in staff and "Globex Holdings" in staff
    viewer = login("viewer").get("/").content.decode()
    assert "Acme Holdings" in viewer and "Globex Holdings" not in viewer


def test_it_sends_signed_out_visitors_to_the_login_page(objects: Objects) -> None:
    for url in ["/", "/products/", f"/products/{objects.product.pk}/", "/keys/", "/audit/"]:
        response = Client().get(url)
        assert response.status_code == 302 and response["Location"].startswith("/login/?next="), url


def test_it_logs_in_and_out_with_django_auth(tenancy: Tenancy) -> None:
    client = Client()
    response = client.post("/login/", {"username": "viewer", "password": "wrong"})
    assert response.status_code == 200 and "Please enter a correct username and password" in response.content.decode()
    response = client.post("/login/", {"username": "viewer", "password": "correct horse battery staple"})
    assert response.status_code == 302 and response["Location"] == "/"
    assert client.get("/").status_code == 200
    assert client.post("/logout/").status_code == 302
    assert client.get("/").status_code == 302


def test_it_leaves_the_other_surfaces_where_they_were(client: Client) -> None:
    assert client.get("/healthz").status_code in (200, 503)
    assert client.get("/admin/").status_code == 302
    assert client.get("/api/v1/products/").status_code in (401, 403)


# --- products not built on Llama, the organisation page -------------------------------------------------------


def test_it_shows_both_kinds_of_product_and_says_plainly_one_has_no_obligations(tenancy: Tenancy, login: Any,
                                                                               product: Product) -> None:
    """Section 2 counts "the products or services made available by or for Licensee": a service not built on
    Llama is listed with the others, metered, and its page says it has no licence obligations."""
    search = ProductFactory(organisation=tenancy.organisation, name="Acme Search", licence_version=None,
                            status=Product.Status.LIVE)
    owner = login("owner")

    listing = owner.get("/products/").content.decode()
    page = owner.get(f"/products/{search.pk}/")
    notice = owner.get(f"/products/{search.pk}/notice/")
    accepted = owner.post(f"/products/{search.pk}/accept/", {"licence_sha256": "0" * 64, "aup_version": "x",
                                                             "confirm": "on"})
    deployment_form = owner.get("/deployments/new/").content.decode()

    assert "Acme Chat" in listing and "Acme Search" in listing and "Not built on Llama" in listing
    body = page.content.decode()
    assert page.status_code == 200 and "No licence obligations" in body
    assert "Not built on Llama: no Llama licence obligations" in body and "download the Notice file" not in body
    assert notice.status_code == 404
    assert accepted.status_code == 400 and "it has no licence to accept" in accepted.content.decode()
    assert not LicenceAcceptance.objects.exists()
    assert "Acme Chat" in deployment_form and "Acme Search" not in deployment_form  # only Llama products deploy


def test_it_creates_and_edits_a_product_not_built_on_llama(tenancy: Tenancy, login: Any) -> None:
    owner = login("owner")

    form = owner.get("/products/new/").content.decode()
    created = owner.post("/products/new/", {"organisation": tenancy.organisation.pk, "name": "Acme Search",
                                            "licence_version": "", "status": "live"})
    search = Product.objects.get(name="Acme Search")
    edited = owner.post(f"/products/{search.pk}/edit/", {"name": "Acme Search", "licence_version": "",
                                                         "status": "live", "description": "Web search"})
    refused = owner.post("/products/new/", {"organisation": tenancy.organisation.pk, "name": "Acme Vision",
                                            "licence_version": "",
                                            "base_model": BaseModel.objects.get(
                                                repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct").pk,
                                            "status": "live"})

    assert "Not built on Llama" in form
    assert created.status_code == 302 and search.licence_version is None
    assert edited.status_code == 302 and Product.objects.get(pk=search.pk).description == "Web search"
    assert refused.status_code == 400 and "llama-3.2" in refused.context["form"].errors["licence_version"][0]
    assert not Product.objects.filter(name="Acme Vision").exists()


def test_it_refuses_an_eu_company_a_multimodal_product_next_to_the_field(tenancy: Tenancy, login: Any) -> None:
    """Llama 3.2 AUP: the rights to "any multimodal models included in Llama 3.2 ... are not being granted to you
    if you are ... a company with a principal place of business in, the European Union"."""
    Organisation.objects.filter(pk=tenancy.organisation.pk).update(eu_domiciled=True)

    response = login("owner").post("/products/new/", {
        "organisation": tenancy.organisation.pk, "name": "Acme Vision", "licence_version": _version("llama-3.2").pk,
        "base_model": BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct").pk,
        "status": "development"})

    assert response.status_code == 400
    assert "multimodal models included in Llama 3.2" in response.context["form"].errors["base_model"][0]
    assert not Product.objects.exists()


@pytest.mark.parametrize("who", ["owner", "admin", "member", "viewer", "outsider", "staff"])
def test_it_lets_only_admins_record_and_withdraw_an_exemption(who: str, tenancy: Tenancy, login: Any) -> None:
    """Clause 1.b.ii: "If you receive Llama Materials ... from a Licensee as part of an integrated end user product,
    then Section 2 of this Agreement will not apply to you." Recorded and withdrawn by the organisation's admins."""
    organisation = tenancy.organisation
    client = login(who)

    page = client.get(f"/organisations/{organisation.pk}/")
    recorded = client.post(f"/organisations/{organisation.pk}/exemption/",
                           {"supplier": "Globex", "evidence": "Appliance agreement 17"})

    if who in ADMINS:
        assert page.status_code == 200 and "Record the exemption" in page.content.decode()
        assert recorded.status_code == 302
        assert "exempt (1.b.ii)" in client.get(f"/organisations/{organisation.pk}/").content.decode()
        assert client.post(f"/organisations/{organisation.pk}/exemption/withdraw/").status_code == 302
        assert Exemption.objects.get().withdrawn_by == f"user:{who}"
        return
    expected = 404 if who == "outsider" else 403
    assert page.status_code == (404 if who == "outsider" else 200)
    assert recorded.status_code == expected and not Exemption.objects.exists()
    exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17", recorded_by="setup")
    assert client.post(f"/organisations/{organisation.pk}/exemption/withdraw/").status_code == expected
    assert Exemption.objects.get().in_force


def test_it_puts_an_exemption_without_evidence_back_next_to_the_field(objects: Objects, login: Any) -> None:
    owner = login("owner")
    url = f"/organisations/{objects.tenancy.organisation.pk}/exemption/"

    missing = owner.post(url, {"supplier": "Globex", "evidence": " "})
    deployed = owner.post(url, {"supplier": "Globex", "evidence": "Agreement 17"})

    assert missing.status_code == 400 and missing.context["exemption_form"].errors["evidence"]
    assert deployed.status_code == 400
    assert "runs Llama models on the pool (acme-chat)" in deployed.context["exemption_form"].non_field_errors()[0]
    assert not Exemption.objects.exists()


def test_the_overview_and_group_pages_take_a_product_not_built_on_llama(tenancy: Tenancy, login: Any,
                                                                       product: Product) -> None:
    ProductFactory(organisation=tenancy.organisation, name="Acme Search", licence_version=None,
                   status=Product.Status.LIVE)
    owner = login("owner")

    overview = owner.get("/")
    group = owner.get(f"/groups/{tenancy.organisation.group_id}/")

    assert overview.status_code == 200 and group.status_code == 200
    assert [row.version.slug for row in group.context["figures"].versions] == ["llama-3.1"]
    assert "Acme Search" in group.content.decode()

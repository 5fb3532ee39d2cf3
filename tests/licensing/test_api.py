"""The licensing REST API, with an owner, a teammate and an outsider for every module."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone
from rest_framework.test import APIClient

from access.models import ApiKey, AuditEvent
from licensing.models import Exemption, LicenceAcceptance, LicenceVersion, MetaGrant, Product
from tests.factories import GroupFactory, MembershipFactory, OrganisationFactory, ProductFactory, UserFactory, licence

pytestmark = pytest.mark.django_db


# --- authentication ---------------------------------------------------------------------------------------


def test_it_refuses_requests_without_a_key() -> None:
    response = APIClient().get("/api/v1/products/")
    assert response.status_code == 401
    assert response["WWW-Authenticate"].startswith("Bearer")


def test_it_refuses_a_malformed_or_unknown_key(owner_org) -> None:
    for header in ["Bearer nonsense", "Bearer crl_00000000.secret", "Bearer a b", "Bearer"]:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=header)
        assert client.get("/api/v1/products/").status_code == 401, header


def test_it_refuses_a_revoked_key(owner_org, client_for) -> None:
    client = client_for(owner_org, ["read"])
    ApiKey.objects.filter(prefix=client.api_key.split(".")[0]).update(revoked_at=timezone.now())
    response = client.get("/api/v1/products/")
    assert response.status_code == 401
    assert "revoked" in response.json()["detail"]


def test_it_refuses_an_expired_key(owner_org, client_for) -> None:
    client = client_for(owner_org, ["read"], expires_at=timezone.now() + dt.timedelta(hours=1))
    ApiKey.objects.filter(prefix=client.api_key.split(".")[0]).update(
        expires_at=timezone.now() - dt.timedelta(seconds=1)
    )
    response = client.get("/api/v1/products/")
    assert response.status_code == 401
    assert "expired" in response.json()["detail"]


def test_it_refuses_keys_of_a_suspended_organisation(owner_org, client_for) -> None:
    client = client_for(owner_org, ["read"])
    owner_org.status = "suspended"
    owner_org.save()
    assert client.get("/api/v1/products/").status_code == 401


# --- products: owner, teammate, outsider --------------------------------------------------------------------


def test_it_lists_only_the_callers_products(owner_org, outsider_org, product, client_for) -> None:
    ProductFactory(organisation=outsider_org, name="Outsider Chat")
    response = client_for(owner_org, ["read"]).get("/api/v1/products/")
    assert response.status_code == 200
    assert [p["name"] for p in response.json()["results"]] == ["Owner Chat"]


def test_it_lets_a_teammate_key_read_and_change_the_product(owner_org, product, client_for) -> None:
    teammate = client_for(owner_org, ["read", "write"])
    assert teammate.get(f"/api/v1/products/{product.pk}/").json()["name"] == "Owner Chat"
    response = teammate.patch(f"/api/v1/products/{product.pk}/", {"status": "live"}, format="json")
    assert response.status_code == 200, response.content
    product.refresh_from_db()
    assert product.status == "live"
    assert AuditEvent.objects.filter(action="product.updated", object_id=str(product.pk)).exists()


@pytest.mark.parametrize("method", ["get", "put", "patch", "delete"])
def test_it_answers_404_to_an_outsider_for_every_method(method, outsider_org, product, client_for) -> None:
    outsider = client_for(outsider_org, ["read", "write", "admin"])
    url = f"/api/v1/products/{product.pk}/"
    response = getattr(outsider, method)(url, {"name": "Stolen", "licence_version": "llama-3.1"}, format="json")
    assert response.status_code == 404
    product.refresh_from_db()
    assert product.name == "Owner Chat"


def test_it_answers_404_to_an_outsider_on_the_obligations_and_notice(outsider_org, product, client_for) -> None:
    outsider = client_for(outsider_org, ["read"])
    assert outsider.get(f"/api/v1/products/{product.pk}/obligations/").status_code == 404
    assert outsider.get(f"/api/v1/products/{product.pk}/notice/").status_code == 404


def test_it_refuses_writes_with_a_read_only_key(owner_org, product, client_for) -> None:
    reader = client_for(owner_org, ["read"])
    create = reader.post("/api/v1/products/", {"name": "New", "licence_version": "llama-3.1"}, format="json")
    assert create.status_code == 403
    assert "'write' scope" in create.json()["detail"]
    assert reader.patch(f"/api/v1/products/{product.pk}/", {"name": "X"}, format="json").status_code == 403
    assert reader.delete(f"/api/v1/products/{product.pk}/").status_code == 403
    assert Product.objects.filter(organisation=owner_org).count() == 1


def test_it_refuses_reads_with_a_key_without_the_read_scope(owner_org, product, client_for) -> None:
    assert client_for(owner_org, ["ingest"]).get("/api/v1/products/").status_code == 403


def test_it_creates_a_product_in_the_callers_organisation(owner_org, client_for) -> None:
    response = client_for(owner_org, ["read", "write"]).post(
        "/api/v1/products/",
        {"name": "Acme Code", "licence_version": "llama-3.3", "base_model": "meta-llama/Llama-3.3-70B-Instruct",
         "launch_date": "2025-01-10", "status": "live"},
        format="json",
    )
    assert response.status_code == 201, response.content
    body = response.json()
    assert body["organisation"] == owner_org.pk
    assert body["licence_version"] == "llama-3.3"
    assert Product.objects.get(pk=body["id"]).organisation == owner_org


def test_it_refuses_to_create_a_product_in_another_organisation(owner_org, outsider_org, client_for) -> None:
    response = client_for(owner_org, ["read", "write"]).post(
        "/api/v1/products/", {"name": "Sneaky", "licence_version": "llama-3.1", "organisation": outsider_org.pk},
        format="json",
    )
    assert response.status_code == 400
    assert "organisation" in response.json()
    assert not Product.objects.filter(name="Sneaky").exists()


def test_it_refuses_to_move_a_product_to_another_organisation(owner_org, outsider_org, product, client_for) -> None:
    response = client_for(owner_org, ["read", "write"]).patch(
        f"/api/v1/products/{product.pk}/", {"organisation": outsider_org.pk}, format="json"
    )
    assert response.status_code == 400
    product.refresh_from_db()
    assert product.organisation == owner_org


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"licence_version": "llama-3.1"}, "name"),
        ({"name": "A", "base_model": "meta-llama/Llama-3.1-8B-Instruct"}, "licence_version"),
        ({"name": "A", "licence_version": "llama-9"}, "licence_version"),
        ({"name": "A", "licence_version": 3.1}, "licence_version"),
        ({"name": "A", "licence_version": ["llama-3.1"]}, "licence_version"),
        ({"name": "A", "licence_version": "llama-4", "base_model": "meta-llama/Llama-2-7b-hf"}, "base_model"),
        ({"name": "A", "licence_version": "llama-3.1", "status": "sold"}, "status"),
        ({"name": "A", "licence_version": "llama-3.1", "launch_date": "yesterday"}, "launch_date"),
        ({"name": "Owner Chat", "licence_version": "llama-3.1"}, "name"),
        ({"name": "x" * 201, "licence_version": "llama-3.1"}, "name"),
    ],
)
def test_it_refuses_bad_product_input_naming_the_field(payload, field, owner_org, product, client_for) -> None:
    response = client_for(owner_org, ["read", "write"]).post("/api/v1/products/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_it_answers_400_to_malformed_json(owner_org, client_for) -> None:
    response = client_for(owner_org, ["read", "write"]).post(
        "/api/v1/products/", "{not json", content_type="application/json"
    )
    assert response.status_code == 400
    assert "JSON parse error" in response.json()["detail"]


def test_it_refuses_to_delete_a_product_with_acceptances_but_deletes_one_without(
    owner_org, product, client_for
) -> None:
    client = client_for(owner_org, ["read", "write"])
    spare = ProductFactory(organisation=owner_org, name="Spare")
    assert client.delete(f"/api/v1/products/{spare.pk}/").status_code == 204
    version = product.licence_version
    LicenceAcceptance.objects.create(
        organisation=owner_org, licence_version=version, product=product, accepted_by="t",
        licence_sha256=version.licence_sha256, aup_version=version.aup_version,
    )
    response = client.delete(f"/api/v1/products/{product.pk}/")
    assert response.status_code == 400
    assert "retired" in str(response.json())
    assert Product.objects.filter(pk=product.pk).exists()


def test_it_paginates_and_filters_products(owner_org, client_for) -> None:
    for i in range(7):
        ProductFactory(organisation=owner_org, name=f"P{i}", licence_version=licence("llama-2" if i % 2 else "llama-3.1"))
    client = client_for(owner_org, ["read"])
    page = client.get("/api/v1/products/?page_size=3").json()
    assert page["count"] == 7 and len(page["results"]) == 3 and page["next"]
    llama2 = client.get("/api/v1/products/?licence_version=llama-2").json()
    assert llama2["count"] == 3
    assert {p["licence_version"] for p in llama2["results"]} == {"llama-2"}


def test_a_product_bound_key_sees_only_its_product(owner_org, product, client_for) -> None:
    other = ProductFactory(organisation=owner_org, name="Other")
    bound = client_for(owner_org, ["read", "write"], product=product)
    assert [p["id"] for p in bound.get("/api/v1/products/").json()["results"]] == [product.pk]
    assert bound.get(f"/api/v1/products/{other.pk}/").status_code == 404
    assert bound.post("/api/v1/products/", {"name": "N", "licence_version": "llama-3.1"}, format="json").status_code == 403


# --- obligations --------------------------------------------------------------------------------------------


def test_it_serves_the_obligations_and_notice_file(owner_org, client_for) -> None:
    product = ProductFactory(organisation=owner_org, name="L3", licence_version=licence("llama-3"))
    client = client_for(owner_org, ["read"])
    body = client.get(f"/api/v1/products/{product.pk}/obligations/?derived_model_name=Llama 3 Acme").json()
    assert body["notice_text"].startswith("Meta Llama 3 is licensed under the Meta Llama 3 Community License")
    assert body["attribution_display"] == "Built with Meta Llama 3"
    assert body["outputs_may_improve_other_models"] is False
    assert body["licence_accepted"] is False and body["aup_accepted"] is False
    assert body["derived_model_name_check"]["ok"] is True
    bad = client.get(f"/api/v1/products/{product.pk}/obligations/?derived_model_name=Acme GPT").json()
    assert bad["derived_model_name_check"]["ok"] is False
    notice = client.get(f"/api/v1/products/{product.pk}/notice/")
    assert notice["Content-Disposition"] == 'attachment; filename="NOTICE"'
    assert notice.content.decode() == body["notice_text"]


# --- acceptances ------------------------------------------------------------------------------------------


def test_it_records_an_acceptance_and_the_obligations_reflect_it(owner_org, product, client_for) -> None:
    client = client_for(owner_org, ["read", "write"])
    version = product.licence_version
    before = client.get(f"/api/v1/products/{product.pk}/obligations/").json()
    response = client.post("/api/v1/acceptances/", {**acceptance_body(version), "product": product.pk}, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["accepted_by"].startswith("api-key:crl_")
    assert response.json()["aup_sha256"] == version.aup_sha256
    obligations = client.get(f"/api/v1/products/{product.pk}/obligations/").json()
    assert before["aup_required"].endswith(f"with SHA-256 {version.aup_sha256} must be accepted.")
    assert obligations["licence_accepted"] is True and obligations["aup_accepted"] is True
    assert obligations["licence_required"] == obligations["aup_required"] == ""
    assert AuditEvent.objects.filter(action="licence.accepted").count() == 1


def acceptance_body(version: LicenceVersion, **overrides: object) -> dict[str, object]:
    body = {"licence_version": version.slug, "licence_sha256": version.licence_sha256,
            "aup_version": version.aup_version, "aup_sha256": version.aup_sha256}
    body.update(overrides)
    return body


def test_it_refuses_an_acceptance_of_another_text(owner_org, product, client_for) -> None:
    version = product.licence_version
    response = client_for(owner_org, ["read", "write"]).post(
        "/api/v1/acceptances/",
        acceptance_body(version, licence_sha256="0" * 64, aup_version="llama-2", aup_sha256="0" * 64),
        format="json",
    )
    assert response.status_code == 400
    assert set(response.json()) == {"licence_sha256", "aup_version", "aup_sha256"}
    assert LicenceAcceptance.objects.count() == 0


MISSING = object()


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"aup_sha256": MISSING}, "This field is required."),  # as from a client written before the field
        ({"aup_sha256": None}, "This field may not be null."),
        ({"aup_sha256": ["f" * 64]}, "Not a valid string."),
        ({"aup_sha256": "f456a3f5"}, "Must be a SHA-256"),
        ({"aup_sha256": "F" * 64}, "Must be a SHA-256"),  # upper case is refused here as for licence_sha256
        ({"aup_sha256": "1" * 64}, "Does not match the text of Acceptable Use Policy 'llama-3.1'"),
        ({"aup_sha256": ""}, "Does not match the text of Acceptable Use Policy 'llama-3.1'"),
    ],
)
def test_it_refuses_a_bad_aup_hash_naming_the_field_and_changes_nothing(
    change, message, owner_org, product, client_for
) -> None:
    """The AUP hash is required and checked like licence_sha256: 400 naming aup_sha256, and what was already
    recorded stays as it was (acceptances are append-only)."""
    client = client_for(owner_org, ["read", "write"])
    version = product.licence_version
    recorded = client.post("/api/v1/acceptances/", acceptance_body(version), format="json").json()
    body = acceptance_body(version, **change)
    body = {key: value for key, value in body.items() if value is not MISSING}

    response = client.post("/api/v1/acceptances/", body, format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"aup_sha256"}
    assert message in response.json()["aup_sha256"][0]
    assert list(LicenceAcceptance.objects.values("id", "licence_sha256", "aup_version", "aup_sha256", "note")) == [
        {"id": recorded["id"], "licence_sha256": version.licence_sha256, "aup_version": "llama-3.1",
         "aup_sha256": version.aup_sha256, "note": ""}]
    assert AuditEvent.objects.filter(action="licence.accepted").count() == 1


def test_it_refuses_the_earlier_aup_text_once_the_catalogue_pins_a_new_one(owner_org, product, client_for) -> None:
    """Hand-computed: Acme accepted Llama 3.1 with AUP hash f456a3f5...; the catalogue pins "c" * 64. The
    obligations say the AUP must be accepted again, naming "c" * 64; accepting the old hash again is a 400 naming
    aup_sha256; accepting "c" * 64 counts."""
    client = client_for(owner_org, ["read", "write"])
    version = product.licence_version
    old_hash = version.aup_sha256
    assert client.post("/api/v1/acceptances/", acceptance_body(version), format="json").status_code == 201
    LicenceVersion.objects.filter(pk=version.pk).update(aup_sha256="c" * 64)

    stale = client.get(f"/api/v1/products/{product.pk}/obligations/").json()
    refused = client.post("/api/v1/acceptances/", acceptance_body(version, aup_sha256=old_hash), format="json")
    accepted = client.post("/api/v1/acceptances/", acceptance_body(version, aup_sha256="c" * 64), format="json")
    fresh = client.get(f"/api/v1/products/{product.pk}/obligations/").json()

    assert (stale["licence_accepted"], stale["aup_accepted"]) == (True, False)
    assert "c" * 64 in stale["aup_required"] and "again" in stale["aup_required"]
    assert refused.status_code == 400 and set(refused.json()) == {"aup_sha256"}
    assert accepted.status_code == 201, accepted.content
    assert (fresh["aup_accepted"], fresh["aup_required"]) == (True, "")


def test_acceptances_are_append_only_over_the_api(owner_org, product, client_for) -> None:
    client = client_for(owner_org, ["read", "write"])
    version = product.licence_version
    created = client.post("/api/v1/acceptances/", acceptance_body(version), format="json").json()
    assert client.patch(f"/api/v1/acceptances/{created['id']}/", {"note": "x"}, format="json").status_code == 405
    assert client.put(f"/api/v1/acceptances/{created['id']}/", acceptance_body(version, aup_sha256="c" * 64),
                      format="json").status_code == 405
    assert client.delete(f"/api/v1/acceptances/{created['id']}/").status_code == 405
    assert LicenceAcceptance.objects.get().aup_sha256 == version.aup_sha256


def test_acceptances_of_other_tenants_are_invisible(owner_org, outsider_org, product, client_for) -> None:
    version = product.licence_version
    acceptance = LicenceAcceptance.objects.create(
        organisation=owner_org, licence_version=version, accepted_by="t",
        licence_sha256=version.licence_sha256, aup_version=version.aup_version,
    )
    outsider = client_for(outsider_org, ["read", "write"])
    assert outsider.get("/api/v1/acceptances/").json()["count"] == 0
    assert outsider.get(f"/api/v1/acceptances/{acceptance.pk}/").status_code == 404
    response = outsider.post("/api/v1/acceptances/", {**acceptance_body(version), "product": product.pk},
                             format="json")
    assert response.status_code == 400 and "product" in response.json()


# --- groups, organisations, grants, catalogue ---------------------------------------------------------------


def test_it_shows_only_the_callers_group_and_organisation(client_for) -> None:
    group = GroupFactory(name="Acme")
    mine = OrganisationFactory(name="Acme A", group=group)
    OrganisationFactory(name="Acme B", group=group)
    stranger = OrganisationFactory(name="Other Co")
    client = client_for(mine, ["read"])
    groups = client.get("/api/v1/groups/").json()["results"]
    assert [(g["name"], sorted(g["organisations"])) for g in groups] == [("Acme", ["Acme A", "Acme B"])]
    assert [o["name"] for o in client.get("/api/v1/organisations/").json()["results"]] == ["Acme A"]
    assert client.get(f"/api/v1/organisations/{stranger.pk}/").status_code == 404
    assert client.get(f"/api/v1/groups/{stranger.group_id}/").status_code == 404


def test_grants_are_read_by_the_group_and_written_only_by_staff(owner_org, outsider_org, client_for) -> None:
    grant = MetaGrant.objects.create(
        group=owner_org.group, reference="META-1", granted_on=dt.date(2025, 1, 1), valid_from=dt.date(2025, 1, 1),
        recorded_by="staff",
    )
    grant.licence_versions.set([licence("llama-3.1")])
    owner = client_for(owner_org, ["read", "write", "admin"])
    assert [g["reference"] for g in owner.get("/api/v1/grants/").json()["results"]] == ["META-1"]
    assert client_for(outsider_org, ["read"]).get(f"/api/v1/grants/{grant.pk}/").status_code == 404
    payload = {"group": owner_org.group_id, "licence_versions": ["llama-4"], "reference": "SELF",
               "granted_on": "2025-05-01", "valid_from": "2025-05-01"}
    assert owner.post("/api/v1/grants/", payload, format="json").status_code == 403

    staff = UserFactory(is_staff=True)
    MembershipFactory(user=staff, organisation=owner_org, role="admin")
    session = APIClient()
    session.force_login(staff)
    response = session.post("/api/v1/grants/", payload, format="json")
    assert response.status_code == 201, response.content
    assert response.json()["recorded_by"] == f"user:{staff.username}"
    assert AuditEvent.objects.filter(action="grant.recorded").count() == 1


def test_a_viewer_session_reads_but_cannot_write(owner_org, product) -> None:
    viewer = MembershipFactory(organisation=owner_org, role="viewer").user
    session = APIClient()
    session.force_login(viewer)
    assert session.get("/api/v1/products/").json()["count"] == 1
    assert session.patch(f"/api/v1/products/{product.pk}/", {"name": "X"}, format="json").status_code == 403


def test_the_catalogue_is_readable_by_any_tenant(owner_org, client_for) -> None:
    body = client_for(owner_org, ["read"]).get("/api/v1/licences/llama-3.2/").json()
    assert body["release_date"] == "2024-09-25" and body["test_month"] == "2024-08"
    assert body["eu_multimodal_restriction"] is True
    assert any(m["multimodal"] for m in body["base_models"])


# --- products and services not built on Llama ---------------------------------------------------------------


def test_it_registers_lists_and_filters_products_of_both_kinds(owner_org, product, client_for) -> None:
    """Section 2 counts "the products or services made available by or for Licensee": a service not built on
    Llama is registered without a licence version and listed beside the Llama ones."""
    client = client_for(owner_org, ["read", "write"])

    response = client.post("/api/v1/products/", {"name": "Search", "status": "live"}, format="json")

    assert response.status_code == 201, response.content
    body = response.json()
    assert (body["licence_version"], body["built_on_llama"], body["base_model"]) == (None, False, None)

    def names(query: str) -> list[str]:
        return [p["name"] for p in client.get(f"/api/v1/products/{query}").json()["results"]]

    assert names("") == ["Owner Chat", "Search"]
    assert names("?built_on_llama=false") == ["Search"]
    assert names("?built_on_llama=true") == ["Owner Chat"]
    patched = client.patch(f"/api/v1/products/{product.pk}/", {"licence_version": None}, format="json")
    assert patched.status_code == 200 and patched.json()["built_on_llama"] is False


def test_it_says_plainly_that_a_product_not_built_on_llama_has_no_obligations_nor_notice(owner_org, client_for) -> None:
    search = ProductFactory(organisation=owner_org, name="Search", licence_version=None)
    client = client_for(owner_org, ["read"])

    obligations = client.get(f"/api/v1/products/{search.pk}/obligations/")
    notice = client.get(f"/api/v1/products/{search.pk}/notice/")

    assert obligations.status_code == 200
    assert obligations.json()["built_on_llama"] is False
    assert obligations.json()["detail"].startswith("Not built on Llama: no Llama licence obligations")
    assert notice.status_code == 404
    assert notice.json()["detail"].startswith("Search is not built on Llama: it has no Notice file")


def test_it_refuses_an_acceptance_naming_a_product_not_built_on_llama(owner_org, client_for) -> None:
    search = ProductFactory(organisation=owner_org, name="Search", licence_version=None)
    version = licence("llama-3.1")

    response = client_for(owner_org, ["read", "write"]).post("/api/v1/acceptances/", {
        "licence_version": version.slug, "licence_sha256": version.licence_sha256,
        "aup_version": version.aup_version, "aup_sha256": version.aup_sha256, "product": search.pk}, format="json")

    assert response.status_code == 400
    assert "not built on Llama" in response.json()["product"][0]
    assert not LicenceAcceptance.objects.exists()


def test_it_refuses_an_eu_company_a_product_on_a_multimodal_model(client_for) -> None:
    """Llama 4 AUP: the rights to "any multimodal models included in Llama 4 ... are not being granted to you if you
    are ... a company with a principal place of business in, the European Union"."""
    eu_org = OrganisationFactory(name="EU Co", eu_domiciled=True)

    response = client_for(eu_org, ["read", "write"]).post("/api/v1/products/", {
        "name": "Scout", "licence_version": "llama-4", "base_model": "meta-llama/Llama-4-Scout-17B-16E-Instruct"},
        format="json")

    assert response.status_code == 400
    assert set(response.json()) == {"base_model"}
    assert "With respect to any multimodal models included in Llama 4" in response.json()["base_model"][0]
    assert not Product.objects.filter(organisation=eu_org).exists()


# --- the organisation's domicile and its clause 1.b.ii exemption ---------------------------------------------


def exemption_url(organisation) -> str:
    return f"/api/v1/organisations/{organisation.pk}/exemption/"


def test_an_admin_records_reads_and_withdraws_an_exemption(owner_org, client_for) -> None:
    """Clause 1.b.ii: "If you receive Llama Materials ... from a Licensee as part of an integrated end user product,
    then Section 2 of this Agreement will not apply to you." Recorded with its supplier and evidence."""
    admin = client_for(owner_org, ["read", "admin"])

    created = admin.post(exemption_url(owner_org), {"supplier": "Globex", "evidence": "Agreement 17"}, format="json")
    state = client_for(owner_org, ["read"]).get(exemption_url(owner_org)).json()
    withdrawn = admin.post(f"{exemption_url(owner_org)}withdraw/")
    after = admin.get(exemption_url(owner_org)).json()

    assert created.status_code == 201, created.content
    assert created.json()["recorded_by"].startswith("api-key:crl_") and created.json()["in_force"] is True
    assert (state["exempt"], state["exemption"]["supplier"], len(state["history"])) == (True, "Globex", 1)
    assert withdrawn.status_code == 200 and withdrawn.json()["in_force"] is False
    assert (after["exempt"], after["exemption"], after["history"][0]["withdrawn_at"] is not None) == (False, None, True)
    assert admin.post(f"{exemption_url(owner_org)}withdraw/").status_code == 400
    assert [e.action for e in AuditEvent.objects.filter(action__startswith="exemption.")] == [
        "exemption.recorded", "exemption.withdrawn"]


@pytest.mark.parametrize("payload, fields", [
    ({"supplier": "Globex"}, {"evidence"}),
    ({"supplier": "Globex", "evidence": "  "}, {"evidence"}),
    ({"evidence": "Agreement 17"}, {"supplier"}),
    ({"supplier": "x" * 201, "evidence": "Agreement 17"}, {"supplier"}),
    ({"supplier": ["Globex"], "evidence": {"a": 1}}, {"supplier", "evidence"}),
])
def test_an_exemption_without_evidence_is_a_400_naming_the_field(payload, fields, owner_org, client_for) -> None:
    response = client_for(owner_org, ["read", "admin"]).post(exemption_url(owner_org), payload, format="json")

    assert response.status_code == 400
    assert set(response.json()) == fields
    assert not Exemption.objects.exists()


def test_the_exemption_is_the_organisations_admins_to_change(owner_org, outsider_org, product, client_for) -> None:
    payload = {"supplier": "Globex", "evidence": "Agreement 17"}
    member = client_for(owner_org, ["read", "write"])
    bound = client_for(owner_org, ["read", "write", "admin"], product=product)
    outsider = client_for(outsider_org, ["read", "write", "admin"])

    assert member.get(exemption_url(owner_org)).status_code == 200
    assert member.post(exemption_url(owner_org), payload, format="json").status_code == 403
    assert bound.post(exemption_url(owner_org), payload, format="json").status_code == 403
    assert outsider.get(exemption_url(owner_org)).status_code == 404
    assert outsider.post(exemption_url(owner_org), payload, format="json").status_code == 404
    assert outsider.post(f"{exemption_url(owner_org)}withdraw/").status_code == 404
    assert not Exemption.objects.exists()


def test_an_exemption_is_refused_while_the_organisation_runs_llama_on_the_pool(owner_org, product,
                                                                               client_for) -> None:
    from inference.models import Deployment
    from licensing.models import BaseModel

    Deployment.objects.create(
        organisation=owner_org, product=product, licence_version=product.licence_version, model_source="x/y",
        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.1-8B-Instruct"), served_model_name="chat",
        created_by="test")

    response = client_for(owner_org, ["read", "admin"]).post(
        exemption_url(owner_org), {"supplier": "Globex", "evidence": "Agreement 17"}, format="json")

    assert response.status_code == 400
    assert "runs Llama models on the pool (chat)" in response.json()["non_field_errors"][0]
    assert not Exemption.objects.exists()


def test_an_admin_sets_the_domicile_and_others_cannot(owner_org, outsider_org, client_for) -> None:
    url = f"/api/v1/organisations/{owner_org.pk}/domicile/"

    response = client_for(owner_org, ["read", "admin"]).post(url, {"eu_domiciled": True}, format="json")
    refused = client_for(owner_org, ["read", "write"]).post(url, {"eu_domiciled": False}, format="json")
    hidden = client_for(outsider_org, ["read", "admin"]).post(url, {"eu_domiciled": False}, format="json")
    bad = client_for(owner_org, ["read", "admin"]).post(url, {"eu_domiciled": "sometimes"}, format="json")

    assert response.status_code == 200, response.content
    assert response.json() == {"organisation": response.json()["organisation"], "changed": True,
                               "drained_deployments": []}
    assert response.json()["organisation"]["eu_domiciled"] is True
    assert (refused.status_code, hidden.status_code, bad.status_code) == (403, 404, 400)
    assert set(bad.json()) == {"eu_domiciled"}
    owner_org.refresh_from_db()
    assert owner_org.eu_domiciled is True


def test_the_evidence_report_lists_a_product_not_built_on_llama(owner_org, product, client_for) -> None:
    ProductFactory(organisation=owner_org, name="Search", licence_version=None)
    client = client_for(owner_org, ["read"])
    url = f"/api/v1/groups/{owner_org.group_id}/evidence/?month=2026-01"

    report = client.get(url).json()
    csv = client.get(f"{url}&format=csv").content.decode()
    html = client.get(f"{url}&format=html").content.decode()

    [org] = report["organisations"]
    assert [(p["name"], p["licence_version"]) for p in org["products"]] == [("Owner Chat", "llama-3.1"),
                                                                          ("Search", None)]
    assert "mau,product,Search,,2026-01" in csv
    assert "Search (not built on Llama)" in html

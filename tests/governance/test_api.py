"""The API-key endpoints: admin scope for writes, the secret shown once, isolation between tenants."""

from __future__ import annotations

import json

import pytest
from rest_framework.test import APIClient

from access.models import ApiKey, AuditEvent
from tests.factories import ProductFactory

pytestmark = pytest.mark.django_db


def test_it_creates_a_key_and_shows_the_secret_only_once(owner_org, client_for) -> None:
    admin = client_for(owner_org, ["read", "ingest", "admin"])
    response = admin.post("/api/v1/keys/", {"name": "ci", "scopes": ["read", "ingest"]}, format="json")
    assert response.status_code == 201, response.content
    created = response.json()
    secret = created["key"]
    assert secret.startswith(created["prefix"] + ".")

    new_client = APIClient()
    new_client.credentials(HTTP_AUTHORIZATION=f"Bearer {secret}")
    assert new_client.get("/api/v1/products/").status_code == 200

    # Never again: not in the list, the detail, the revoke answer, nor any stored column.
    listing = admin.get("/api/v1/keys/").content.decode()
    detail = admin.get(f"/api/v1/keys/{created['id']}/").content.decode()
    revoked = admin.post(f"/api/v1/keys/{created['id']}/revoke/").content.decode()
    for body in (listing, detail, revoked):
        assert secret not in body and secret.split(".")[1] not in body
    row = ApiKey.objects.filter(pk=created["id"]).values().get()
    assert all(secret.split(".")[1] not in str(value) for value in row.values())
    events = json.dumps(list(AuditEvent.objects.values("data")))
    assert secret.split(".")[1] not in events


def test_it_needs_the_admin_scope_to_create_or_revoke(owner_org, client_for) -> None:
    writer = client_for(owner_org, ["read", "write"])
    assert writer.post("/api/v1/keys/", {"name": "x", "scopes": ["read"]}, format="json").status_code == 403
    target = ApiKey.objects.get(organisation=owner_org)
    assert writer.post(f"/api/v1/keys/{target.pk}/revoke/").status_code == 403
    assert writer.get("/api/v1/keys/").status_code == 200


def test_revoking_takes_effect_at_once_and_twice_is_harmless(owner_org, client_for) -> None:
    admin = client_for(owner_org, ["read", "admin"])
    victim = client_for(owner_org, ["read"])
    victim_key = ApiKey.objects.get(prefix=victim.api_key.split(".")[0])
    assert victim.get("/api/v1/products/").status_code == 200
    assert admin.post(f"/api/v1/keys/{victim_key.pk}/revoke/").json()["is_active"] is False
    assert admin.delete(f"/api/v1/keys/{victim_key.pk}/").status_code == 204
    assert victim.get("/api/v1/products/").status_code == 401
    assert AuditEvent.objects.filter(action="api_key.revoked", object_id=str(victim_key.pk)).count() == 1


def test_deleting_a_key_revokes_it_and_takes_it_out_of_the_api_but_not_the_record(owner_org, client_for) -> None:
    admin = client_for(owner_org, ["read", "admin"])
    victim = client_for(owner_org, ["read"])
    victim_key = ApiKey.objects.get(prefix=victim.api_key.split(".")[0])
    assert admin.delete(f"/api/v1/keys/{victim_key.pk}/").status_code == 204
    assert victim.get("/api/v1/products/").status_code == 401
    assert admin.get(f"/api/v1/keys/{victim_key.pk}/").status_code == 404  # as DELETE promises
    assert victim_key.pk not in [k["id"] for k in admin.get("/api/v1/keys/?active=false").json()["results"]]
    assert admin.delete(f"/api/v1/keys/{victim_key.pk}/").status_code == 404
    victim_key.refresh_from_db()
    assert victim_key.revoked_at is not None and victim_key.deleted_at is not None
    assert [e.action for e in AuditEvent.objects.filter(object_id=str(victim_key.pk)).order_by("seq")] == [
        "api_key.created", "api_key.revoked", "api_key.deleted"]


def test_a_key_cannot_revoke_itself_but_another_admin_key_can(owner_org, client_for) -> None:
    admin = client_for(owner_org, ["read", "admin"])
    own_key = ApiKey.objects.get(prefix=admin.api_key.split(".")[0])
    for response in (admin.post(f"/api/v1/keys/{own_key.pk}/revoke/"), admin.delete(f"/api/v1/keys/{own_key.pk}/")):
        assert response.status_code == 409
        assert response.json() == {"detail": "A key cannot revoke itself: revoke it with another key that has the "
                                              "admin scope, or in the portal's key list."}
    assert admin.get("/api/v1/products/").status_code == 200
    assert not AuditEvent.objects.filter(action="api_key.revoked").exists()
    other_admin = client_for(owner_org, ["read", "admin"])
    assert other_admin.post(f"/api/v1/keys/{own_key.pk}/revoke/").json()["is_active"] is False
    assert admin.get("/api/v1/products/").status_code == 401


def test_an_outsider_cannot_see_or_revoke_another_tenants_key(owner_org, outsider_org, client_for) -> None:
    owner = client_for(owner_org, ["read", "admin"])
    owner_key = ApiKey.objects.get(prefix=owner.api_key.split(".")[0])
    outsider = client_for(outsider_org, ["read", "admin"])
    assert outsider.get(f"/api/v1/keys/{owner_key.pk}/").status_code == 404
    assert outsider.post(f"/api/v1/keys/{owner_key.pk}/revoke/").status_code == 404
    assert outsider.delete(f"/api/v1/keys/{owner_key.pk}/").status_code == 404
    assert owner.get("/api/v1/products/").status_code == 200
    assert [k["prefix"] for k in outsider.get("/api/v1/keys/").json()["results"]] == [outsider.api_key.split(".")[0]]


@pytest.mark.parametrize(
    "payload, field",
    [
        ({"scopes": ["read"]}, "name"),
        ({"name": "x"}, "scopes"),
        ({"name": "x", "scopes": []}, "scopes"),
        ({"name": "x", "scopes": ["root"]}, "scopes"),
        ({"name": "x", "scopes": "read"}, "scopes"),
        ({"name": "x", "scopes": ["read"], "expires_at": "soon"}, "expires_at"),
        ({"name": "x", "scopes": ["read"], "product": 999999}, "product"),
    ],
)
def test_it_refuses_bad_key_input_naming_the_field(payload, field, owner_org, client_for) -> None:
    response = client_for(owner_org, ["admin"]).post("/api/v1/keys/", payload, format="json")
    assert response.status_code == 400, response.content
    assert field in response.json()


def test_it_refuses_a_key_bound_to_another_tenants_product(owner_org, outsider_org, client_for) -> None:
    foreign = ProductFactory(organisation=outsider_org)
    response = client_for(owner_org, ["admin"]).post(
        "/api/v1/keys/", {"name": "x", "scopes": ["read"], "product": foreign.pk}, format="json"
    )
    assert response.status_code == 400 and "product" in response.json()


def test_it_refuses_an_expiry_in_the_past(owner_org, client_for) -> None:
    response = client_for(owner_org, ["admin"]).post(
        "/api/v1/keys/", {"name": "x", "scopes": ["read"], "expires_at": "2000-01-01T00:00:00Z"}, format="json"
    )
    assert response.status_code == 400 and "expires_at" in response.json()


def test_it_filters_active_keys(owner_org, client_for) -> None:
    admin = client_for(owner_org, ["read", "admin"])
    other = client_for(owner_org, ["read"])
    other_key = ApiKey.objects.get(prefix=other.api_key.split(".")[0])
    admin.post(f"/api/v1/keys/{other_key.pk}/revoke/")
    active = admin.get("/api/v1/keys/?active=true").json()["results"]
    assert [k["prefix"] for k in active] == [admin.api_key.split(".")[0]]
    assert [k["id"] for k in admin.get("/api/v1/keys/?active=false").json()["results"]] == [other_key.pk]


def test_a_key_cannot_mint_a_stronger_or_unbound_key(owner_org, client_for) -> None:
    product = ProductFactory(organisation=owner_org)
    other = ProductFactory(organisation=owner_org)
    admin = client_for(owner_org, ["read", "admin"])
    refused = admin.post("/api/v1/keys/", {"name": "x", "scopes": ["read", "write"]}, format="json")
    assert refused.status_code == 403 and "write" in refused.json()["detail"]
    bound = client_for(owner_org, ["read", "admin"], product=product)  # keys are organisation-wide writes
    created = bound.post("/api/v1/keys/", {"name": "child", "scopes": ["read"]}, format="json")
    assert created.status_code == 403 and "bound to one product" in created.json()["detail"]
    assert bound.post("/api/v1/keys/", {"name": "y", "scopes": ["read"], "product": other.pk},
                      format="json").status_code == 403

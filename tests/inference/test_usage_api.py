"""Gateway usage as tenants read it, the usage meter's upsert, and the gateway settings of keys."""

from __future__ import annotations

import datetime as dt

import pytest
from django.utils import timezone

from access.models import ApiKey
from inference.gateway.usage import UsageMeter
from inference.models import GatewayLimit, TokenUsage
from tests.factories import ProductFactory, licence
from tests.inference.gateway_support import ready_deployment

pytestmark = pytest.mark.django_db


@pytest.fixture
def usage(owner_org, outsider_org):
    mine = ready_deployment(owner_org, "http://127.0.0.1:9", name="mine")
    other_product = ProductFactory(organisation=owner_org, licence_version=licence("llama-3.1"))
    second = ready_deployment(owner_org, "http://127.0.0.1:9", name="second", product=other_product, accept=False)
    theirs = ready_deployment(outsider_org, "http://127.0.0.1:9", name="theirs")
    key = ApiKey.objects.create(organisation=owner_org, name="k", prefix="crl_aaaa0001", key_hash="0" * 64,
                                scopes=["inference"], created_by="t")
    their_key = ApiKey.objects.create(organisation=outsider_org, name="k", prefix="crl_aaaa0002", key_hash="0" * 64,
                                      scopes=["inference"], created_by="t")
    meter = UsageMeter()
    for deployment, api_key, user in ((mine, key, "a"), (mine, key, None), (second, key, "b"), (theirs, their_key, "c")):
        meter.record(organisation_id=deployment.organisation_id, key_id=api_key.pk, deployment_id=deployment.pk,
                     product_id=deployment.product_id, prompt_tokens=10, completion_tokens=5, user=user)
    assert meter.flush() == 3
    # A second flush adds to the same rows (many gateway processes write the same key, deployment and day).
    meter.record(organisation_id=owner_org.pk, key_id=key.pk, deployment_id=mine.pk, product_id=mine.product_id,
                 prompt_tokens=1, completion_tokens=1, user="a", cancelled=True)
    assert meter.flush() == 1
    return mine, second, theirs


def test_the_meter_adds_to_rows_in_the_database(usage) -> None:
    mine, _, _ = usage
    row = TokenUsage.objects.get(deployment=mine)
    assert (row.requests, row.prompt_tokens, row.completion_tokens, row.cancelled_requests,
            row.requests_without_user) == (3, 21, 11, 1, 1)


def test_tenants_see_their_own_usage_with_filters_and_totals(usage, client_for, owner_org) -> None:
    mine, second, _ = usage
    client = client_for(owner_org, ["read"])
    listed = client.get("/api/v1/usage/").json()
    assert sorted(r["model"] for r in listed["results"]) == ["mine", "second"]
    today = timezone.now().date().isoformat()
    only = client.get("/api/v1/usage/", {"model": "mine", "day_from": today, "day_to": today}).json()["results"]
    assert [(r["requests"], r["prompt_tokens"], r["api_key_prefix"]) for r in only] == [(3, 21, "crl_aaaa0001")]
    assert client.get("/api/v1/usage/", {"day_to": (dt.date.today() - dt.timedelta(days=2)).isoformat()}
                      ).json()["results"] == []
    totals = client.get("/api/v1/usage/totals/").json()
    assert totals == {"requests": 4, "prompt_tokens": 31, "completion_tokens": 16, "cancelled_requests": 1,
                      "failed_requests": 0, "requests_without_user": 1}
    bound = client_for(owner_org, ["read"], product=mine.product)
    assert [r["model"] for r in bound.get("/api/v1/usage/").json()["results"]] == ["mine"]
    assert client.get("/api/v1/usage/", {"day_from": "yesterday"}).status_code == 400


def test_usage_needs_the_read_scope(usage, client_for, owner_org) -> None:
    assert client_for(owner_org, ["inference"]).get("/api/v1/usage/").status_code == 403


def test_keys_carry_gateway_limits_and_a_default_user(client_for, owner_org) -> None:
    client = client_for(owner_org, ["admin", "read", "inference"])
    created = client.post("/api/v1/keys/", {"name": "chat backend", "scopes": ["inference"],
                                            "requests_per_minute": 120, "tokens_per_minute": 50_000,
                                            "max_concurrent": 4, "default_user": "svc-1"}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert (body["requests_per_minute"], body["tokens_per_minute"], body["max_concurrent"], body["default_user"]) == (
        120, 50_000, 4, "svc-1")
    bad = client.post("/api/v1/keys/", {"name": "x", "scopes": ["inference"], "requests_per_minute": 0},
                      format="json")
    assert bad.status_code == 400 and "requests_per_minute" in bad.json()


def test_only_staff_set_an_organisations_gateway_limits(client_for, owner_org, admin_client) -> None:
    tenant = client_for(owner_org, ["admin", "read", "write"])
    assert tenant.post("/api/v1/pool/gateway-limits/", {"organisation": owner_org.pk, "requests_per_minute": 10**9},
                       format="json").status_code == 403
    created = admin_client.post("/api/v1/pool/gateway-limits/", {"organisation": owner_org.pk, "max_tokens": 1024},
                                content_type="application/json")
    assert created.status_code == 201, created.content
    assert GatewayLimit.objects.get(organisation=owner_org).max_tokens == 1024

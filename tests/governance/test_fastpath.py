"""The ASGI hot path for activity ingestion keeps the DRF endpoint's contract, through the real ASGI app."""

from __future__ import annotations

import asyncio
import datetime as dt
import json

import httpx
import pytest
from django.test import override_settings
from django.utils import timezone

from config.asgi import application
from governance.metering.selectors import mau_month
from governance.models import ActivityPart
from tests.factories import OrganisationFactory, ProductFactory, make_key

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
DAY = (timezone.now() - dt.timedelta(days=1)).date()


@pytest.fixture(autouse=True)
def _no_background(monkeypatch):
    from governance.metering import services as metering

    monkeypatch.setattr(metering, "compaction_schedule", lambda: None)
    monkeypatch.setattr(metering, "_evaluation_schedule", lambda group_id: None)


def post(path: str, body: object, key: str | None = None, **headers: str) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            sent = {"content-type": "application/json", **headers}
            if key:
                sent["authorization"] = f"Bearer {key}"
            content = body if isinstance(body, bytes) else json.dumps(body).encode()
            return await client.post(path, content=content, headers=sent)

    return asyncio.run(call())


def test_it_accepts_a_batch_durably_and_counts_it() -> None:
    product = ProductFactory()
    key = make_key(product.organisation, ["ingest"])
    response = post(f"/api/v1/products/{product.pk}/activity", {"day": DAY.isoformat(), "user_ids": list(range(700))},
                    key)
    assert response.status_code == 202, response.text
    assert response.json() == {"accepted": 700, "day": DAY.isoformat(), "product": product.pk}
    assert mau_month(scope=product, month=DAY).estimate.estimate == 700


def test_it_keeps_the_idempotency_contract() -> None:
    product = ProductFactory()
    key = make_key(product.organisation, ["ingest"])
    body = {"day": DAY.isoformat(), "user_ids": ["a", "b"]}
    first = post(f"/api/v1/products/{product.pk}/activity", body, key, **{"idempotency-key": "k-1"})
    again = post(f"/api/v1/products/{product.pk}/activity", body, key, **{"idempotency-key": "k-1"})
    assert again.status_code == 202 and again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    conflict = post(f"/api/v1/products/{product.pk}/activity", {**body, "user_ids": ["c"]}, key,
                    **{"idempotency-key": "k-1"})
    assert conflict.status_code == 409 and "k-1" in conflict.json()["detail"]
    bad = post(f"/api/v1/products/{product.pk}/activity", body, key, **{"idempotency-key": "has space"})
    assert bad.status_code == 400 and "Idempotency-Key" in bad.json()
    assert ActivityPart.objects.count() == 1


def test_it_refuses_like_the_rest_of_the_api() -> None:
    product = ProductFactory()
    outsider = OrganisationFactory()
    body = {"day": DAY.isoformat(), "user_ids": ["a"]}
    path = f"/api/v1/products/{product.pk}/activity"
    assert post(path, body).status_code == 401
    assert post(path, body, "crl_00000000.nope").status_code == 401
    assert post(path, body, make_key(product.organisation, ["read", "write"])).status_code == 403
    assert post(path, body, make_key(outsider, ["ingest"])).status_code == 404
    other = ProductFactory(organisation=product.organisation)
    assert post(path, body, make_key(product.organisation, ["ingest"], product=other)).status_code == 404
    key = make_key(product.organisation, ["ingest"])
    bad = post(path, {"day": DAY.isoformat(), "user_ids": [1.5]}, key)
    assert bad.status_code == 400 and "user_ids" in bad.json()
    future = post(path, {"day": (DAY + dt.timedelta(days=5)).isoformat(), "user_ids": ["a"]}, key)
    assert future.status_code == 400 and "day" in future.json()
    assert post(path, b"{not json", key).status_code == 400
    assert post(path, {"user_ids": ["a"]}, key).json() == {"day": ["This field is required."]}
    assert ActivityPart.objects.count() == 0


def test_it_refuses_an_oversized_body_without_reading_it_all(settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 1_000
    product = ProductFactory()
    response = post(f"/api/v1/products/{product.pk}/activity", {"day": DAY.isoformat(), "user_ids": ["x" * 50] * 100},
                    make_key(product.organisation, ["ingest"]))
    assert response.status_code == 413


def test_every_other_request_goes_to_django() -> None:
    product = ProductFactory()
    key = make_key(product.organisation, ["read"])

    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            return await client.get(f"/api/v1/products/{product.pk}/", headers={"authorization": f"Bearer {key}"})

    response = asyncio.run(call())
    assert response.status_code == 200 and response.json()["id"] == product.pk


def test_a_cached_product_still_belongs_to_its_own_organisation(settings) -> None:
    """Products are cached per process like keys; the cache never lets another tenant's key in, and a product
    deleted while cached is a 404, not a 500."""
    from governance.metering import fastpath

    settings.API_KEY_CACHE_SECONDS = 60
    fastpath._products.clear()
    product = ProductFactory()
    own, other = make_key(product.organisation, ["ingest"]), make_key(OrganisationFactory(), ["ingest"])
    path, body = f"/api/v1/products/{product.pk}/activity", {"day": DAY.isoformat(), "user_ids": [1, 2]}
    assert post(path, body, own).status_code == 202
    assert product.pk in fastpath._products
    assert post(path, body, other).status_code == 404  # served from the cache, still refused
    ActivityPart.objects.filter(product=product).delete()
    product.delete()
    gone = post(path, body, own)
    assert gone.status_code == 404 and gone.json() == {"detail": "No Product matches the given query."}
    assert product.pk not in fastpath._products
    fastpath._products.clear()


def test_a_batch_is_one_autocommitted_insert(monkeypatch) -> None:
    """Without an Idempotency-Key a batch costs one statement (no BEGIN/COMMIT round trips) once the key and
    the product are cached."""
    from django.db import connection
    from django.db.backends.base.base import BaseDatabaseWrapper
    from django.test.utils import CaptureQueriesContext

    from governance.metering.fastpath import ingest_activity

    product = ProductFactory()
    key = make_key(product.organisation, ["ingest"])
    body = json.dumps({"day": DAY.isoformat(), "user_ids": list(range(100))}).encode()
    headers = {b"authorization": f"Bearer {key}".encode()}
    path = f"/api/v1/products/{product.pk}/activity"
    commits: list[int] = []
    real_commit = BaseDatabaseWrapper.commit
    monkeypatch.setattr(BaseDatabaseWrapper, "commit", lambda self: commits.append(1) or real_commit(self))
    with override_settings(API_KEY_CACHE_SECONDS=60):
        assert ingest_activity(product.pk, headers, body, path)[0] == 202  # fills both caches
        with CaptureQueriesContext(connection) as queries:
            assert ingest_activity(product.pk, headers, body, path)[0] == 202
    statements = [q["sql"] for q in queries.captured_queries]
    assert len(statements) == 1 and statements[0].startswith('INSERT INTO "governance_activitypart"'), statements
    assert commits == []  # no transaction opened and committed around it
    assert ActivityPart.objects.filter(product=product).count() == 2


def test_a_database_that_does_not_answer_is_a_503_like_the_rest_of_the_api(monkeypatch) -> None:
    from django.db import OperationalError

    from tests.factories import make_key as make

    product = ProductFactory()
    key = make(product.organisation, ["ingest", "read"])

    def refused(*args, **kwargs):
        raise OperationalError("couldn't get a connection after 2.00 sec")

    monkeypatch.setattr("access.keys.api_key_authenticate", refused)
    response = post(f"/api/v1/products/{product.pk}/activity", {"day": DAY.isoformat(), "user_ids": [1]}, key)
    assert response.status_code == 503 and response.headers["retry-after"] == "2"
    assert "not answering" in response.json()["detail"]
    monkeypatch.setattr("access.authentication.api_key_authenticate", refused)
    from rest_framework.test import APIClient

    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {key}")
    answer = client.get(f"/api/v1/products/{product.pk}/mau", {"month": DAY.strftime("%Y-%m")})
    assert answer.status_code == 503 and answer["Retry-After"] == "2"
    assert answer.json() == response.json()


def _refusals():
    from tests.governance.test_metering_api import REFUSED_ACTIVITY

    return REFUSED_ACTIVITY


@pytest.mark.parametrize("body, field, says", _refusals())
def test_it_refuses_every_bad_batch_as_the_drf_endpoint_does(settings, body, field, says) -> None:
    """The typed decoder that checks well-formed batches in one pass hands anything else to the general path,
    which names the problem: the same table of refusals as the DRF endpoint (tests/governance/
    test_metering_api.py), through the real ASGI app."""
    from tests.governance.test_metering_api import _fill, _says

    settings.METERING_RETENTION_DAYS = 30
    product = ProductFactory()
    response = post(f"/api/v1/products/{product.pk}/activity", _fill(body).encode(),
                    make_key(product.organisation, ["ingest"]))
    assert response.status_code == 400, response.content
    errors = response.json()
    assert field in errors and says in _says(errors, field), errors
    assert ActivityPart.objects.count() == 0


@pytest.mark.parametrize("body", [b'{"day": "@DAY@", "user_ids": ["a"', b'{"day": "@DAY@", "user_ids": [NaN]}',
                                  b"{'day': '@DAY@'}", b'{"day": "@DAY@", "user_ids": ["\xff"]}', b'["a", "b"]',
                                  b'"a"', b"null", b"", b"{}", b'{"day": "@DAY@", "user_ids": []}',
                                  b'{"day": "@DAY@", "user_ids": "abc"}'])
def test_it_refuses_a_body_that_is_not_a_well_formed_batch(body) -> None:
    product = ProductFactory()
    response = post(f"/api/v1/products/{product.pk}/activity", body.replace(b"@DAY@", DAY.isoformat().encode()),
                    make_key(product.organisation, ["ingest"]))
    assert response.status_code == 400, response.content
    assert response.json()
    assert ActivityPart.objects.count() == 0


def test_mixed_string_and_integer_ids_and_unknown_fields_are_accepted_by_the_typed_path() -> None:
    product = ProductFactory()
    body = {"day": DAY.isoformat(), "user_ids": ["a", 1, -(2**63), 2**63 - 1, "b"], "source": "ignored"}
    response = post(f"/api/v1/products/{product.pk}/activity", body, make_key(product.organisation, ["ingest"]))
    assert response.status_code == 202 and response.json()["accepted"] == 5
    assert mau_month(scope=product, month=DAY).estimate.estimate == 5

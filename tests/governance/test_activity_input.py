"""The activity endpoint has two servers, the DRF view (schema, WSGI) and the ASGI fast path production serves,
and one reader of its input (governance/metering/activity_input.py). Each body here goes to both, and both must
answer with the same status and the same JSON."""

from __future__ import annotations

import asyncio
import datetime as dt

import httpx
import pytest
from django.test import Client

from config.asgi import application
from governance.models import ActivityPart
from tests.factories import ProductFactory, make_key
from tests.governance.test_metering_api import REFUSED_ACTIVITY, _fill

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)

JSON = "application/json"
SHAPES = [
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a", 1, -9223372036854775808, "b"]}', JSON, id="typed"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a"], "source": "ignored"}', JSON, id="unknown-field"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a"]}', "application/json; charset=utf-8", id="charset"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a"]}', None, id="no-content-type"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a"]}', "text/plain", id="text-plain"),
    pytest.param(b'day=@DAY@&user_ids=a', "application/x-www-form-urlencoded", id="form"),
    pytest.param(b'{"day": "2024-1-5", "user_ids": ["a"]}', JSON, id="short-day"),
    pytest.param(b'{"day": "20240105", "user_ids": ["a"]}', JSON, id="basic-iso-day"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["a"', JSON, id="truncated"),
    pytest.param(b'{"day": "@DAY@", "user_ids": [NaN]}', JSON, id="nan"),
    pytest.param(b"{'day': '@DAY@'}", JSON, id="single-quotes"),
    pytest.param(b'{"day": "@DAY@", "user_ids": ["\xff"]}', JSON, id="not-utf8"),
    pytest.param(b'["a", "b"]', JSON, id="array"),
    pytest.param(b"null", JSON, id="null"),
    pytest.param(b"", JSON, id="empty"),
    pytest.param(b"{}", JSON, id="empty-object"),
    pytest.param(b'{"day": 20240105, "user_ids": ["a"]}', JSON, id="day-a-number"),
    pytest.param(b"[" * 2000 + b"]" * 2000, JSON, id="too-deep"),
    *(pytest.param(p.values[0].encode(), JSON, id=p.id) for p in REFUSED_ACTIVITY),
]


@pytest.fixture(autouse=True)
def _no_background(monkeypatch):
    from governance.metering import services as metering

    monkeypatch.setattr(metering, "compaction_schedule", lambda: None)  # parts stay parts: counted below
    monkeypatch.setattr(metering, "_evaluation_schedule", lambda group_id: None)


def _asgi(path: str, body: bytes, headers: dict[str, str]) -> httpx.Response:
    async def call() -> httpx.Response:
        transport = httpx.ASGITransport(app=application)
        async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
            request = client.build_request("POST", path, content=body, headers=headers)
            if "content-type" not in headers:
                request.headers.pop("content-type", None)
            return await client.send(request)

    return asyncio.run(call())


@pytest.mark.parametrize("template, content_type", SHAPES)
def test_the_fast_path_and_the_drf_view_answer_every_body_alike(settings, template, content_type) -> None:
    settings.METERING_RETENTION_DAYS = 30
    product = ProductFactory()
    key = make_key(product.organisation, ["ingest"])
    body = _fill(template.decode("latin-1")).encode("latin-1")
    path = f"/api/v1/products/{product.pk}/activity"
    headers = {"authorization": f"Bearer {key}"}
    if content_type is not None:
        headers["content-type"] = content_type

    fast = _asgi(path, body, headers)
    # The test client sends application/octet-stream unless told; "" is a request without the header.
    view = Client().generic("POST", path, body, content_type=content_type or "", HTTP_AUTHORIZATION=f"Bearer {key}")

    assert fast.headers["content-type"].startswith(JSON) and view["Content-Type"].startswith(JSON)
    assert (fast.status_code, fast.json()) == (view.status_code, view.json()), body[:80]
    assert fast.status_code in (202, 400, 415)
    assert ActivityPart.objects.count() == (2 if fast.status_code == 202 else 0)  # one per server


def test_both_read_a_day_only_in_the_form_the_error_names() -> None:
    from governance.metering.activity_input import ActivityInputRefused, activity_input

    day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    assert activity_input(f'{{"day": "{day}", "user_ids": [1]}}'.encode(), content_type=JSON,
                          path="/api/v1/products/1/activity").elements_checked
    with pytest.raises(ActivityInputRefused) as refused:
        activity_input(b'{"day": "2024-W01-1", "user_ids": [1]}', content_type=JSON, path="/api/v1/products/1/activity")
    assert refused.value.status == 400 and refused.value.errors == {
        "day": ["Date has wrong format. Use one of these formats instead: YYYY-MM-DD."]}

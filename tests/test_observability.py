"""What an operator sees: /metrics behind its token, request metrics by route template, gateway refusals,
database state read at scrape time, request ids on responses and log lines, and /healthz's degraded checks."""

from __future__ import annotations

import asyncio
import datetime as dt
import io
import json
import logging
import re
from pathlib import Path
from typing import Any

import httpx
import pytest
from django.test import Client
from django.utils import timezone
from prometheus_client import REGISTRY
from rest_framework.test import APIClient

from config.asgi import application
from config.observability import DATABASE_REGISTRY, JsonFormatter, ObservedApp, RequestIdFilter, route_template
from governance.models import ActivityPart, ActivitySource, ComplianceStatus, Heartbeat
from inference.gateway.app import Gateway
from inference.models import replica_key
from tests.factories import ProductFactory, licence, make_key
from tests.inference.fake_openai import FakeOpenAI
from tests.inference.gateway_support import ThreadServer, ready_deployment

ROOT = Path(__file__).resolve().parent.parent
TOKEN = "metrics-token-for-tests-0123456789"


def requests_total(route: str, method: str, status: str) -> float:
    return REGISTRY.get_sample_value("corral_http_requests_total",
                                     {"route": route, "method": method, "status": status}) or 0.0


def asgi_get(app: Any, path: str, **headers: str) -> httpx.Response:
    async def call() -> httpx.Response:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver") as client:
            return await client.get(path, headers=headers)

    return asyncio.run(call())


# --- /metrics -----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_it_hides_metrics_when_no_token_is_configured(settings) -> None:
    settings.METRICS_TOKEN = ""
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}").status_code == 404


@pytest.mark.django_db
def test_it_refuses_metrics_without_the_right_token(settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    assert Client().get("/metrics").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION="Bearer wrong-token").status_code == 401
    assert Client().get("/metrics", HTTP_AUTHORIZATION=f"Basic {TOKEN}").status_code == 401
    refused = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}x")
    assert refused.status_code == 401 and b"corral_" not in refused.content


@pytest.mark.django_db
def test_it_serves_metrics_with_the_token(settings) -> None:
    settings.METRICS_TOKEN = TOKEN
    response = Client().get("/metrics", HTTP_AUTHORIZATION=f"Bearer {TOKEN}")
    assert response.status_code == 200
    assert response["Content-Type"].startswith("text/plain; version=")
    text = response.content.decode()
    assert "# TYPE corral_http_requests_total counter" in text
    assert "corral_metering_compaction_lag_seconds 0.0" in text


# --- request metrics and ids through the real ASGI stack ----------------------------------------------------
@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_counts_a_request_by_its_route_template_and_status() -> None:
    product = ProductFactory()
    key = make_key(product.organisation, ["read"])
    route = "/api/v1/products/{pk}/"
    before = requests_total(route, "GET", "200")
    response = asgi_get(application, f"/api/v1/products/{product.pk}/", authorization=f"Bearer {key}")
    assert response.status_code == 200
    assert requests_total(route, "GET", "200") == before + 1
    labels = {s.labels.get("route") for m in REGISTRY.collect() for s in m.samples if m.name == "corral_http_requests"}
    assert not any(re.search(rf"/{product.pk}(/|$)", label or "") for label in labels), labels


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_returns_the_callers_request_id_and_replaces_a_malformed_one() -> None:
    kept = asgi_get(application, "/healthz", **{"x-request-id": "trace-abc.123"})
    assert kept.headers.get_list("x-request-id") == ["trace-abc.123"]
    replaced = asgi_get(application, "/healthz", **{"x-request-id": "bad id\twith spaces"})
    assert re.fullmatch(r"[0-9a-f]{32}", replaced.headers["x-request-id"])
    generated = asgi_get(application, "/healthz")
    assert re.fullmatch(r"[0-9a-f]{32}", generated.headers["x-request-id"])
    assert generated.headers["x-request-id"] != replaced.headers["x-request-id"]


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_gateway_refusal_counts_its_reason(settings) -> None:
    settings.GATEWAY_USAGE_FLUSH_SECONDS = 3600
    gateway = Gateway()
    refusals = ("corral_gateway_refusals_total", {"reason": "invalid_api_key"})
    before = REGISTRY.get_sample_value(*refusals) or 0.0
    route_before = requests_total("/v1/models", "GET", "401")

    async def call() -> httpx.Response:
        try:
            transport = httpx.ASGITransport(app=ObservedApp(gateway))
            async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
                return await client.get("/v1/models", headers={"authorization": "Bearer sk-not-ours"})
        finally:
            await gateway.shutdown()

    response = asyncio.run(call())
    assert response.status_code == 401 and response.json()["error"]["code"] == "invalid_api_key"
    assert REGISTRY.get_sample_value(*refusals) == before + 1
    assert requests_total("/v1/models", "GET", "401") == route_before + 1


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_the_gateway_passes_the_request_id_to_vllm(settings, owner_org) -> None:
    settings.GATEWAY_USAGE_FLUSH_SECONDS = 3600
    settings.GATEWAY_REDIS_PREFIX = "corral-test:obs"
    upstream = FakeOpenAI()
    with ThreadServer(upstream) as vllm:
        upstream.url = vllm.url
        deployment = ready_deployment(owner_org, vllm.url)
        upstream.keys.update(replica_key(r.pk, r.key_salt) for r in deployment.replica_set.all())
        key = make_key(owner_org, ["inference"])
        with ThreadServer(ObservedApp(Gateway())) as gateway:
            response = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=20,
                                  headers={"authorization": f"Bearer {key}", "x-request-id": "trace-77"},
                                  json={"model": "chat-small", "messages": [{"role": "user", "content": "Hi"}]})
            generated = httpx.post(f"{gateway.url}/v1/chat/completions", timeout=20,
                                   headers={"authorization": f"Bearer {key}"},
                                   json={"model": "chat-small", "messages": [{"role": "user", "content": "Hi"}]})
    assert response.status_code == 200 and response.headers["x-request-id"] == "trace-77"
    assert generated.status_code == 200
    assert upstream.request_ids == ["trace-77", generated.headers["x-request-id"]]


def test_every_log_line_of_a_request_carries_its_request_id() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    handler.addFilter(RequestIdFilter())
    log = logging.getLogger("corral.test.observability")
    log.addHandler(handler)
    log.setLevel(logging.INFO)

    async def view(scope: Any, receive: Any, send: Any) -> None:
        log.info("handling %s", scope["path"])
        await asyncio.sleep(0)
        log.warning("still handling")
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    try:
        response = asgi_get(ObservedApp(view), "/anything", **{"x-request-id": "req-42"})
        log.info("outside any request")
    finally:
        log.removeHandler(handler)
    lines = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert response.headers["x-request-id"] == "req-42"
    assert [(line["message"], line["request_id"]) for line in lines] == [
        ("handling /anything", "req-42"), ("still handling", "req-42"), ("outside any request", "")]
    assert {line["level"] for line in lines} == {"INFO", "WARNING"}
    assert all(line["time"].endswith("Z") for line in lines)


# --- database state read at scrape time ---------------------------------------------------------------------
@pytest.mark.django_db
def test_the_collector_reports_compaction_lag_and_evaluation_age() -> None:
    product = ProductFactory()
    group = product.organisation.group
    part = ActivityPart.objects.create(product=product, day=timezone.now().date(), source=ActivitySource.ID_BATCH,
                                       sketch=b"x", lg_k=12)
    ActivityPart.objects.filter(pk=part.pk).update(created_at=timezone.now() - dt.timedelta(minutes=10))
    now = timezone.now()
    for rule, minutes in (("last_month", 30), ("projected", 7)):
        ComplianceStatus.objects.create(group=group, licence_version=licence(), rule=rule, state="below",
                                        threshold=700_000_000, explanation="test", since=now,
                                        evaluated_at=now - dt.timedelta(minutes=minutes))
    lag = DATABASE_REGISTRY.get_sample_value("corral_metering_compaction_lag_seconds")
    assert 600 <= lag < 660
    assert DATABASE_REGISTRY.get_sample_value("corral_metering_parts_pending") == 1
    age = DATABASE_REGISTRY.get_sample_value("corral_evaluation_age_seconds", {"group": str(group.pk)})
    assert 420 <= age < 480  # the most recent of the group's evaluations
    assert DATABASE_REGISTRY.get_sample_value("corral_replicas", {"state": "ready"}) == 0


# --- /healthz -----------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_healthz_is_ok_when_beat_is_recent_and_nothing_waits() -> None:
    Heartbeat.objects.create(component="beat", seen_at=timezone.now())
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json()["status"] == "ok" and response.json()["degraded"] == []


@pytest.mark.django_db
def test_healthz_is_degraded_but_200_when_beat_stopped(settings) -> None:
    settings.HEALTHZ_BEAT_STALE_SECONDS = 120
    Heartbeat.objects.create(component="beat", seen_at=timezone.now() - dt.timedelta(minutes=5))
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "degraded" and body["degraded"] == ["beat"]
    assert body["checks"]["beat"].startswith("degraded: beat last ran 300 s ago")
    Heartbeat.objects.all().delete()
    assert APIClient().get("/healthz").json()["checks"]["beat"] == "degraded: beat has never run"


@pytest.mark.django_db
def test_healthz_is_degraded_but_200_when_compaction_lags(settings) -> None:
    settings.HEALTHZ_COMPACTION_LAG_SECONDS = 60
    Heartbeat.objects.create(component="beat", seen_at=timezone.now())
    part = ActivityPart.objects.create(product=ProductFactory(), day=timezone.now().date(),
                                       source=ActivitySource.ID_BATCH, sketch=b"x", lg_k=12)
    assert APIClient().get("/healthz").json()["status"] == "ok"  # just arrived: within the limit
    ActivityPart.objects.filter(pk=part.pk).update(created_at=timezone.now() - dt.timedelta(minutes=3))
    response = APIClient().get("/healthz")
    assert response.status_code == 200
    assert response.json()["degraded"] == ["compaction"]
    assert "oldest uncompacted part is 180 s old" in response.json()["checks"]["compaction"]


def test_route_templates_name_their_parameters() -> None:
    assert route_template("api/v1/products/(?P<pk>[^/.]+)/?$") == "/api/v1/products/{pk}/"
    assert route_template("api/v1/groups/<int:group_id>/months/<str:month>/") == "/api/v1/groups/{group_id}/months/{month}/"
    assert route_template("healthz") == "/healthz"


# --- the dashboard --------------------------------------------------------------------------------------------
@pytest.mark.django_db
def test_the_dashboard_uses_only_metrics_that_exist() -> None:
    known = set()
    for registry in (REGISTRY, DATABASE_REGISTRY):
        for family in registry.collect():
            known |= {family.name, f"{family.name}_total", f"{family.name}_bucket", f"{family.name}_sum",
                      f"{family.name}_count", f"{family.name}_created"}
    dashboard = json.loads((ROOT / "deploy/grafana/corral.json").read_text())
    exprs = [target["expr"] for panel in dashboard["panels"] for target in panel.get("targets", [])]
    assert exprs, "the dashboard has no queries"
    used = {name for expr in exprs for name in re.findall(r"\b(corral_[a-z_]+)", expr)}
    assert used and used <= known, sorted(used - known)
    assert {"corral_http_requests_total", "corral_gateway_refusals_total", "corral_metering_compaction_lag_seconds",
            "corral_evaluation_age_seconds", "corral_replicas"} <= used


def test_a_worker_serves_its_pools_metrics_on_its_own_port_behind_the_token(settings, caplog) -> None:
    import socket

    from config.celery import serve_metrics
    from config.observability import RECONCILE_DURATION

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    settings.WORKER_METRICS_PORT, settings.METRICS_TOKEN = port, ""
    assert serve_metrics() is None and "METRICS_TOKEN is not" in caplog.text  # never served without a token
    settings.METRICS_TOKEN = "worker-token"
    server = serve_metrics()
    try:
        RECONCILE_DURATION.observe(0.25)
        url = f"http://127.0.0.1:{port}/metrics"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{port}/other", headers={"authorization": "Bearer worker-token"}
                         ).status_code == 404
        served = httpx.get(url, headers={"authorization": "Bearer worker-token"})
        assert served.status_code == 200 and "corral_reconcile_duration_seconds_count" in served.text
    finally:
        server.shutdown()
        server.server_close()

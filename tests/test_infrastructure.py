"""The running parts: settings, health, the broker, the cache and the API schema."""

from __future__ import annotations

import os
import re
import runpy
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
import yaml
from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from django.core.cache import cache
from kombu import Connection, Exchange, Queue
from openapi_spec_validator import validate
from rest_framework.test import APIClient

from config.celery import app as celery_app
from governance.tasks import record_heartbeat

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.django_db
def test_healthz_reports_every_dependency_ok() -> None:
    record_heartbeat.delay()  # beat has run: otherwise /healthz says degraded (tests/test_observability.py)
    response = APIClient().get("/healthz")
    assert response.status_code == 200, response.content
    body = response.json()
    assert body["status"] == "ok"
    assert {body["checks"][name] for name in ("database", "cache", "broker")} == {"ok"}


@pytest.mark.django_db
def test_healthz_says_when_beat_last_ran() -> None:
    record_heartbeat.delay()
    assert APIClient().get("/healthz").json()["beat_last_seen"] is not None


def test_the_configured_broker_carries_a_message_both_ways() -> None:
    """Publish and consume through whatever CELERY_BROKER_URL names (Redis in CI, the filesystem otherwise)."""
    name = f"corral-test-{uuid.uuid4().hex[:8]}"
    exchange = Exchange(name, type="direct")
    queue = Queue(name, exchange, routing_key=name)
    with Connection(settings.CELERY_BROKER_URL, transport_options=settings.CELERY_BROKER_TRANSPORT_OPTIONS) as conn:
        producer = conn.Producer()
        producer.publish({"hello": name}, exchange=exchange, routing_key=name, declare=[queue], serializer="json")
        with conn.SimpleQueue(queue) as simple:
            message = simple.get(block=True, timeout=5)
            assert message.payload == {"hello": name}
            message.ack()
    assert celery_app.conf.broker_url == settings.CELERY_BROKER_URL


def test_the_configured_cache_round_trips() -> None:
    key = f"test:{uuid.uuid4().hex}"
    cache.set(key, {"n": 1}, timeout=5)
    assert cache.get(key) == {"n": 1}
    expected = "RedisCache" if os.environ.get("REDIS_URL") else "LocMemCache"
    assert settings.CACHES["default"]["BACKEND"].endswith(expected)


def test_the_database_is_the_configured_one() -> None:
    expected = "postgresql" if os.environ.get("DATABASE_URL", "").startswith("postgres") else "sqlite3"
    assert settings.DATABASES["default"]["ENGINE"].endswith(expected)


@pytest.mark.django_db
def test_the_openapi_schema_is_valid_and_documents_every_route(owner_org, client_for) -> None:
    response = client_for(owner_org, ["read"]).get("/api/v1/schema/", HTTP_ACCEPT="application/vnd.oai.openapi")
    assert response.status_code == 200
    schema = yaml.safe_load(response.content)
    validate(schema)
    for path in ["/api/v1/products/", "/api/v1/products/{id}/obligations/", "/api/v1/acceptances/",
                 "/api/v1/grants/", "/api/v1/keys/", "/api/v1/keys/{id}/revoke/", "/api/v1/groups/",
                 "/api/v1/organisations/", "/api/v1/licences/"]:
        assert path in schema["paths"], path
    assert schema["components"]["securitySchemes"]


@pytest.mark.django_db
def test_the_docs_page_needs_no_network() -> None:
    html = APIClient().get("/api/v1/docs/").content.decode()
    assert "swagger-ui" in html
    assert "cdn." not in html and "unpkg" not in html and "jsdelivr" not in html


def _manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in {"SECRET_KEY", "DJANGO_SETTINGS_MODULE"}}
    return subprocess.run(
        [sys.executable, "manage.py", *args], cwd=ROOT, env={**base, **env}, capture_output=True, text=True,
        timeout=120,
    )


def test_production_refuses_to_start_without_a_secret_key() -> None:
    result = _manage("check", env={"CORRAL_ENV": "production", "ALLOWED_HOSTS": "corral.example.com"})
    assert result.returncode != 0
    assert "SECRET_KEY" in result.stderr


def test_production_settings_pass_the_deploy_checks(tmp_path) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text("s" * 10 + uuid.uuid4().hex + uuid.uuid4().hex)
    production = {"CORRAL_ENV": "production", "SECRET_KEY_FILE": str(secret_file),
                  "ALLOWED_HOSTS": "corral.example.com", "REDIS_URL": "redis://127.0.0.1:6379/0"}
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env=production)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "no issues" in result.stdout
    # Without Redis the gateway's limits would hold per process only: the deploy check says so.
    result = _manage("check", "--deploy", "--fail-level", "WARNING", env={**production, "REDIS_URL": ""})
    assert result.returncode != 0 and "corral.W001" in result.stdout + result.stderr


def test_a_malformed_setting_is_refused_with_its_name() -> None:
    result = _manage("check", env={"DATABASE_POOL_MAX_SIZE": "many", "DATABASE_URL": "postgres://x@127.0.0.1/x"})
    assert result.returncode != 0
    assert "DATABASE_POOL_MAX_SIZE" in result.stderr


# Every typed variable config/settings.py reads, found in its source so a new one is covered without a list
# to keep up to date, with a value of the wrong type.
_TYPED_SETTINGS = sorted(set(re.findall(r'env_(int|bool|float)\(\s*"(\w+)"', (ROOT / "config" / "settings.py").read_text())))
_MALFORMED = {"int": "many", "bool": "maybe", "float": "soon"}


def test_the_settings_read_typed_variables() -> None:
    kinds = {kind for kind, _ in _TYPED_SETTINGS}
    assert kinds == {"int", "bool", "float"} and len(_TYPED_SETTINGS) > 40


@pytest.mark.parametrize(("kind", "name"), _TYPED_SETTINGS, ids=[name for _, name in _TYPED_SETTINGS])
def test_every_malformed_typed_setting_is_refused_with_its_name(kind, name, monkeypatch, tmp_path) -> None:
    # Production (for the variables read only there) on PostgreSQL (for the pool's); settings are evaluated
    # afresh in this process, which is what start-up does.
    secret = tmp_path / "secret"
    secret.write_text("s" * 20 + "".join(map(str, range(40))))
    for variable, value in {"CORRAL_ENV": "production", "SECRET_KEY_FILE": str(secret), "DEBUG": "false",
                            "ALLOWED_HOSTS": "corral.example.com", "DATABASE_URL": "postgres://x@127.0.0.1/x",
                            "CORRAL_VAR_DIR": str(tmp_path), "TRUST_X_FORWARDED_PROTO": "true"}.items():
        monkeypatch.setenv(variable, value)
    monkeypatch.setenv(name, _MALFORMED[kind])
    with pytest.raises(ImproperlyConfigured) as error:
        runpy.run_path(str(ROOT / "config" / "settings.py"))
    assert str(error.value).startswith(f"{name}={_MALFORMED[kind]!r} is not ")


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_a_timeout_must_be_a_finite_number(value, monkeypatch) -> None:
    monkeypatch.setenv("GATEWAY_BACKEND_TIMEOUT_SECONDS", value)
    with pytest.raises(ImproperlyConfigured, match="GATEWAY_BACKEND_TIMEOUT_SECONDS='.*' is not a number"):
        runpy.run_path(str(ROOT / "config" / "settings.py"))


@pytest.mark.django_db
def test_every_json_endpoint_refuses_an_oversized_body(owner_org, client_for, settings) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 10_000
    response = client_for(owner_org, ["read", "write"]).post(
        "/api/v1/products/", {"name": "P", "licence_version": "llama-3.1", "description": "x" * 20_000}, format="json")
    assert response.status_code == 413


@pytest.mark.django_db
@pytest.mark.parametrize("query", ["mau/?ending=2025-01-01&days=%C2%B2", "mau/?ending=0001-01-01",
                                   "mau/daily/?from=0001-01-01&to=0001-01-05", "mau/?month=9999-12"])
def test_out_of_range_dates_are_a_400(query, owner_org, client_for) -> None:
    from tests.factories import ProductFactory

    product = ProductFactory(organisation=owner_org)
    assert client_for(owner_org, ["read"]).get(f"/api/v1/products/{product.pk}/{query}").status_code == 400

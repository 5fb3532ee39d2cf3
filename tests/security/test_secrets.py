"""Keys and secrets (OWASP API2, API8): no full API key, vLLM key or webhook secret in a log record, a response
body (but the one that hands it out) or any database column; comparisons are constant time."""

from __future__ import annotations

import hmac
import inspect
import logging
from typing import Any

import pytest
from django.apps import apps
from rest_framework.test import APIClient

from access import keys
from access.keys import api_key_authenticate
from governance.webhooks import signing as webhooks
from inference.gateway.app import Gateway
from inference.models import replica_key
from tests.security.test_authorization import api_paths
from tests.security.world import build_tenant

pytestmark = pytest.mark.django_db


def test_it_keeps_every_secret_out_of_logs_responses_and_the_database(caplog: Any) -> None:
    caplog.set_level(logging.DEBUG)  # every logger, every level
    tenants = [build_tenant("Alpha"), build_tenant("Bravo")]
    secrets = [s for t in tenants for s in t.secrets]
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenants[0].admin_key}")
    created = client.post("/api/v1/keys/", {"name": "one more", "scopes": ["read"]}, format="json").json()["key"]
    hook = client.post("/api/v1/webhooks/", {"url": "https://hooks.example.com/in"}, format="json").json()
    rotated = client.post(f"/api/v1/webhooks/{hook['id']}/rotate-secret/").json()
    secrets += [created, hook["secret"], rotated["secret"]]
    secrets += [replica_key(r.pk, r.key_salt) for t in tenants for r in t.objects["deployment"].replica_set.all()]
    # Every GET of the API with the caller's own ids, then a failed login with a key: bodies must hold none.
    bodies, own = [], tenants[0].objects
    ids = {"id": own["product"].pk, "slug": "llama-3.1"}
    for path, methods in api_paths().items():
        if "GET" in methods:
            kind = path.split("/")[3]
            pk = {"webhooks": own["webhook"].pk, "keys": own["api_key"].pk, "deployments": own["deployment"].pk,
                  "groups": own["group"].pk, "organisations": own["organisation"].pk}.get(kind, ids["id"])
            url = path.replace("{id}", str(pk)).replace("{slug}", ids["slug"])
            bodies.append(client.get(url, {"month": "2026-11"}).content.decode(errors="replace"))
    bodies.append(APIClient().get("/api/v1/products/", HTTP_AUTHORIZATION=f"Bearer {secrets[0]}x").content.decode())
    assert len(bodies) > 50 and len(secrets) >= 20

    logs = "\n".join(f"{r.getMessage()} {r.args!r} {r.__dict__.get('exc_text') or ''}" for r in caplog.records)
    columns = []
    for model in apps.get_models():
        for row in model._base_manager.values_list(*[f.attname for f in model._meta.concrete_fields]):
            columns.extend(str(bytes(v) if isinstance(v, memoryview) else v) for v in row)
    database = "\n".join(columns)
    found = [(where, secret[:12]) for secret in secrets
             for where, text in (("log", logs), ("response", "\n".join(bodies)), ("database", database))
             if secret in text or secret.split(".")[-1] in text]
    print(f"secrets: {len(secrets)} secrets against {len(caplog.records)} log records, {len(bodies)} responses, "
          f"{len(columns)} database values: {len(found)} found")
    assert found == []
    assert keys._hash_secret(created) in database  # the hash is there: the scan really read the keys table


def test_it_compares_key_hashes_in_constant_time(monkeypatch: Any, owner_org: Any) -> None:
    calls = []
    real = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        calls.append((a, b))
        return real(a, b)

    monkeypatch.setattr(keys.hmac, "compare_digest", spy)
    _, full_key = keys.api_key_create(organisation=owner_org, name="t", scopes=["read"], created_by="t")
    api_key_authenticate(full_key)
    with pytest.raises(keys.KeyRejected):
        api_key_authenticate(full_key[:-1] + ("A" if full_key[-1] != "A" else "B"))
    with pytest.raises(keys.KeyRejected):
        api_key_authenticate("crl_00000000.unknown")  # no such prefix: compared against a dummy all the same
    assert len(calls) == 3
    # The gateway verifies keys with the same function; webhook signatures are checked by receivers with verify.
    assert "key_verify(" in inspect.getsource(Gateway.authenticate)
    for function in (keys.key_verify, webhooks.verify):
        source = inspect.getsource(function)
        assert "hmac.compare_digest(" in source and " == api_key.key_hash" not in source

"""Object-level authorization (OWASP API1, API3, API5): tenant A against every object of tenant B.

The URLs come from the OpenAPI schema and the portal's URL conf, so a new endpoint is swept without a change
here; a new kind of object fails test_it_knows_an_object_of_b_for_every_object_url until it is added below.
"""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

import pytest
from django.test import Client
from django.urls import URLPattern
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from access.models import ApiKey, Membership, Organisation, Scope
from inference.models import GatewayLimit, GpuQuota
from licensing.models import MetaGrant
from portal.urls import urlpatterns as portal_urlpatterns
from tests.security.conftest import database_snapshot, snapshot_diff
from tests.security.world import SCOPE_SETS, WEBHOOK_URL, Tenant, build_tenant

pytestmark = pytest.mark.django_db

METHODS = ("GET", "PUT", "PATCH", "DELETE", "POST")
# The first path segments of an object URL under /api/v1/, and which of B's objects fills {id}.
API_OBJECTS = {
    "acceptances": "acceptance", "alerts": "alert", "deployments": "deployment", "grants": "grant",
    "declaration-proposals": "declaration_proposal",
    "groups": "group", "keys": "api_key", "organisations": "organisation", "products": "product",
    "webhooks": "webhook", "pool/deployments": "deployment", "pool/gateway-limits": "gateway_limit",
    "pool/gpus": "gpu", "pool/nodes": "node", "pool/quotas": "quota",
}
PUBLIC_OBJECTS = {"licences"}  # the licence catalogue: the same for everyone
PORTAL_OBJECTS = {
    "group": "group", "group-evaluate": "group", "group-evidence": "group", "policy": "group", "webhooks": "group",
    "product": "product", "product-edit": "product", "product-accept": "product", "product-notice": "product",
    "alert-acknowledge": "alert", "webhook": "webhook", "webhook-test": "webhook", "webhook-toggle": "webhook",
    "webhook-delete": "webhook", "deployment": "deployment", "deployment-scale": "deployment",
    "deployment-delete": "deployment", "key-revoke": "api_key", "member-role": "membership",
    "member-remove": "membership", "group-admin-appoint": "group", "group-admin-remove": "group",
    "group-management": "group", "invitation-revoke": "invitation", "organisation": "organisation",
    "organisation-domicile": "organisation", "organisation-exemption": "organisation",
    "organisation-exemption-withdraw": "organisation", "declarations": "group", "grants": "group",
    "deployment-status": "deployment", "replica-log": "deployment",
}


def api_paths() -> dict[str, list[str]]:
    """Every path of the REST API's schema with its methods."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {path: [m.upper() for m in item if m in ("get", "put", "patch", "delete", "post")]
            for path, item in schema["paths"].items()}


def object_paths() -> list[tuple[str, str]]:
    """(path template, kind of object) for every API path that names one object."""
    found = []
    for path in api_paths():
        match = re.match(r"^/api/v1/(.+?)/\{(\w+)\}/", path)
        if match and match.group(1) not in PUBLIC_OBJECTS:
            found.append((path, API_OBJECTS.get(match.group(1), "")))
    return found


def hostile_body(b: Tenant) -> dict[str, Any]:
    """A body that would be valid for most writes, pointing at B wherever a field can."""
    today = dt.date.today().isoformat()
    version = b.objects["product"].licence_version
    return {
        "organisation": b.organisation.pk, "group": b.group.pk, "product": b.objects["product"].pk,
        "name": "owned by A", "description": "owned by A", "url": WEBHOOK_URL, "replicas": 0, "mode": "monitor",
        "licence_version": version.slug, "licence_versions": [version.slug], "licence_sha256": version.licence_sha256,
        "aup_version": version.aup_version, "base_model": b.objects["deployment"].base_model.repo_id,
        "served_model_name": "a-takeover", "device": "cpu", "scopes": ["read"], "reference": "A", "granted_on": today,
        "valid_from": today, "month": today, "mau": 1, "evidence": "A", "day": today, "user_ids": ["a"],
        "enabled": False, "active": False, "max_gpus": 99, "max_cpu_replicas": 99, "requests_per_minute": 1,
        "supersedes": b.objects["grant"].pk, "node": b.objects["node"].pk, "index": 9, "model": "x",
        "memory_mib": 1, "address": "10.0.0.1",
    }


@pytest.fixture
def tenants() -> tuple[Tenant, Tenant]:
    return build_tenant("Alpha"), build_tenant("Bravo")


def credentials(a: Tenant) -> list[tuple[str, APIClient]]:
    """A's keys of every scope, and A's owner signed in (a session user, not a key)."""
    clients = []
    for scopes in SCOPE_SETS:
        client = APIClient()
        client.credentials(HTTP_AUTHORIZATION=f"Bearer {a.keys[scopes]}")
        clients.append(("key:" + "+".join(scopes), client))
    session = APIClient()
    session.force_login(a.users[Membership.Role.OWNER])
    clients.append(("session:owner", session))
    return clients


def test_it_knows_an_object_of_b_for_every_object_url() -> None:
    unknown = [path for path, kind in object_paths() if not kind]
    assert unknown == [], f"add these to API_OBJECTS and to tests/security/world.py: {unknown}"
    pk_routes = [p.name for p in portal_urlpatterns if isinstance(p, URLPattern) and "<int:pk>" in str(p.pattern)]
    assert sorted(set(pk_routes) - set(PORTAL_OBJECTS)) == []


def test_it_refuses_tenant_a_every_object_of_tenant_b(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    b.objects["membership"] = Membership.objects.get(user=b.users[Membership.Role.VIEWER])
    clients = credentials(a)
    body = hostile_body(b)
    before = database_snapshot()
    attempts, leaks = 0, []
    for template, kind in object_paths():
        real = re.sub(r"\{\w+\}", str(b.objects[kind].pk), template, count=1)
        missing = re.sub(r"\{\w+\}", "987654321", template, count=1)
        for label, client in clients:
            for method in METHODS:
                response = client.generic(method, real, data=_json(body), content_type="application/json")
                baseline = client.generic(method, missing, data=_json(body), content_type="application/json")
                attempts += 1
                if response.status_code < 300 or response.status_code != baseline.status_code:
                    leaks.append(f"{label} {method} {real}: {response.status_code} (missing object: "
                                 f"{baseline.status_code})")
    print(f"object-level authorization: {attempts} attempts by tenant A on tenant B's objects, {len(leaks)} succeeded")
    assert leaks == []
    assert attempts >= len(object_paths()) * len(clients) * len(METHODS) > 1000
    assert snapshot_diff(before, database_snapshot()) == []


def test_it_shows_and_creates_nothing_of_b_through_collections(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    collections = [(path, methods) for path, methods in api_paths().items() if "{" not in path]
    body = hostile_body(b)
    filters = {"organisation": b.organisation.pk, "product": b.objects["product"].pk, "group": b.group.pk,
               "api_key": b.objects["api_key"].pk, "deployment": b.objects["deployment"].pk}
    b_markers = [b.name, *(key.split(".")[0] for key in b.keys.values())]
    before = database_snapshot()
    attempts, leaks = 0, []
    for label, client in credentials(a):
        for path, methods in collections:
            for query in ({}, filters):
                if "GET" in methods:
                    attempts += 1
                    response = client.get(path, query)
                    text = response.content.decode(errors="replace")
                    if any(marker in text for marker in b_markers):
                        leaks.append(f"{label} GET {path} {query}: B's data in the answer")
            if "POST" in methods:
                attempts += 1
                response = client.post(path, body, format="json")
                if response.status_code < 300:
                    leaks.append(f"{label} POST {path}: {response.status_code} {response.content[:200]!r}")
    print(f"collections: {attempts} attempts by tenant A to read or create B's data, {len(leaks)} succeeded")
    assert leaks == []
    assert snapshot_diff(before, database_snapshot()) == []


def _json(body: dict[str, Any]) -> str:
    import json

    return json.dumps(body)


# --- mass assignment ----------------------------------------------------------------------------------------

FORBIDDEN_FIELDS = {
    "id": 424242, "created_at": "2001-01-01T00:00:00Z", "updated_at": "2001-01-01T00:00:00Z",
    "created_by": "mallory", "accepted_by": "mallory", "recorded_by": "mallory", "declared_by": "mallory",
    "accepted_at": "2001-01-01T00:00:00Z", "key_hash": "0" * 64, "prefix": "crl_00000000", "key": "crl_0.0",
    "secret": "whsec_mallory", "secret_salt": "mallory", "secret_prefix": "whsec_mall", "revoked_at": None,
    "revoked_by": "", "last_used_at": "2001-01-01T00:00:00Z", "state": "ready", "state_reason": "mallory",
    "deleted": False, "crash_count": 0, "licence_version_id": 1, "is_staff": True, "is_active": True,
    "max_gpus": 9999, "max_cpu_replicas": 9999, "max_tokens": 10**9, "max_n": 999, "status": "active",
    "replica_set": [{"endpoint": "http://169.254.169.254/", "key_salt": "x"}],
}


def writable_operations(a: Tenant) -> list[tuple[str, str]]:
    ops = []
    for path, methods in api_paths().items():
        for method in methods:
            if method in ("POST", "PUT", "PATCH") and not path.startswith("/api/v1/pool/"):  # pool: staff only
                ops.append((method, path))
    return ops


def test_it_ignores_or_refuses_fields_a_tenant_must_not_set(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {a.admin_key}")
    own = {**hostile_body(a), **FORBIDDEN_FIELDS, "product": a.objects["product"].pk, "name": "mass assignment",
           "served_model_name": "mass-assignment", "month": "2026-01-01"}
    bodies = [own, {**own, "organisation": b.organisation.pk, "group": b.group.pk}]
    guarded = {
        "A's organisation": lambda: Organisation.objects.filter(pk=a.organisation.pk).values_list("status", "group"),
        "A's quota": lambda: list(GpuQuota.objects.filter(organisation=a.organisation).values()),
        "A's gateway limits": lambda: list(GatewayLimit.objects.filter(organisation=a.organisation).values()),
        "grants": lambda: MetaGrant.objects.count(),
        "keys": lambda: list(ApiKey.objects.exclude(name="mass assignment").values_list("pk", "key_hash", "scopes")),
    }
    values_before = {name: list(read()) if not isinstance(read(), int) else read() for name, read in guarded.items()}
    b_before = database_snapshot()
    findings, attempts, accepted = [], 0, 0
    for method, template, body in [(m, t, body) for m, t in writable_operations(a) for body in bodies]:
        kind = API_OBJECTS.get(template.split("/")[3], "")
        path = re.sub(r"\{\w+\}", str(a.objects[kind].pk), template, count=1) if "{" in template else template
        attempts += 1
        response = client.generic(method, path, data=_json(body), content_type="application/json")
        if response.status_code >= 500:
            findings.append(f"{method} {path}: {response.status_code}")
            continue
        if response.status_code >= 300 or not response.content:
            continue
        accepted += 1
        data = response.json()
        for field in ("id", "created_at", "created_by", "accepted_by", "recorded_by", "declared_by", "state_reason"):
            if field in data and data[field] == FORBIDDEN_FIELDS[field]:
                findings.append(f"{method} {path}: {field} taken from the request")
        if data.get("organisation") not in (None, a.organisation.pk):
            findings.append(f"{method} {path}: organisation {data.get('organisation')}")
        if data.get("group") not in (None, a.group.pk):
            findings.append(f"{method} {path}: group {data.get('group')}")
    values_after = {name: list(read()) if not isinstance(read(), int) else read() for name, read in guarded.items()}
    for name in guarded:
        if values_before[name] != values_after[name]:
            findings.append(f"{name} changed")
    b_changes = [line for line in snapshot_diff(b_before, database_snapshot()) if b.name in line]
    print(f"mass assignment: {attempts} writes with {len(FORBIDDEN_FIELDS)}-{len(FORBIDDEN_FIELDS) + 2} forbidden "
          f"fields each, {accepted} accepted (the fields ignored), {len(findings)} findings")
    assert findings == [] and b_changes == []
    assert attempts >= 30 and accepted >= 8  # writes that went through, so the fields were really ignored


def test_it_lets_no_key_grant_scopes_it_lacks(tenants: tuple[Tenant, Tenant]) -> None:
    a, _ = tenants
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {a.keys[(Scope.ADMIN,)]}")
    response = client.post("/api/v1/keys/", {"name": "escalate", "scopes": Scope.values}, format="json")
    assert response.status_code == 403
    assert not ApiKey.objects.filter(name="escalate").exists()


# --- the portal ---------------------------------------------------------------------------------------------


def portal_urls(b: Tenant) -> list[str]:
    urls = []
    for pattern in portal_urlpatterns:
        route = str(pattern.pattern)
        if "<int:pk>" in route:
            route = route.replace("<int:admin_pk>", str(b.objects["group_admin"].pk))
            route = route.replace("<int:replica_pk>", str(b.objects["replica"].pk))
            urls.append("/" + route.replace("<int:pk>", str(b.objects[PORTAL_OBJECTS[pattern.name]].pk)))
        elif pattern.name not in ("logout", "login"):
            urls.append("/" + route)
    return urls


def portal_form(b: Tenant) -> dict[str, Any]:
    body = {k: v for k, v in hostile_body(b).items() if not isinstance(v, list)}
    return {**body, "role": Membership.Role.OWNER, "replicas": 3, "scopes": Scope.values, "username": "mallory",
            "email": "mallory@example.com", "licence_version": b.objects["product"].licence_version.pk}


def test_it_gives_a_session_of_a_404_on_every_page_of_b(tenants: tuple[Tenant, Tenant]) -> None:
    a, b = tenants
    b.objects["membership"] = Membership.objects.get(user=b.users[Membership.Role.VIEWER])
    client = Client()
    client.force_login(a.users[Membership.Role.OWNER])
    before = database_snapshot()
    attempts, leaks = 0, []
    for url in portal_urls(b):
        if not re.search(r"/\d+/", url):
            continue
        for method in ("get", "post"):
            attempts += 1
            response = getattr(client, method)(url, portal_form(b))
            if response.status_code not in (404, 405):
                leaks.append(f"{method.upper()} {url}: {response.status_code}")
    print(f"portal: {attempts} attempts by a session of A on B's pages, {len(leaks)} not 404")
    assert leaks == [] and attempts >= 2 * len(PORTAL_OBJECTS)
    assert snapshot_diff(before, database_snapshot()) == []


def test_it_lets_a_viewer_change_nothing_in_the_portal(tenants: tuple[Tenant, Tenant]) -> None:
    _, b = tenants
    b.objects["membership"] = Membership.objects.get(user=b.users[Membership.Role.MEMBER])
    client = Client()
    client.force_login(b.users[Membership.Role.VIEWER])
    before = database_snapshot()
    attempts, changes = 0, []
    for url in portal_urls(b):
        attempts += 1
        response = client.post(url, portal_form(b))
        assert response.status_code < 500, url
        diff = snapshot_diff(before, database_snapshot())
        if diff:
            changes.append(f"POST {url}: {response.status_code} {diff}")
            before = database_snapshot()
    print(f"portal: {attempts} POSTs by a viewer of B, {len(changes)} changed something")
    assert changes == [] and attempts >= 25

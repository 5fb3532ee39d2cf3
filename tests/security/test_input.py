"""Input a tenant controls must get a 4xx naming the rule, never a 500 (docs/reliability.md, "Security").

Bodies nested too deeply or of another JSON type than the object every operation takes, lookups their field
cannot hold, query parameters of the wrong type. The operations come from the served schema, so a new one is
covered without a change here.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from django.contrib.auth import get_user_model
from drf_spectacular.generators import SchemaGenerator
from rest_framework.test import APIClient

from config.parsers import TOO_DEEP
from tests.inference.gateway_support import ThreadServer
from tests.security.test_authorization import API_OBJECTS
from tests.security.world import Tenant, build_tenant

pytestmark = pytest.mark.django_db

DEEP = "[" * 1025 + "]" * 1025
DEEP_IN_A_FIELD = '{"name": ' + "[" * 1025 + "]" * 1025 + "}"
NOT_OBJECTS = {"false": "a boolean", "null": "null", "1": "a number", '"x"': "a string", "[]": "an array"}


def operations_with_a_body() -> list[tuple[str, str]]:
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return [(method.upper(), path) for path, item in schema["paths"].items() for method, operation in item.items()
            if "requestBody" in operation]


def clients(tenant: Tenant) -> tuple[APIClient, APIClient]:
    """The tenant's all-scope key, and a Corral staff member signed in (the pool and grants are staff-only)."""
    key = APIClient()
    key.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.admin_key}")
    staff = APIClient()
    staff.force_login(get_user_model().objects.create_user(username="staff", password="x", is_staff=True))
    return key, staff


def url_of(path: str, tenant: Tenant) -> str:
    kind = API_OBJECTS.get(path.removeprefix("/api/v1/").rsplit("/{id}/", 1)[0], "")
    return path.replace("{id}", str(tenant.objects[kind].pk)) if "{id}" in path else path


@pytest.fixture
def tenant() -> Tenant:
    return build_tenant("Alpha")


def test_it_refuses_json_nested_1025_deep_on_every_operation_with_a_400(tenant: Tenant) -> None:
    """Was a 500 (RecursionError in the standard library's parser, after orjson refused the body)."""
    key, staff = clients(tenant)
    answers = {}
    for method, path in operations_with_a_body():
        client = staff if path.startswith(("/api/v1/pool/", "/api/v1/grants/")) else key
        for body in (DEEP, DEEP_IN_A_FIELD):
            response = client.generic(method, url_of(path, tenant), body, content_type="application/json")
            answers[f"{method} {path} {body[:9]}"] = (response.status_code, response.json())
    assert len(answers) >= 2 * 27
    assert {k: a for k, a in answers.items() if a != (400, {"detail": TOO_DEEP})} == {}


@pytest.mark.parametrize("body, says", NOT_OBJECTS.items())
def test_it_refuses_a_body_that_is_not_a_json_object_on_every_operation_with_a_400(tenant: Tenant, body: str,
                                                                                    says: str) -> None:
    """PATCH /webhooks/{id}/ with `false`, `null` or `1` was a 500 (the view iterated over the body)."""
    key, staff = clients(tenant)
    answers = {}
    for method, path in operations_with_a_body():
        client = staff if path.startswith(("/api/v1/pool/", "/api/v1/grants/")) else key
        response = client.generic(method, url_of(path, tenant), body, content_type="application/json")
        answers[f"{method} {path}"] = (response.status_code, response.json())
    expected = (400, {"detail": f"The request body must be a JSON object ({{...}}), not {says}."})
    assert {k: a for k, a in answers.items() if a != expected} == {}


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_refuses_deep_json_on_the_asgi_paths_too(tenant: Tenant) -> None:
    """The ingestion fast path and the gateway parse their bodies themselves, before Django."""
    from config.asgi import application

    headers = {"Authorization": f"Bearer {tenant.admin_key}", "Content-Type": "application/json"}
    activity = f"/api/v1/products/{tenant.objects['product'].pk}/activity"
    skipped_field = '{"day": "2026-12-01", "user_ids": ["a"], "extra": ' + "[" * 1025 + "]" * 1025 + "}"
    with ThreadServer(application) as server:
        for body in (DEEP, DEEP_IN_A_FIELD, skipped_field):
            response = httpx.post(server.url + activity, content=body, headers=headers)
            assert (response.status_code, response.json()) == (400, {"detail": TOO_DEEP}), body[:30]
        response = httpx.post(server.url + activity, content="false", headers=headers)
        assert response.status_code == 400
        assert response.json() == {"detail": "The request body must be a JSON object ({...}), not a boolean."}
        response = httpx.post(f"{server.url}/v1/chat/completions", content=DEEP_IN_A_FIELD, headers=headers)
        assert response.status_code == 400
        assert "recursion depth exceeded" in response.json()["error"]["message"]


# Values no lookup field can hold: NUL, not an integer, beyond a 64-bit column, longer than a slug column.
BAD_LOOKUPS = {"{id}": ["1%00", "a%00b", "1.5", "abc", "99999999999999999999", "-99999999999999999999"],
               "{slug}": ["a%00b", "llama-3.1%00", "a" * 201]}


def test_it_answers_404_to_every_lookup_its_field_cannot_hold(tenant: Tenant, settings: Any) -> None:
    """GET /api/v1/licences/a%00b/ was a 500 on PostgreSQL (DataError: NUL in a text comparison)."""
    settings.DEBUG = False
    key, staff = clients(tenant)
    schema = SchemaGenerator().get_schema(request=None, public=True)
    answers = {}
    for path, item in schema["paths"].items():
        for placeholder, values in BAD_LOOKUPS.items():
            if placeholder not in path:
                continue
            client = staff if path.startswith("/api/v1/pool/") else key
            for method in set(item) & {"get", "put", "patch", "delete", "post"}:
                for value in values:
                    url = path.replace(placeholder, value)
                    response = client.generic(method.upper(), url, "{}", content_type="application/json")
                    answers[f"{method} {url[:60]}"] = (response.status_code, response["Content-Type"])
    assert len(answers) > 300
    assert {k: a for k, a in answers.items() if a != (404, "application/json")} == {}


def test_it_answers_a_lookup_it_cannot_hold_like_a_url_no_route_matches(tenant: Tenant, settings: Any) -> None:
    settings.DEBUG = False
    key, _ = clients(tenant)
    for url in ("/api/v1/licences/a%00b/", "/api/v1/products/abc/", "/api/v1/products/1.5/"):
        assert key.get(url).json() == {"detail": "Not found."}, url
    assert key.get("/api/v1/licences/llama-3.1/").status_code == 200  # a dot is no slug's, but this one's


def query_parameters() -> dict[str, dict[str, dict[str, Any]]]:
    """path -> name -> schema of every query parameter of a GET operation."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    return {path: {p["name"]: p["schema"] for p in item["get"].get("parameters", []) if p["in"] == "query"}
            for path, item in schema["paths"].items() if "get" in item}


def typed(schema: dict[str, Any]) -> bool:
    """Whether the schema allows less than any string."""
    return schema.get("type") != "string" or bool({"format", "enum"} & set(schema))


def companion(name: str, schema: dict[str, Any]) -> str | None:
    """A valid value of a parameter an operation needs besides the one under test (a month's MAU needs its
    month, a daily series its first and last day)."""
    if schema.get("format") == "date":
        return "2026-11-01" if name != "to" else "2026-11-02"
    return "2026-11" if name == "month" else None


def test_it_refuses_a_query_parameter_that_is_not_of_its_schema_type_naming_it(tenant: Tenant) -> None:
    """?page_size=null and ?revoked=null were accepted and ignored: the list came back unfiltered."""
    key, staff = clients(tenant)
    answers = {}
    for path, parameters in query_parameters().items():
        client = staff if path.startswith("/api/v1/pool/") else key
        companions = {n: companion(n, s) for n, s in parameters.items() if companion(n, s) and n != "ending"}
        for name, schema in parameters.items():
            if not typed(schema):
                continue
            for value in ("null", "1.5" if schema.get("type") == "integer" else "x"):
                response = client.get(url_of(path, tenant), companions | {name: value})
                body = response.json() if response["Content-Type"] == "application/json" else {}
                answers[f"{path}?{name}={value}"] = (response.status_code, name in body)
    assert len(answers) > 100
    assert {k: a for k, a in answers.items() if a != (400, True)} == {}


@pytest.mark.parametrize("query, says", [
    ("page_size=null", "A whole number is required."), ("page_size=0", "greater than or equal to 1"),
    ("page_size=501", "less than or equal to 500"), ("page=null", "A whole number is required."),
    ("page=last", "A whole number is required."), ("revoked=null", "Must be true or false."),
])
def test_it_names_the_rule_a_query_parameter_breaks(tenant: Tenant, query: str, says: str) -> None:
    key, _ = clients(tenant)
    response = key.get(f"/api/v1/grants/?{query}")
    name = query.split("=")[0]
    assert response.status_code == 400 and says in response.json()[name][0]


def test_it_still_filters_and_pages_with_well_formed_values(tenant: Tenant) -> None:
    key, _ = clients(tenant)
    assert key.get("/api/v1/grants/?revoked=false&page=1&page_size=500").json()["count"] == 1
    assert key.get("/api/v1/grants/?revoked=True").json()["count"] == 0
    assert key.get("/api/v1/keys/?active=0").json()["count"] == 2  # the revoked and the expired key
    assert key.get("/api/v1/grants/?page=2").status_code == 404  # past the last page, as DRF answers


def request_properties() -> list[tuple[str, str, str, dict[str, Any]]]:
    """(method, path, field, schema) of every field of every JSON request body in the schema."""
    schema = SchemaGenerator().get_schema(request=None, public=True)
    components = schema["components"]["schemas"]
    found = []
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            if "requestBody" not in operation:
                continue
            body = operation["requestBody"]["content"]["application/json"]["schema"]
            for name, field in components[body["$ref"].rsplit("/", 1)[-1]]["properties"].items():
                if {"type", "$ref", "oneOf", "allOf"} & set(field):  # else any JSON value (a node's labels)
                    found.append((method.upper(), path, name, field))
    return found


def test_it_refuses_a_body_field_of_another_json_type_than_the_schema_says(tenant: Tenant) -> None:
    """A declaration's evidence sent as 5, a policy's webhooks_enabled as "yes", a webhook's active as 1 were
    accepted (DRF's fields coerce one scalar into another): the fuzz's "schema-violating request accepted".
    An array where a scalar goes, or the reverse, the serializers refuse in their own words."""
    key, staff = clients(tenant)
    answers = {}
    for method, path, name, field in request_properties():
        client = staff if path.startswith(("/api/v1/pool/", "/api/v1/grants/")) else key
        scalar = field.get("type") in ("string", "integer", "number", "boolean")
        wrong = ("1" if field.get("type") != "string" else 1) if scalar else "1"
        response = client.generic(method, url_of(path, tenant), json.dumps({name: wrong}),
                                  content_type="application/json")
        if response.status_code != 400:
            answers[f"{method} {path} {name}"] = (response.status_code, response.content[:200])
        elif scalar and not response.json().get(name, [""])[0].startswith("Must be"):
            answers[f"{method} {path} {name}"] = response.json()
    assert len(request_properties()) > 150
    assert answers == {}


@pytest.mark.parametrize("method, path, body, says", [
    ("post", "/api/v1/groups/{group}/declarations/", {"month": "2026-01", "mau": 5, "evidence": 5},
     {"evidence": ["Must be a string, not an integer."]}),
    ("patch", "/api/v1/groups/{group}/policy/", {"webhooks_enabled": "yes"},
     {"webhooks_enabled": ["Must be a boolean, not a string."]}),
    ("patch", "/api/v1/groups/{group}/policy/", {"levels": [0.5, "0.6"]},
     {"levels": ["levels[1] must be a number, not a string."]}),
    ("patch", "/api/v1/webhooks/{webhook}/", {"active": 1}, {"active": ["Must be a boolean, not an integer."]}),
    ("post", "/api/v1/products/{product}/activity/", {"day": "2026-12-01", "user_ids": ["a", 1.5]},
     {"user_ids": ["user_ids[1] must be a string or an integer, not a number."]}),
])
def test_it_names_the_field_and_the_type_the_schema_wants(tenant: Tenant, method: str, path: str, body: dict,
                                                           says: dict) -> None:
    key, _ = clients(tenant)
    url = path.format(**{kind: tenant.objects[kind].pk for kind in ("group", "webhook", "product")})
    response = getattr(key, method)(url, json.dumps(body), content_type="application/json")
    assert (response.status_code, response.json()) == (400, says)


def test_it_accepts_the_types_the_schema_says(tenant: Tenant) -> None:
    key, _ = clients(tenant)
    group = tenant.objects["group"].pk
    response = key.patch(f"/api/v1/groups/{group}/policy/", {"webhooks_enabled": False, "levels": [0.5, 1 / 3],
                                                             "grace_days": 3}, format="json")
    assert response.status_code == 200 and response.json()["webhooks_enabled"] is False


@pytest.mark.parametrize("query", ["/api/v1/licences/?released_before=15/01/2026",
                                   "/api/v1/licences/?released_before=2026-1-5",
                                   "/api/v1/usage/?day_from=20261101",
                                   "/api/v1/alerts/?month=2026-11",
                                   "/api/v1/acceptances/?accepted_after=2026-12-05T10:00:00",
                                   "/api/v1/acceptances/?accepted_after=2026-12-05 10:00:00Z"])
def test_it_reads_dates_only_as_the_schema_writes_them(tenant: Tenant, query: str) -> None:
    """Django's date fields also read 15/01/2026 and a time without an offset: the schema's formats are
    ISO 8601's YYYY-MM-DD and RFC 3339's date-time."""
    key, _ = clients(tenant)
    response = key.get(query)
    assert response.status_code == 400 and query.split("?")[1].split("=")[0] in response.json()


@pytest.mark.parametrize("value, status", [("0147-01-16T18:35:19.798540-21:45", 200),
                                           ("2026-12-05T10:00:00+23:59", 200),
                                           ("0001-01-01T00:00:00+01:00", 400), ("9999-12-31T23:59:59-01:00", 400)])
def test_it_reads_any_rfc_3339_offset_in_a_date_time(tenant: Tenant, value: str, status: int) -> None:
    """An offset of -21:45 (RFC 3339 allows up to 23:59) was a 500 on PostgreSQL, which allows up to 15:59:
    the fuzz's one server error. A moment outside years 1 to 9999 once in UTC is a 400."""
    key, _ = clients(tenant)
    response = key.get("/api/v1/acceptances/", {"accepted_after": value})
    assert response.status_code == status, response.content
    if status == 400:
        assert response.json() == {"accepted_after": ["Enter a date and time between the years 1 and 9999."]}


def test_it_still_filters_by_well_formed_dates(tenant: Tenant) -> None:
    key, _ = clients(tenant)
    assert key.get("/api/v1/licences/?released_before=2023-07-19").json()["count"] == 1  # Llama 2
    assert key.get("/api/v1/acceptances/?accepted_after=2000-01-01T00:00:00Z").json()["count"] == 1
    assert key.get("/api/v1/acceptances/?accepted_after=2999-01-01T00:00:00%2B01:00").json()["count"] == 0


def test_it_refuses_an_empty_value_for_a_typed_query_parameter(tenant: Tenant) -> None:
    """?released_before= was read as no filter, ?ending= as no window: an empty value is no date."""
    key, staff = clients(tenant)
    answers = {}
    for path, parameters in query_parameters().items():
        client = staff if path.startswith("/api/v1/pool/") else key
        companions = {n: companion(n, s) for n, s in parameters.items() if companion(n, s) and n != "ending"}
        for name, schema in parameters.items():
            if typed(schema):
                response = client.get(url_of(path, tenant), companions | {name: ""})
                answers[f"{path}?{name}="] = (response.status_code, name in response.json())
    assert len(answers) > 50
    assert {k: a for k, a in answers.items() if a != (400, True)} == {}
    assert key.get("/api/v1/products/?name=").json()["count"] == 1  # an empty string is a string


@pytest.mark.parametrize("value", ["20261101", "2026-W48-1", "2026-11-1"])
def test_it_reads_a_metering_day_only_as_yyyy_mm_dd(tenant: Tenant, value: str) -> None:
    key, _ = clients(tenant)
    response = key.get(f"/api/v1/groups/{tenant.objects['group'].pk}/mau/", {"ending": value})
    assert response.status_code == 400 and response.json() == {"ending": [f"{value!r} is not a day as YYYY-MM-DD."]}


@pytest.mark.parametrize("content_type", ["multipart/form-data; boundary=x", "application/x-www-form-urlencoded"])
def test_it_takes_json_bodies_only_as_the_schema_says(tenant: Tenant, content_type: str) -> None:
    """A form has no types ("0" is a boolean and a number alike): the fuzz's webhooks_enabled=0 and active=0
    in multipart bodies were read as false. Forms are refused; the schema lists JSON alone."""
    key, _ = clients(tenant)
    multipart = '--x\r\nContent-Disposition: form-data; name="active"\r\n\r\n0\r\n--x--\r\n'
    body = multipart if "multipart" in content_type else "active=0"
    response = key.patch(f"/api/v1/webhooks/{tenant.objects['webhook'].pk}/", body, content_type=content_type)
    assert response.status_code == 415
    schema = SchemaGenerator().get_schema(request=None, public=True)
    assert {media for item in schema["paths"].values() for operation in item.values()
            for media in operation.get("requestBody", {}).get("content", {})} == {"application/json"}

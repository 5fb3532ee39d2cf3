"""Security headers on the API and the portal under production's header settings (OWASP API8).
`manage.py check --deploy --fail-level WARNING` under production settings runs in CI (.ci/run)."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import Client

from tests.factories import MembershipFactory, OrganisationFactory

pytestmark = pytest.mark.django_db


@pytest.fixture
def production_headers(settings: Any) -> None:
    settings.SECURE_HSTS_SECONDS = 31_536_000
    settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = True
    settings.SECURE_SSL_REDIRECT = False  # the requests below are already https


def test_it_sends_the_security_headers_on_api_and_portal(production_headers: None, client_for: Any) -> None:
    organisation = OrganisationFactory()
    api = client_for(organisation)
    member = MembershipFactory(organisation=organisation, role="owner").user
    portal = Client()
    portal.force_login(member)
    responses = {
        "api list": api.get("/api/v1/products/", secure=True),
        "api new key": api.post("/api/v1/keys/", {"name": "k", "scopes": ["read"]}, format="json", secure=True),
        "api 401": Client().get("/api/v1/products/", secure=True),
        "portal page": portal.get("/", secure=True),
        "portal login": Client().get("/login/", secure=True),
    }
    for name, response in responses.items():
        assert response.status_code < 500, name
        assert response["Strict-Transport-Security"].startswith("max-age=31536000"), name
        assert response["X-Content-Type-Options"] == "nosniff", name
        assert response["Referrer-Policy"] == "same-origin", name
        assert response["X-Frame-Options"] == "DENY", name
    for name in ("api list", "api new key", "api 401"):
        assert responses[name]["Cache-Control"] == "no-store", name
    assert "key" in responses["api new key"].json()  # the secret this header keeps out of caches
    for name in ("portal page", "portal login"):
        policy = responses[name]["Content-Security-Policy"]
        assert "frame-ancestors 'none'" in policy and "script-src 'self'" in policy, name

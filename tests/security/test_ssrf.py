"""Server-side request forgery (OWASP API7): webhook URLs and deployment model sources.

A redirect at delivery time is never followed (tests/governance/test_webhooks.py
test_it_does_not_follow_a_redirect), and the URL is vetted again before every attempt.
"""

from __future__ import annotations

from typing import Any

import pytest
from django.core.exceptions import ValidationError

from governance.webhooks import services as webhook_services
from inference.services import validate_source

pytestmark = pytest.mark.django_db

LITERALS = [
    "127.0.0.1", "127.1", "127.0.0.1.", "0.0.0.0", "0", "2130706433", "0x7f000001", "0x7f.0.0.1", "017700000001",
    "0177.0.0.1", "[::1]", "[::]", "[::ffff:127.0.0.1]", "[::ffff:7f00:1]", "[0:0:0:0:0:ffff:a9fe:a9fe]",
    "169.254.169.254", "169.254.1.1", "[fe80::1]", "10.0.0.1", "10.255.255.254", "172.16.0.1", "172.31.255.255",
    "192.168.1.1", "[fc00::1]", "[fd12:3456::1]", "100.64.0.1", "[64:ff9b::a00:1]", "[2002:a00:1::]",
    "[::10.0.0.1]", "224.0.0.1", "255.255.255.255", "localhost", "api.localhost", "metadata.google.internal",
    "100.100.100.200", "[fd00:ec2::254]",
]
RESOLVED = ["127.0.0.1", "10.1.2.3", "172.20.0.5", "192.168.0.10", "169.254.169.254", "::1", "fe80::1%eth0",
            "fc00::5", "::ffff:10.0.0.1", "100.64.1.1"]


def create(client: Any, url: str) -> Any:
    return client.post("/api/v1/webhooks/", {"url": url}, format="json")


@pytest.mark.parametrize("host", LITERALS)
def test_it_refuses_a_webhook_to_a_non_public_address(client_for: Any, owner_org: Any, settings: Any,
                                                      host: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    response = create(client_for(owner_org), f"https://{host}/hook")
    assert response.status_code == 400 and "url" in response.json(), response.content


@pytest.mark.parametrize("address", RESOLVED)
def test_it_refuses_a_webhook_host_that_resolves_to_a_non_public_address(client_for: Any, owner_org: Any,
                                                                        settings: Any, monkeypatch: Any,
                                                                        address: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    family = 10 if ":" in address else 2
    public = (2, 1, 6, "", ("93.184.216.34", 443))  # one bad address among good ones is enough to refuse
    monkeypatch.setattr(webhook_services, "resolver",
                        lambda host, port, **kw: [public, (family, 1, 6, "", (address, port))])
    response = create(client_for(owner_org), "https://hooks.example.com/in")
    assert response.status_code == 400 and "url" in response.json(), response.content


@pytest.mark.parametrize("url", ["http://hooks.example.com/in", "ftp://hooks.example.com/", "file:///etc/passwd",
                                 "gopher://hooks.example.com/", "https://user:pw@hooks.example.com/",
                                 "https://hooks.example.com@169.254.169.254/"])
def test_it_refuses_other_schemes_and_credentials(client_for: Any, owner_org: Any, settings: Any, url: str) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False
    assert create(client_for(owner_org), url).status_code == 400


def test_it_accepts_a_public_https_webhook(client_for: Any, owner_org: Any, settings: Any) -> None:
    settings.WEBHOOK_ALLOW_PRIVATE_NETWORKS = False  # the resolver of tests/security/conftest.py: public
    assert create(client_for(owner_org), "https://hooks.example.com/in").status_code == 201


@pytest.mark.parametrize("source", [
    "http://127.0.0.1:8000/model", "https://169.254.169.254/latest", "s3://bucket/model", "gs://bucket/model",
    "hf://meta-llama/Llama-3.1-8B", "file:///etc/passwd", "//10.0.0.1/share", "127.0.0.1:8000/model",
    "[::1]/model", "../../etc", "/etc", "/tmp/../etc", "~/.ssh", "meta-llama/../../etc", "owner/name?x=1",
    "tests/security",  # exists relative to the working directory: vLLM would load it from disk
])
def test_it_refuses_a_model_source_that_is_not_a_repo_id_or_an_allowed_path(source: str) -> None:
    with pytest.raises(ValidationError):
        validate_source("model_source", source)


def test_it_accepts_a_hugging_face_repo_id_as_model_source() -> None:
    assert validate_source("model_source", "meta-llama/Llama-3.1-8B-Instruct") == "meta-llama/Llama-3.1-8B-Instruct"

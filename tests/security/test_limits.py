"""Resource limits (OWASP API4). Gateway caps on max_tokens, n, body size and concurrency are tested in
tests/inference/test_gateway.py; activity batch and sketch limits in tests/governance/test_metering_api.py."""

from __future__ import annotations

import json
import socket
import time
from typing import Any

import httpx
import pytest
from rest_framework.test import APIClient

from tests.inference.gateway_support import ThreadServer
from tests.security.test_authorization import API_OBJECTS, _json, api_paths
from tests.security.world import build_tenant

pytestmark = pytest.mark.django_db
BODILESS = ("/revoke/", "/acknowledge/", "/evaluate/", "/rotate-secret/", "/test/", "/withdraw/")


def test_it_answers_413_to_an_oversized_body_on_every_write(settings: Any) -> None:
    settings.DATA_UPLOAD_MAX_MEMORY_SIZE = 64 * 1024
    tenant = build_tenant("Alpha")
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Bearer {tenant.admin_key}")
    body = _json({"name": "x" * (settings.DATA_UPLOAD_MAX_MEMORY_SIZE + 1), "user_ids": ["u"]})
    statuses = {}
    for path, methods in api_paths().items():
        kind = API_OBJECTS.get(path.split("/")[3], "product")
        url = path.replace("{id}", str(tenant.objects[kind].pk)) if "{id}" in path else path
        for method in set(methods) & {"POST", "PUT", "PATCH"}:
            if path.startswith("/api/v1/pool/") or path.endswith(BODILESS):
                continue  # staff only (403 before the body is read), or actions that take no body
            statuses[f"{method} {url}"] = client.generic(method, url, data=body,
                                                         content_type="application/json").status_code
    print(f"oversized bodies: {len(statuses)} writes, {sum(s == 413 for s in statuses.values())} answered 413")
    assert len(statuses) >= 15
    assert {k: s for k, s in statuses.items() if s not in (413, 403)} == {}  # 403: grants are staff-only


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_it_keeps_answering_while_slow_clients_dribble_their_requests() -> None:
    from config.asgi import application

    with ThreadServer(application) as server:
        slow = []
        for _ in range(50):  # slowloris: open connections that send a request one byte at a time, never finishing
            sock = socket.create_connection(("127.0.0.1", server.port))
            sock.sendall(b"POST /api/v1/products/ HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 100000\r\n\r\n{")
            slow.append(sock)
        for _ in range(3):
            for sock in slow:
                sock.sendall(b" ")
            time.sleep(0.1)
        started = time.monotonic()
        response = httpx.get(f"{server.url}/healthz", timeout=5)
        assert response.status_code in (200, 503) and time.monotonic() - started < 2
        body = json.dumps({"model": "x", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 10**9,
                           "n": 10**6})
        assert httpx.post(f"{server.url}/v1/chat/completions", content=body, timeout=5).status_code == 401
        for sock in slow:
            sock.close()
        assert httpx.get(f"{server.url}/healthz", timeout=5).status_code in (200, 503)

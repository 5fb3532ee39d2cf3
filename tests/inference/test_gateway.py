"""The gateway through the official OpenAI SDK: real uvicorn servers (the gateway and a fake vLLM), the
real database, and Redis when the run has it (REDIS_URL), else the in-process limiter."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
import uuid

import httpx
import openai
import pytest
from django.utils import timezone

from access.keys import api_key_revoke
from access.models import ApiKey, Organisation
from governance.compliance.services import declared_figure_record, group_evaluate
from governance.metering.selectors import dau
from inference.gateway.app import Gateway
from inference.models import Deployment, GatewayLimit, Replica, TokenUsage, replica_key
from licensing.models import BaseModel
from licensing.services import grant_record
from tests.factories import ProductFactory, licence, make_key
from tests.inference.fake_openai import PROMPT_TOKENS, FakeOpenAI
from tests.inference.gateway_support import ThreadServer, ready_deployment

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture
def gw_settings(settings):
    settings.GATEWAY_CACHE_SECONDS = 0.3
    settings.GATEWAY_USAGE_FLUSH_SECONDS = 3600  # tests flush when they want to look
    settings.GATEWAY_REDIS_PREFIX = f"corral-test:{uuid.uuid4().hex[:8]}"
    return settings


@pytest.fixture
def upstream():
    fake = FakeOpenAI()
    with ThreadServer(fake) as server:
        fake.url = server.url
        yield fake


@pytest.fixture
def gateway(gw_settings):
    app = Gateway()
    with ThreadServer(app) as server:
        server.app = app
        yield server


@pytest.fixture
def tenant(owner_org, upstream):
    deployment = ready_deployment(owner_org, upstream.url)
    upstream.keys.update(replica_key(r.pk, r.key_salt) for r in deployment.replica_set.all())
    key = make_key(owner_org, ["inference"])
    return owner_org, deployment, key


def sdk(gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=20)


def flush(gateway) -> None:
    """Write the gateway's usage once every request it relayed is metered: a client has its answer a moment
    before the gateway records it."""
    deadline = time.monotonic() + 5
    while gateway.app.in_flight:
        assert time.monotonic() < deadline, "requests still in flight"
        time.sleep(0.01)
    gateway.app.meter.flush()


def flushed_usage(gateway, deployment) -> TokenUsage:
    flush(gateway)
    return TokenUsage.objects.get(deployment=deployment)


def test_chat_completion_is_relayed_metered_and_counted_as_a_user(gateway, tenant, upstream) -> None:
    org, deployment, key = tenant
    answer = sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=5,
                                                       user="end-user-1")
    assert answer.choices[0].message.content.strip() == "tok tok tok tok tok"
    assert (answer.usage.prompt_tokens, answer.usage.completion_tokens) == (PROMPT_TOKENS, 5)
    assert upstream.requests[-1]["max_tokens"] == 5 and upstream.requests[-1]["user"] == "end-user-1"
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.requests_without_user) == (
        1, PROMPT_TOKENS, 5, 0)
    assert usage.organisation_id == org.pk and usage.day == timezone.now().date()
    count = dau(scope=deployment.product, day=timezone.now().date())
    assert count.estimate.estimate == 1 and count.sources["gateway_flushes"] == 1
    assert ApiKey.objects.get(pk=usage.api_key_id).last_used_at is not None


def test_usage_from_many_requests_adds_up_across_flushes(gateway, tenant) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    for i in range(6):
        client.completions.create(model="chat-small", prompt="Once", max_tokens=3, user=f"u{i % 3}")
        if i == 2:
            flush(gateway)
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens) == (6, 6 * PROMPT_TOKENS, 18)


def test_requests_without_a_user_take_the_header_or_the_key_default_or_are_counted_as_unattributed(
        gateway, tenant, owner_org) -> None:
    _, deployment, key = tenant
    sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=2,
                                              extra_headers={"X-Corral-User": "from-header"})
    default_key = make_key(owner_org, ["inference"])
    ApiKey.objects.filter(prefix=default_key.split(".")[0]).update(default_user="service-account")
    sdk(gateway, default_key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=2)
    sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=2)
    flush(gateway)
    rows = TokenUsage.objects.filter(deployment=deployment)
    assert sum(r.requests for r in rows) == 3 and sum(r.requests_without_user for r in rows) == 1
    assert dau(scope=deployment.product, day=timezone.now().date()).estimate.estimate == 2


def test_streaming_passes_chunks_and_hides_usage_unless_asked(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    chunks = list(client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=4, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "tok " * 4
    assert all(c.usage is None for c in chunks)
    sent = upstream.requests[-1]["stream_options"]
    assert sent == {"include_usage": True, "continuous_usage_stats": True}  # vLLM is always asked

    chunks = list(client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=4, stream=True,
                                                 stream_options={"include_usage": True}))
    assert [c.usage is not None for c in chunks] == [False] * 4 + [True]
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 4
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.completion_tokens, usage.prompt_tokens) == (2, 8, 2 * PROMPT_TOKENS)


def test_streaming_completions_relay_the_first_chunk_before_the_last_is_made(gateway, tenant) -> None:
    _, _, key = tenant
    started = time.monotonic()
    stream = sdk(gateway, key).completions.create(model="chat-small", prompt="x", max_tokens=5, stream=True,
                                                  extra_body={"fake": {"tokens": 5, "delay": 0.3}})
    first = next(iter(stream))
    first_at = time.monotonic() - started
    rest = list(stream)
    assert first.choices[0].text == "tok " and len(rest) == 4
    assert first_at < 0.9, f"the first chunk took {first_at:.2f} s: the relay buffered the stream"


def test_a_disconnecting_streaming_client_cancels_upstream_and_is_still_billed(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    with httpx.stream("POST", f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                      json={"model": "chat-small", "messages": MESSAGES, "max_tokens": 1000, "stream": True,
                            "fake": {"tokens": 1000, "delay": 0.02}}, timeout=10) as response:
        lines = response.iter_lines()
        seen = [next(lines) for _ in range(10)]
    assert sum(1 for line in seen if line.startswith("data:")) >= 5
    deadline = time.monotonic() + 5
    while upstream.cancelled == 0 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert upstream.cancelled == 1  # vLLM stopped generating
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        flush(gateway)
        usage = TokenUsage.objects.filter(deployment=deployment).first()
        if usage is not None:
            break
        time.sleep(0.05)
    assert usage.cancelled_requests == 1 and usage.prompt_tokens == PROMPT_TOKENS
    assert 5 <= usage.completion_tokens < 1000


def test_models_lists_only_the_callers_models(gateway, tenant, outsider_org, upstream, owner_org) -> None:
    _, deployment, key = tenant
    ready_deployment(outsider_org, upstream.url, name="their-model")
    other_product = ProductFactory(organisation=owner_org, licence_version=licence("llama-3.1"))
    ready_deployment(owner_org, upstream.url, name="other-product-model", product=other_product, accept=False)
    listed = sdk(gateway, key).models.list()
    assert sorted(m.id for m in listed.data) == ["chat-small", "other-product-model"]
    bound = make_key(owner_org, ["inference"], product=deployment.product)
    assert [m.id for m in sdk(gateway, bound).models.list().data] == ["chat-small"]
    assert sdk(gateway, key).models.retrieve("chat-small").id == "chat-small"
    with pytest.raises(openai.NotFoundError):
        sdk(gateway, key).models.retrieve("their-model")
    with pytest.raises(openai.NotFoundError) as bound_error:
        sdk(gateway, bound).chat.completions.create(model="other-product-model", messages=MESSAGES)
    assert bound_error.value.code == "model_not_found"


def test_another_tenants_model_is_indistinguishable_from_a_missing_one(gateway, tenant, outsider_org,
                                                                       upstream) -> None:
    _, _, key = tenant
    ready_deployment(outsider_org, upstream.url, name="their-model")
    bodies = []
    for model in ("their-model", "no-such-model"):
        response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                              json={"model": model, "messages": MESSAGES})
        assert response.status_code == 404
        bodies.append(response.text.replace(model, "M"))
    assert bodies[0] == bodies[1]
    assert len(upstream.requests) == 0


@pytest.mark.parametrize("path", ["/v1/tokenize", "/v1/pooling", "/v1/score", "/v1/load_lora_adapter",
                                  "/v1/collective_rpc", "/v1/sleep", "/v1/pause", "/v1/metrics", "/v1/embeddings",
                                  "/v1/invocations", "/v1/audio/transcriptions", "/v1/responses/resp_1",
                                  "/v1/responses/resp_1/cancel", "/v1"])
def test_nothing_else_of_vllm_is_reachable(gateway, tenant, upstream, path) -> None:
    _, _, key = tenant
    response = httpx.post(f"{gateway.url}{path}", headers={"Authorization": f"Bearer {key}"}, json={})
    assert response.status_code == 404
    assert response.json()["error"]["code"] == "unknown_url"
    assert upstream.paths == []


def test_bad_credentials_are_401_and_a_key_without_the_inference_scope_is_403(gateway, tenant, owner_org) -> None:
    _, _, key = tenant
    for bad in ("sk-not-ours", key[:-2] + "xx", "crl_00000000.nothing"):
        with pytest.raises(openai.AuthenticationError) as error:
            sdk(gateway, bad).chat.completions.create(model="chat-small", messages=MESSAGES)
        assert error.value.code == "invalid_api_key"
    assert httpx.get(f"{gateway.url}/v1/models").status_code == 401
    read_only = make_key(owner_org, ["read", "ingest"])
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(gateway, read_only).chat.completions.create(model="chat-small", messages=MESSAGES)
    assert error.value.code == "insufficient_scope"


def test_a_revoked_key_stops_working_within_the_cache_time(gateway, tenant) -> None:
    _, _, key = tenant
    client = sdk(gateway, key)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    api_key_revoke(api_key=ApiKey.objects.get(prefix=key.split(".")[0]), revoked_by="test")
    time.sleep(0.4)
    with pytest.raises(openai.AuthenticationError, match="revoked"):
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)


@pytest.mark.parametrize(("body", "status", "code"), [
    ({"model": "chat-small", "messages": MESSAGES, "max_tokens": 100_000}, 422, "max_tokens_too_large"),
    ({"model": "chat-small", "messages": MESSAGES, "max_completion_tokens": 100_000}, 422, "max_tokens_too_large"),
    ({"model": "chat-small", "messages": MESSAGES, "n": 50}, 422, "n_too_large"),
    ({"model": "chat-small", "messages": MESSAGES, "max_tokens": "5"}, 400, "invalid_type"),
    ({"model": "chat-small", "messages": MESSAGES, "n": 0}, 400, "invalid_type"),
    ({"model": "chat-small", "messages": MESSAGES, "stream": "yes"}, 400, "invalid_type"),
    ({"model": "chat-small", "messages": MESSAGES, "user": 7}, 400, "invalid_type"),
    ({"model": "chat-small", "messages": MESSAGES, "safety_identifier": ["a"]}, 400, "invalid_type"),
    ({"messages": MESSAGES}, 400, "missing_model"),
    ([1, 2], 400, None),
])
def test_invalid_requests_are_refused_in_openais_shape(gateway, tenant, upstream, body, status, code) -> None:
    _, _, key = tenant
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json=body)
    assert response.status_code == status
    error = response.json()["error"]
    assert set(error) == {"message", "type", "param", "code"} and error["code"] == code and error["message"]
    assert upstream.requests == []


def test_malformed_json_and_oversized_bodies_are_refused(gateway, tenant, gw_settings) -> None:
    _, _, key = tenant
    headers = {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers=headers, content=b'{"model": ')
    assert response.status_code == 400 and "not valid JSON" in response.json()["error"]["message"]
    huge = b'{"model": "chat-small", "prompt": "' + b"a" * 1_100_000 + b'"}'
    assert httpx.post(f"{gateway.url}/v1/completions", headers=headers, content=huge).status_code == 413

    def chunked():
        yield b'{"model": "chat-small", "prompt": "'
        for _ in range(20):
            yield b"a" * 100_000
        yield b'"}'

    response = httpx.post(f"{gateway.url}/v1/completions", headers=headers, content=chunked())
    assert response.status_code == 413 and response.json()["error"]["code"] == "request_too_large"
    with pytest.raises(openai.APIStatusError) as error:
        sdk(gateway, key).completions.create(model="chat-small", prompt="a" * 1_100_000)
    assert error.value.status_code == 413


def test_the_licence_gate_blocks_with_the_reason(gateway, owner_org, upstream) -> None:
    ready_deployment(owner_org, upstream.url, accept=False)
    key = make_key(owner_org, ["inference"])
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES)
    assert error.value.code == "licence_not_accepted" and "Llama 3.1" in error.value.message
    assert upstream.requests == []


def test_a_suspended_organisation_is_blocked(gateway, tenant) -> None:
    org, _, key = tenant
    type(org).objects.filter(pk=org.pk).update(status="suspended")
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES)
    assert error.value.code == "organisation_suspended"


def test_a_group_over_the_threshold_is_blocked_within_5_seconds_and_served_again_after_a_grant(
        gateway, tenant, gw_settings) -> None:
    gateway.app.directory.ttl = 2.0  # the production default
    org, deployment, key = tenant
    client = sdk(gateway, key)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    version = deployment.licence_version
    declared_figure_record(group=org.group, month=version.test_month(), mau=800_000_000, evidence="filing",
                           declared_by="test")
    group_evaluate(group=org.group)
    changed = time.monotonic()
    while True:
        try:
            client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
        except openai.PermissionDeniedError as error:
            blocked = error
            break
        assert time.monotonic() - changed < 5, "the decision did not take effect within 5 seconds"
        time.sleep(0.1)
    assert blocked.code == "over_threshold" and "700,000,000" in blocked.message
    grant_record(group=org.group, licence_versions=[version], reference="META-1", granted_on=dt.date.today(),
                 valid_from=dt.date.today() - dt.timedelta(days=1), recorded_by="test")  # evaluates on commit
    changed = time.monotonic()
    while True:
        try:
            client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
            break
        except openai.PermissionDeniedError:
            assert time.monotonic() - changed < 5
            time.sleep(0.1)


def test_a_multimodal_model_is_refused_once_the_company_is_in_the_eu_within_the_cache_time(
        gateway, owner_org, upstream, monkeypatch) -> None:
    """Llama 3.2 AUP: "With respect to any multimodal models included in Llama 3.2, the rights granted under Section
    1(a) of the Llama 3.2 Community License Agreement are not being granted to you if you are ... a company with a
    principal place of business in, the European Union."

    Acme serves Llama-3.2-11B-Vision-Instruct (multimodal) and Llama-3.2-1B-Instruct (text only). Once its
    domicile is recorded in the EU (here straight in the database, so the gateway's own check is what answers,
    not the drain), every request for the vision model is a 403 within GATEWAY_CACHE_SECONDS (the key's cached
    entry carries the domicile); the text model is still served."""
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    gateway.app.directory.ttl = 2.0  # the production default
    vision = ready_deployment(owner_org, upstream.url, name="vision", slug="llama-3.2")
    text = ready_deployment(owner_org, upstream.url, name="text", slug="llama-3.2", accept=False,
                            product=vision.product)
    Deployment.objects.filter(pk=vision.pk).update(
        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct"))
    Deployment.objects.filter(pk=text.pk).update(
        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-1B-Instruct"))
    upstream.keys.update(replica_key(r.pk, r.key_salt) for d in (vision, text) for r in d.replica_set.all())
    client = sdk(gateway, make_key(owner_org, ["inference"]))
    client.chat.completions.create(model="vision", messages=MESSAGES, max_tokens=1)

    Organisation.objects.filter(pk=owner_org.pk).update(eu_domiciled=True)
    changed = time.monotonic()
    while True:
        try:
            client.chat.completions.create(model="vision", messages=MESSAGES, max_tokens=1)
        except openai.PermissionDeniedError as error:
            refused = error
            break
        assert time.monotonic() - changed < 2.0 + 0.5, "the domicile did not take effect within the cache time"
        time.sleep(0.05)

    assert refused.status_code == 403 and refused.code == "eu_multimodal"
    assert refused.body["param"] == "model" and refused.body["type"] == "permission_error"
    assert "With respect to any multimodal models included in Llama 3.2" in refused.message
    served = len(upstream.requests)
    assert client.chat.completions.create(model="text", messages=MESSAGES, max_tokens=1).choices
    assert len(upstream.requests) == served + 1  # the refused requests never reached vLLM


def test_limits_on_requests_per_minute_answer_429_with_retry_after(gateway, tenant) -> None:
    org, _, key = tenant
    ApiKey.objects.filter(prefix=key.split(".")[0]).update(requests_per_minute=3)
    client = sdk(gateway, key)
    for _ in range(3):
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    assert error.value.code == "rate_limit_exceeded" and "this API key" in error.value.message
    assert 1 <= int(error.value.response.headers["retry-after"]) <= 20
    # Another key of the organisation is not limited by this key's limit, but by the organisation's (a lowered
    # limit starts from a full bucket of the new size).
    GatewayLimit.objects.create(organisation=org, requests_per_minute=4)
    other = sdk(gateway, make_key(org, ["inference"]))
    time.sleep(0.4)  # the cached limits
    for _ in range(4):
        other.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.RateLimitError, match="your organisation"):
        other.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)


def test_tokens_per_minute_are_reserved_before_and_settled_after(gateway, tenant) -> None:
    _, _, key = tenant
    ApiKey.objects.filter(prefix=key.split(".")[0]).update(tokens_per_minute=200)
    client = sdk(gateway, key)
    # Each request reserves max_tokens + the body's size / 4 but uses PROMPT_TOKENS + 2: settling gives the
    # difference back, so many more than 200 / 100 requests pass.
    for _ in range(8):
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=100,
                                       extra_body={"fake": {"tokens": 2}})
    with pytest.raises(openai.RateLimitError) as error:
        for _ in range(30):
            client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=100,
                                           extra_body={"fake": {"tokens": 100}})
    assert error.value.body["type"] == "tokens"


def test_concurrent_requests_are_limited(gateway, tenant) -> None:
    _, _, key = tenant
    ApiKey.objects.filter(prefix=key.split(".")[0]).update(max_concurrent=2)

    async def main() -> list[int]:
        async with httpx.AsyncClient(timeout=10) as client:
            async def one() -> int:
                response = await client.post(f"{gateway.url}/v1/chat/completions",
                                             headers={"Authorization": f"Bearer {key}"},
                                             json={"model": "chat-small", "messages": MESSAGES, "max_tokens": 1,
                                                   "fake": {"delay": 0.5}})
                return response.status_code
            return await asyncio.gather(*(one() for _ in range(5)))

    statuses = asyncio.run(main())
    assert sorted(statuses) == [200, 200, 429, 429, 429]
    # Slots are given back: the next request passes.
    sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)


def test_upstream_errors_and_timeouts_are_openai_errors(gateway, tenant, gw_settings) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    with pytest.raises(openai.BadRequestError, match="fake failure 400"):
        client.chat.completions.create(model="chat-small", messages=MESSAGES, extra_body={"fake": {"status": 400}})
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, extra_body={"fake": {"status": 500}})
    assert error.value.status_code == 502 and "fake failure" not in error.value.message
    gateway.app.session._timeout = gateway.app.session._timeout.__class__(total=None, sock_read=0.3)
    with pytest.raises(openai.APIStatusError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, extra_body={"fake": {"delay": 1}})
    assert error.value.status_code == 504 and error.value.code == "upstream_timeout"
    usage = flushed_usage(gateway, deployment)
    assert usage.failed_requests == 3


def test_a_dead_replica_is_skipped_and_no_ready_replica_is_503(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    dead = Replica.objects.create(deployment=deployment, ordinal=1, state="ready", endpoint="http://127.0.0.1:9",
                                  key_salt="x", last_health_ok=True)
    gateway.app.directory.forget()
    client = sdk(gateway, key)
    for _ in range(4):  # half of them are sent to the dead replica first and retried on the live one
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    Replica.objects.exclude(pk=dead.pk).update(last_health_ok=False)  # the live one fails its health check
    gateway.app.directory.forget()
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    assert error.value.status_code == 502 and error.value.code == "upstream_unavailable"
    Replica.objects.filter(pk=dead.pk).update(state="unhealthy")
    gateway.app.directory.forget()
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    assert error.value.status_code == 503 and error.value.code == "model_not_ready"
    assert error.value.response.headers["retry-after"] == "5"


def test_least_outstanding_spreads_load_over_replicas(gateway, owner_org) -> None:
    fakes = [FakeOpenAI(), FakeOpenAI()]
    with ThreadServer(fakes[0]) as one, ThreadServer(fakes[1]) as two:
        deployment = ready_deployment(owner_org, one.url, replicas=2)
        second = deployment.replica_set.get(ordinal=1)
        Replica.objects.filter(pk=second.pk).update(endpoint=two.url)
        key = make_key(owner_org, ["inference"])

        async def main() -> None:
            async with httpx.AsyncClient(timeout=10) as client:
                await asyncio.gather(*(client.post(
                    f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                    json={"model": "chat-small", "messages": MESSAGES, "max_tokens": 1, "fake": {"delay": 0.2}})
                    for _ in range(10)))

        asyncio.run(main())
    assert [len(f.requests) for f in fakes] == [5, 5]


def test_redis_unreachable_fails_closed_within_2_seconds(settings, tenant, gw_settings) -> None:
    import socket

    blackhole = socket.socket()  # accepts connections, never answers: the slow way to be down
    blackhole.bind(("127.0.0.1", 0))
    blackhole.listen(16)
    _, _, key = tenant
    try:
        for url in ("redis://127.0.0.1:1/0", f"redis://127.0.0.1:{blackhole.getsockname()[1]}/0"):
            settings.REDIS_URL = url
            with ThreadServer(Gateway()) as server:
                started = time.monotonic()
                response = httpx.post(f"{server.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                                      json={"model": "chat-small", "messages": MESSAGES}, timeout=10)
                elapsed = time.monotonic() - started
            assert response.status_code == 503 and response.json()["error"]["code"] == "service_unavailable"
            assert response.headers["retry-after"] == "2"
            assert elapsed < 2, f"{url}: {elapsed:.2f} s"
    finally:
        blackhole.close()


def test_database_not_answering_fails_closed_within_2_seconds(gateway, tenant, monkeypatch) -> None:
    _, _, key = tenant

    def hang(*args):
        time.sleep(5)

    monkeypatch.setattr("access.keys.key_cache.load", hang)
    gateway.app.directory.forget()
    started = time.monotonic()
    response = httpx.post(f"{gateway.url}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "chat-small", "messages": MESSAGES}, timeout=10)
    assert response.status_code == 503 and time.monotonic() - started < 2


def test_a_failing_usage_store_stops_new_requests_until_it_recovers(tenant, monkeypatch, gw_settings) -> None:
    gw_settings.GATEWAY_USAGE_FLUSH_SECONDS = 0.2
    with ThreadServer(Gateway()) as server:
        server.app = server.server.config.app
        _failing_store(server, tenant, monkeypatch)


def _failing_store(gateway, tenant, monkeypatch) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    monkeypatch.setattr("inference.gateway.usage.UsageMeter.flush", _broken_flush)
    time.sleep(0.5)
    with pytest.raises(openai.InternalServerError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    assert error.value.status_code == 503 and "usage metering" in error.value.message
    monkeypatch.undo()
    deadline = time.monotonic() + 5
    while not gateway.app.meter.healthy and time.monotonic() < deadline:
        time.sleep(0.1)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    deadline = time.monotonic() + 5  # the gateway's own flush (every 0.2 s here) writes it
    while TokenUsage.objects.get(deployment=deployment).requests != 2:
        assert time.monotonic() < deadline, "the usage was not written after the store recovered"
        time.sleep(0.1)


def _broken_flush(self):
    self.healthy = False
    raise RuntimeError("database gone")


def test_usage_is_written_at_a_clean_shutdown(tenant, gw_settings) -> None:
    gw_settings.GATEWAY_USAGE_FLUSH_SECONDS = 3600
    _, deployment, key = tenant
    with ThreadServer(Gateway()) as server:
        sdk(server, key).chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=3, user="u")
        assert not TokenUsage.objects.exists()
    assert TokenUsage.objects.get(deployment=deployment).completion_tokens == 3
    assert dau(scope=deployment.product, day=timezone.now().date()).sources["gateway_flushes"] == 1


def test_no_key_or_secret_in_any_log_line(gateway, tenant, caplog, upstream) -> None:
    org, deployment, key = tenant
    caplog.set_level(logging.DEBUG)
    client = sdk(gateway, key)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    list(client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1, stream=True))
    Replica.objects.create(deployment=deployment, ordinal=1, state="ready", endpoint="http://127.0.0.1:9",
                           key_salt="y", last_health_ok=True)
    gateway.app.directory.forget()
    for _ in range(3):
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
    with pytest.raises(openai.AuthenticationError):
        sdk(gateway, key + "x").chat.completions.create(model="chat-small", messages=MESSAGES)
    secrets_ = [key, key.split(".")[1], *upstream.keys, *(replica_key(r.pk, r.key_salt) for r in
                                                         Replica.objects.filter(deployment=deployment))]
    logged = "\n".join(r.getMessage() + str(r.args) + str(r.exc_text) for r in caplog.records)
    assert "unreachable" in logged  # the dead replica was logged, by id
    for secret in secrets_:
        assert secret not in logged


def test_a_request_without_max_tokens_gets_the_cap_unless_the_model_context_is_smaller(gateway, tenant, upstream,
                                                                                      owner_org) -> None:
    _, deployment, key = tenant
    GatewayLimit.objects.create(organisation=owner_org, max_tokens=100)
    time.sleep(0.4)
    sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES)
    assert upstream.requests[-1]["max_tokens"] == 100
    type(deployment).objects.filter(pk=deployment.pk).update(max_model_len=64)
    time.sleep(0.4)
    sdk(gateway, key).chat.completions.create(model="chat-small", messages=MESSAGES)
    assert "max_tokens" not in upstream.requests[-1]  # vLLM bounds it by the context of 64


def test_the_sdk_sees_caps_as_422_and_a_stream_that_stalls_as_an_error_event(gateway, tenant) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=10**6)
    assert error.value.code == "max_tokens_too_large" and error.value.param == "max_tokens"
    gateway.app.session._timeout = gateway.app.session._timeout.__class__(total=None, sock_read=0.5)
    stream = client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=10, stream=True,
                                            extra_body={"fake": {"tokens": 10, "stall_after": 3}})
    received = []
    with pytest.raises(openai.APIError, match="did not answer in time"):
        for chunk in stream:
            received.append(chunk)
    assert len(received) == 3
    usage = flushed_usage(gateway, deployment)
    assert usage.failed_requests == 1 and usage.completion_tokens == 3  # billed for what was generated


def test_redis_stopped_mid_service_fails_closed_within_2_seconds_and_recovers(tenant, gw_settings, tmp_path) -> None:
    import shutil
    import socket
    import subprocess

    server = shutil.which("redis-server")
    if server is None:
        pytest.skip("redis-server is not installed")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    command = [server, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
               "--dir", str(tmp_path)]
    redis_process = subprocess.Popen(command, stdout=subprocess.DEVNULL)
    gw_settings.REDIS_URL = f"redis://127.0.0.1:{port}/0"
    _, _, key = tenant
    try:
        time.sleep(0.3)
        with ThreadServer(Gateway()) as gateway:
            client = sdk(gateway, key)
            client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
            redis_process.terminate()
            redis_process.wait(5)
            started = time.monotonic()
            with pytest.raises(openai.InternalServerError) as error:
                client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
            assert error.value.status_code == 503 and time.monotonic() - started < 2
            redis_process = subprocess.Popen(command, stdout=subprocess.DEVNULL)  # back, empty
            deadline = time.monotonic() + 5
            while True:
                try:
                    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=1)
                    break
                except openai.InternalServerError:
                    assert time.monotonic() < deadline, "the gateway did not recover after Redis came back"
                    time.sleep(0.2)
    finally:
        redis_process.kill()
        redis_process.wait(5)


def test_every_answer_carries_the_security_headers(gateway, tenant, gw_settings) -> None:
    """The gateway's answers bypass Django's middleware; they still are never cached or sniffed, and carry
    HSTS as configured (OWASP API8)."""
    _, _, key = tenant
    gw_settings.SECURE_HSTS_SECONDS, gw_settings.SECURE_HSTS_INCLUDE_SUBDOMAINS = 31_536_000, True
    auth = {"authorization": f"Bearer {key}"}
    chat = {"model": "chat-small", "messages": MESSAGES, "max_tokens": 2}
    answers = {
        "models": httpx.get(f"{gateway.url}/v1/models", headers=auth),
        "completion": httpx.post(f"{gateway.url}/v1/chat/completions", json=chat, headers=auth),
        "stream": httpx.post(f"{gateway.url}/v1/chat/completions", json={**chat, "stream": True}, headers=auth),
        "401": httpx.get(f"{gateway.url}/v1/models"),
        "404": httpx.get(f"{gateway.url}/v1/tokenize", headers=auth),
    }
    for name, answer in answers.items():
        assert answer.headers["cache-control"] == "no-store", name
        assert answer.headers["x-content-type-options"] == "nosniff", name
        assert answer.headers["strict-transport-security"] == "max-age=31536000; includeSubDomains", name
    assert answers["stream"].headers["content-type"].startswith("text/event-stream")
    gw_settings.SECURE_HSTS_SECONDS = 0
    assert "strict-transport-security" not in httpx.get(f"{gateway.url}/v1/models", headers=auth).headers


# --- the end user from safety_identifier, and the Responses API --------------------------------------------


def test_safety_identifier_names_the_end_user_and_wins_over_user(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    client = sdk(gateway, key)
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=2, safety_identifier="person-1",
                                   user="legacy-tag")
    client.chat.completions.create(model="chat-small", messages=MESSAGES, max_tokens=2, user="person-1")
    client.completions.create(model="chat-small", prompt="Once", max_tokens=2,
                              extra_body={"safety_identifier": "person-2"})
    assert upstream.requests[0]["safety_identifier"] == "person-1"  # passed on as sent
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.requests_without_user) == (3, 0)
    # person-1 twice (once by each field) and person-2: "legacy-tag" was not counted.
    assert dau(scope=deployment.product, day=timezone.now().date()).estimate.estimate == 2


def test_responses_are_relayed_metered_and_count_the_end_user(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    answer = sdk(gateway, key).responses.create(model="chat-small", input="Hello there", max_output_tokens=5,
                                                safety_identifier="end-user-9")
    assert answer.output_text.strip() == "tok tok tok tok tok" and answer.status == "completed"
    assert (answer.usage.input_tokens, answer.usage.output_tokens) == (PROMPT_TOKENS, 5)
    assert upstream.paths == ["/v1/responses"] and upstream.requests[-1]["max_output_tokens"] == 5
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.requests_without_user) == (
        1, PROMPT_TOKENS, 5, 0)
    assert dau(scope=deployment.product, day=timezone.now().date()).estimate.estimate == 1


def test_a_streamed_response_passes_every_event_and_is_metered_from_the_last(gateway, tenant, upstream) -> None:
    _, deployment, key = tenant
    events = list(sdk(gateway, key).responses.create(model="chat-small", input="Hello", max_output_tokens=4,
                                                     stream=True, user="end-user-3"))
    assert [e.type for e in events] == ["response.created", "response.output_item.added",
                                        *["response.output_text.delta"] * 4, "response.output_item.done",
                                        "response.completed"]
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == "tok " * 4
    assert events[-1].response.usage.output_tokens == 4
    assert "stream_options" not in upstream.requests[-1]  # the Responses API has usage in its last event
    usage = flushed_usage(gateway, deployment)
    assert (usage.requests, usage.prompt_tokens, usage.completion_tokens, usage.requests_without_user) == (
        1, PROMPT_TOKENS, 4, 0)


def test_responses_pass_the_same_licence_gate(gateway, owner_org, upstream) -> None:
    ready_deployment(owner_org, upstream.url, accept=False)
    key = make_key(owner_org, ["inference"])
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(gateway, key).responses.create(model="chat-small", input="Hello")
    assert error.value.code == "licence_not_accepted" and "Llama 3.1" in error.value.message
    with pytest.raises(openai.PermissionDeniedError) as error:
        sdk(gateway, make_key(owner_org, ["read"])).responses.create(model="chat-small", input="Hello")
    assert error.value.code == "insufficient_scope"
    assert upstream.requests == []


def test_responses_are_capped_and_rate_limited_by_max_output_tokens(gateway, tenant, upstream, owner_org) -> None:
    _, _, key = tenant
    client = sdk(gateway, key)
    with pytest.raises(openai.UnprocessableEntityError) as error:
        client.responses.create(model="chat-small", input="Hello", max_output_tokens=10**6)
    assert error.value.code == "max_tokens_too_large" and error.value.param == "max_output_tokens"
    GatewayLimit.objects.create(organisation=owner_org, max_tokens=100)
    time.sleep(0.4)
    client.responses.create(model="chat-small", input="Hello")
    assert upstream.requests[-1]["max_output_tokens"] == 100  # the cap holds for a request that sets none
    ApiKey.objects.filter(prefix=key.split(".")[0]).update(tokens_per_minute=60)
    time.sleep(0.4)
    client.responses.create(model="chat-small", input="Hello", max_output_tokens=20, extra_body={"fake": {"tokens": 2}})
    # The reservation is max_output_tokens plus the prompt's estimate: 90 do not fit in a minute's 60.
    with pytest.raises(openai.RateLimitError) as error:
        client.responses.create(model="chat-small", input="Hello", max_output_tokens=90)
    assert error.value.body["type"] == "tokens" and len(upstream.requests) == 2

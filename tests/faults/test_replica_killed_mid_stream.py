"""A vLLM replica killed (SIGKILL to its process group) while it streams a completion to a tenant's OpenAI
SDK through the gateway: the client gets a clean error at once, not a hang; the tokens streamed before the
kill are recorded in TokenUsage; the pool reconciler, with the real local backend, restarts the replica after
its backoff, and the next stream is served by the new process.

The replica is the stand-in `vllm serve` (tests/inference/fake_vllm.py, answering completions like vLLM), so
a restart costs milliseconds; tests/inference/test_vllm_e2e.py kills and restarts the real engine. This test
uses the suite's own database, so it runs in both of CI's runs.
"""

from __future__ import annotations

import os
import shlex
import signal
import sys
import time
from pathlib import Path

import openai
import pytest

from inference import reconciler
from inference.gateway.app import Gateway
from inference.models import GPU, Deployment, GpuQuota, Node, Replica, TokenUsage
from inference.services import deployment_delete, deployment_request
from licensing.models import BaseModel
from licensing.services import licence_accept
from tests.factories import ProductFactory, licence, make_key
from tests.inference.gateway_support import ThreadServer

pytestmark = pytest.mark.django_db(transaction=True, serialized_rollback=True)
FAKE_VLLM = Path(__file__).resolve().parents[1] / "inference" / "fake_vllm.py"
MESSAGES = [{"role": "user", "content": "Tell me about llamas"}]


@pytest.fixture
def pool(settings, tmp_path):
    settings.INFERENCE_LOCAL_COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE_VLLM))}"
    settings.INFERENCE_LOG_DIR = tmp_path / "logs"
    settings.INFERENCE_PORT_RANGE = (18300 + os.getpid() % 500, 18300 + os.getpid() % 500 + 20)
    settings.INFERENCE_STOP_GRACE_SECONDS = 3
    settings.GATEWAY_CACHE_SECONDS = 0.3
    settings.GATEWAY_USAGE_FLUSH_SECONDS = 3600  # written when the test looks
    return settings


def _reconcile_until(predicate, timeout: float) -> float:
    """Run the reconciler as beat and the scale/crash triggers would, until ``predicate``; returns seconds."""
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "the reconciler did not get there"
        reconciler.reconcile_once()
        time.sleep(0.2)
    return time.monotonic() - started


def test_a_replica_killed_mid_stream_is_a_clean_error_billed_for_what_streamed_and_restarted(owner_org, pool
                                                                                             ) -> None:
    version = licence("llama-3.1")
    licence_accept(organisation=owner_org, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="test")
    GpuQuota.objects.create(organisation=owner_org, max_gpus=1)
    node = Node.objects.create(name="gpu-1", address="127.0.0.1")
    GPU.objects.create(node=node, index=0, model="NVIDIA L4", memory_mib=24_576)
    deployment = deployment_request(
        organisation=owner_org, product=ProductFactory(organisation=owner_org, licence_version=version),
        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.1-8B-Instruct"), served_model_name="chat",
        created_by="test")
    try:
        _kill_mid_stream_and_recover(owner_org, deployment)
    finally:  # whatever happened, no replica outlives the test
        for pid in Replica.objects.filter(deployment=deployment).exclude(pid=None).values_list("pid", flat=True):
            try:
                os.killpg(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _kill_mid_stream_and_recover(owner_org, deployment: Deployment) -> None:
    _reconcile_until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready", 30)
    replica = Replica.objects.get(deployment=deployment)
    key = make_key(owner_org, ["inference"])

    app = Gateway()
    with ThreadServer(app) as gateway:
        client = openai.OpenAI(base_url=f"{gateway.url}/v1", api_key=key, max_retries=0, timeout=30)
        stream = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=100, stream=True,
                                                extra_body={"fake": {"tokens": 100, "delay": 0.05}})
        received, killed_at = 0, 0.0
        with pytest.raises(openai.APIError) as error:
            for chunk in stream:
                received += len(chunk.choices)
                if received == 10:
                    os.killpg(replica.pid, signal.SIGKILL)
                    killed_at = time.monotonic()
        error_after = time.monotonic() - killed_at
        assert killed_at and error_after < 2, f"the client waited {error_after:.1f} s for its error"
        # The SSE error event the gateway ends the stream with, in OpenAI's shape, raised by the SDK.
        assert error.value.code == "upstream_error" and "connection to the model failed" in error.value.message
        assert 10 <= received < 100

        # Billed for the tokens that streamed before the kill, as a failed request.
        while app.in_flight:
            time.sleep(0.01)
        app.meter.flush()
        usage = TokenUsage.objects.get(deployment=deployment)
        assert (usage.requests, usage.failed_requests, usage.completion_tokens) == (1, 1, received)

        # The reconciler sees the dead process and starts a new one after its 5 s backoff.
        first_pid = replica.pid
        restarted_in = _reconcile_until(
            lambda: Replica.objects.filter(pk=replica.pk, state="ready", restarts=1).exclude(pid=first_pid).exists(),
            30)
        time.sleep(0.4)  # the gateway's cache of the deployment's replicas (0.3 s here)
        again = client.chat.completions.create(model="chat", messages=MESSAGES, max_tokens=20, stream=True,
                                               extra_body={"fake": {"tokens": 20}})
        assert sum(len(chunk.choices) for chunk in again) == 20
        print(f"\nkilled after {received} chunks; the client's error came {error_after:.2f} s later; replica "
              f"restarted and ready {restarted_in:.1f} s after the kill was noticed")

    # Deleted, the deployment's new process is stopped too.
    second_pid = Replica.objects.get(pk=replica.pk).pid
    deployment_delete(deployment=deployment, actor="test")
    _reconcile_until(lambda: Deployment.objects.get(pk=deployment.pk).state == "stopped", 30)
    with pytest.raises(ProcessLookupError):
        os.killpg(second_pid, 0)

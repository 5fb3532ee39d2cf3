"""The pool: refusals, quotas, scheduling without double allocation, and the reconciler driven step by step
with the real local backend starting a stand-in for vLLM (tests/inference/fake_vllm.py)."""

from __future__ import annotations

import datetime as dt
import json
import os
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from django.core.exceptions import ValidationError
from django.db import connections
from django.utils import timezone

from access.models import AuditEvent
from governance.compliance.services import group_policy_get
from governance.models import Alert, GroupPolicy
from inference import reconciler
from inference.backends.local import process_start_time
from inference.models import GPU, Deployment, GpuAllocation, GpuQuota, Node, Replica
from inference.services import deployment_delete, deployment_request, deployment_scale, validate_extra_args
from licensing.models import BaseModel
from licensing.services import exemption_record, exemption_withdraw, licence_accept, organisation_domicile_set
from tests.factories import ProductFactory, licence

FAKE = Path(__file__).with_name("fake_vllm.py")


@pytest.fixture
def pool_settings(settings, tmp_path):
    settings.INFERENCE_LOCAL_COMMAND = f"{shlex.quote(sys.executable)} {shlex.quote(str(FAKE))}"
    settings.INFERENCE_LOG_DIR = tmp_path / "logs"
    settings.INFERENCE_LOCAL_MODEL_DIRS = [str(tmp_path)]
    settings.INFERENCE_PORT_RANGE = (18100 + os.getpid() % 500, 18100 + os.getpid() % 500 + 20)
    settings.INFERENCE_STOP_GRACE_SECONDS = 3
    return settings


@pytest.fixture
def tenant(owner_org):
    version = licence("llama-3.1")
    licence_accept(organisation=owner_org, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="test")
    GpuQuota.objects.create(organisation=owner_org, max_gpus=4, max_cpu_replicas=2)
    product = ProductFactory(organisation=owner_org, licence_version=version)
    node = Node.objects.create(name="gpu-1", address="127.0.0.1")
    for index in range(4):
        GPU.objects.create(node=node, index=index, model="NVIDIA L4", memory_mib=24_576)
    return owner_org, product, BaseModel.objects.get(repo_id="meta-llama/Llama-3.1-8B-Instruct")


def request(tenant, **kwargs):
    organisation, product, base = tenant
    values = {"organisation": organisation, "product": product, "base_model": base, "served_model_name": "chat",
              "created_by": "test"}
    values.update(kwargs)
    return deployment_request(**values)


# --- refusals -------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_it_refuses_a_model_of_another_licence_version(tenant) -> None:
    with pytest.raises(Exception, match="released under Llama 2") as info:
        request(tenant, base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-2-7b-hf"))
    assert "base_model" in info.value.message_dict


@pytest.mark.django_db
def test_it_refuses_without_licence_acceptance(tenant) -> None:
    organisation, _, _ = tenant
    version = licence("llama-3.3")
    product = ProductFactory(organisation=organisation, licence_version=version)
    with pytest.raises(Exception, match="licence_not_accepted"):
        request(tenant, product=product, base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.3-70B-Instruct"))


@pytest.mark.django_db
def test_it_refuses_a_3_2_vision_model_to_an_eu_company(tenant) -> None:
    organisation, _, _ = tenant
    organisation.eu_domiciled = True
    organisation.save()
    version = licence("llama-3.2")
    licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="test")
    product = ProductFactory(organisation=organisation, licence_version=version)
    with pytest.raises(Exception, match="European Union"):
        request(tenant, product=product, base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct"))
    text_only = request(tenant, product=product, served_model_name="small",
                        base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-1B-Instruct"))
    assert text_only.state == "pending"


@pytest.mark.django_db
def test_it_refuses_a_deployment_for_a_product_not_built_on_llama(tenant, client_for, monkeypatch) -> None:
    """A deployment serves a Llama model under the product's licence: a service not built on Llama (metered and
    counted like any other, section 2) has no licence to run one under."""
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation, _, _ = tenant
    search = ProductFactory(organisation=organisation, name="Search", licence_version=None)

    with pytest.raises(ValidationError) as info:
        request(tenant, product=search)
    response = client_for(organisation, ["read", "write"]).post("/api/v1/deployments/", {
        "product": search.pk, "base_model": "meta-llama/Llama-3.1-8B-Instruct", "served_model_name": "search"},
        format="json")

    assert set(info.value.message_dict) == {"product"}
    assert "not built on Llama" in info.value.message_dict["product"][0]
    assert response.status_code == 400 and set(response.json()) == {"product"}
    assert not Deployment.objects.exists()


@pytest.mark.django_db
def test_it_refuses_a_deployment_while_the_organisation_is_exempt_under_1_b_ii(tenant) -> None:
    """Clause 1.b.ii exempts an organisation that receives Llama "from a Licensee as part of an integrated end user
    product": running a Llama model on the pool receives the materials themselves, so it is refused while the
    exemption is in force, and allowed again once it is withdrawn."""
    organisation, _, _ = tenant
    exemption_record(organisation=organisation, supplier="Globex", evidence="Agreement 17", recorded_by="test")

    with pytest.raises(ValidationError) as info:
        request(tenant)
    assert set(info.value.message_dict) == {"licence"} and "1.b.ii" in info.value.message_dict["licence"][0]
    assert not Deployment.objects.exists()
    exemption_withdraw(organisation=organisation, withdrawn_by="test")
    assert request(tenant).state == "pending"


@pytest.mark.django_db
def test_it_refuses_beyond_the_quota(tenant) -> None:
    request(tenant, replicas=2, tensor_parallel_size=2)
    with pytest.raises(Exception, match="GPU quota exceeded: 4 of 4"):
        request(tenant, served_model_name="more")


@pytest.mark.parametrize("args, message", [
    (["--trust-remote-code"], "not allowed"), (["--api-key", "x"], "not allowed"), (["--host=0.0.0.0"], "not allowed"),
    (["--max-num-seqs"], "needs a value"), (["--max-num-seqs", "lots"], "positive whole number"),
    (["--enable-prefix-caching=1"], "takes no value"), (["--kv-cache-dtype", "int3"], "kv-cache-dtype"),
    ("--seed 1", "list of strings"),
])
def test_it_refuses_arguments_off_the_allow_list(args, message) -> None:
    with pytest.raises(Exception, match=message):
        validate_extra_args(args)


def test_it_accepts_allowed_arguments_in_both_spellings() -> None:
    assert validate_extra_args(["--max-num-seqs=8", "--enable-prefix-caching", "--seed", "7"]) == [
        "--max-num-seqs", "8", "--enable-prefix-caching", "--seed", "7"]


@pytest.mark.django_db
def test_it_refuses_a_local_model_outside_the_allowed_directories(tenant, pool_settings) -> None:
    with pytest.raises(Exception, match="allowed model directory"):
        request(tenant, model_source="/etc")
    with pytest.raises(Exception, match="neither a Hugging Face repo id"):
        request(tenant, model_source="meta-llama/..")
    with pytest.raises(Exception, match="allowed model directory"):
        request(tenant, model_source="../../etc/passwd")


# --- scheduling -----------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_without_capacity_it_waits_in_scheduling_and_says_why(tenant, pool_settings) -> None:
    Node.objects.update(active=False)
    deployment = request(tenant)
    reconciler.reconcile_once()
    deployment.refresh_from_db()
    assert deployment.state == "scheduling"
    assert "no active GPU node" in deployment.state_reason


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_placements_never_give_one_gpu_to_two_replicas(tenant, pool_settings, monkeypatch) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    monkeypatch.setattr(reconciler, "_start", lambda *a, **k: None)  # placement only
    deployment = request(tenant, replicas=4)
    reconciler.step_replica_rows()
    errors: list[Exception] = []

    def place() -> None:
        try:
            for _ in range(3):
                reconciler.step_schedule()
        except Exception as exc:  # surfaced below
            errors.append(exc)
        finally:
            connections.close_all()

    threads = [threading.Thread(target=place) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    allocations = list(GpuAllocation.objects.values_list("gpu_id", "replica_id"))
    assert len(allocations) == 4 and len({gpu for gpu, _ in allocations}) == 4
    assert Replica.objects.filter(deployment=deployment, state="starting").count() == 4
    assert len(set(Replica.objects.values_list("port", flat=True))) == 4


# --- the reconciler with the real local backend -----------------------------------------------------------


def _until(predicate, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        reconciler.reconcile_once()
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError("condition not reached")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return stat[0] != "Z"


@pytest.mark.django_db
def test_a_deployment_comes_up_is_probed_restarted_scaled_and_stopped(tenant, pool_settings) -> None:
    deployment = request(tenant, extra_args=["--max-num-seqs", "8"])
    _until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready")
    replica = Replica.objects.get(deployment=deployment)
    assert replica.metrics["requests_running"] == 2.0 and replica.metrics["kv_cache_usage"] == 0.25
    assert replica.endpoint.startswith("http://127.0.0.1:")
    log = Path(replica.log_path).read_text()
    assert "--max-num-seqs" in log and "VLLM_API_KEY" not in log
    cmdline = Path(f"/proc/{replica.pid}/cmdline").read_bytes().decode()
    assert "api-key" not in cmdline  # the key is in the environment, not visible to `ps`
    # vLLM's key works against the replica and is never in the database
    from inference.models import replica_key

    key = replica_key(replica.pk, replica.key_salt)
    assert key not in json.dumps(list(Replica.objects.values()), default=str)
    import httpx

    assert httpx.get(f"{replica.endpoint}/v1/models", headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert httpx.get(f"{replica.endpoint}/v1/models").status_code == 401

    # a crash: the reconciler restarts it after a backoff
    first_pid = replica.pid
    os.killpg(first_pid, 9)
    _until(lambda: Replica.objects.get(pk=replica.pk).state == "scheduling")
    replica.refresh_from_db()
    assert replica.restarts == 1 and "restarting in 5 s" in replica.state_reason
    Replica.objects.filter(pk=replica.pk).update(next_start_at=timezone.now())  # skip the wait
    _until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready")
    replica.refresh_from_db()
    assert replica.pid != first_pid and not _alive(first_pid)

    # scale to two, then delete: every process stops, GPUs are freed, the record stays
    deployment_scale(deployment=deployment, replicas=2, actor="test")
    _until(lambda: Replica.objects.filter(deployment=deployment, state="ready").count() == 2)
    pids = list(Replica.objects.filter(deployment=deployment).values_list("pid", flat=True))
    deployment_delete(deployment=deployment, actor="test")
    _until(lambda: Deployment.objects.get(pk=deployment.pk).state == "stopped")
    assert not any(_alive(pid) for pid in pids)
    assert GpuAllocation.objects.count() == 0


@pytest.mark.django_db
def test_repeated_crashes_fail_the_deployment_with_the_reason(tenant, pool_settings, monkeypatch) -> None:
    monkeypatch.setenv("FAKE_VLLM_EXIT_AT_ONCE", "1")
    pool_settings.INFERENCE_MAX_RESTARTS = 2
    deployment = request(tenant)

    def skip_backoff() -> bool:
        Replica.objects.filter(state="scheduling").update(next_start_at=timezone.now())
        return Deployment.objects.get(pk=deployment.pk).state == "failed"

    _until(skip_backoff, timeout=30)
    deployment.refresh_from_db()
    assert "crashed 3 times" in deployment.state_reason and "exiting as asked" in deployment.state_reason
    assert GpuAllocation.objects.count() == 0


def test_it_reads_vllm_metrics_with_the_prometheus_parser() -> None:
    text = (
        "# TYPE vllm:num_requests_running gauge\n"
        'vllm:num_requests_running{model_name="a"} 3.0\n'
        "# TYPE vllm:generation_tokens counter\n"
        'vllm:generation_tokens_total{model_name="a"} 40.0\n'
        'vllm:generation_tokens_created{model_name="a"} 1.7e9\n'
    )
    assert reconciler.read_metrics(text) == {"requests_running": 3.0, "generation_tokens": 40.0}


# --- the API ----------------------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_api_requests_lists_and_deletes_within_the_tenant(tenant, client_for, outsider_org, pool_settings,
                                                              monkeypatch) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation, product, _ = tenant
    client = client_for(organisation, ["read", "write"])
    created = client.post("/api/v1/deployments/", {
        "product": product.pk, "base_model": "meta-llama/Llama-3.1-8B-Instruct", "served_model_name": "chat",
        "extra_args": ["--max-num-seqs", "16"]}, format="json")
    assert created.status_code == 201, created.content
    body = created.json()
    assert body["licence_version"] == "llama-3.1" and body["state"] == "pending"
    bad = client.post("/api/v1/deployments/", {"product": product.pk, "base_model": "meta-llama/Llama-3.1-8B-Instruct",
                                                "served_model_name": "x", "extra_args": ["--trust-remote-code"]},
                      format="json")
    assert bad.status_code == 400 and "extra_args" in bad.json()
    outsider = client_for(outsider_org, ["read", "write"])
    for method in ("get", "delete"):
        assert getattr(outsider, method)(f"/api/v1/deployments/{body['id']}/").status_code == 404
    assert outsider.post(f"/api/v1/deployments/{body['id']}/scale/", {"replicas": 2}, format="json").status_code == 404
    assert outsider.get("/api/v1/deployments/").json()["count"] == 0
    foreign = outsider.post("/api/v1/deployments/", {"product": product.pk, "base_model":
                                                     "meta-llama/Llama-3.1-8B-Instruct", "served_model_name": "steal"},
                            format="json")
    assert foreign.status_code == 400 and "product" in foreign.json()
    assert client_for(organisation, ["read"]).delete(f"/api/v1/deployments/{body['id']}/").status_code == 403
    assert client.get("/api/v1/pool/nodes/").status_code == 403  # staff only
    deleted = client.delete(f"/api/v1/deployments/{body['id']}/")
    assert deleted.status_code == 202 and deleted.json()["deleted"] is True
    # Its URL is gone at once (DELETE's promise, held by the schema fuzz); the list shows it draining.
    assert client.get(f"/api/v1/deployments/{body['id']}/").status_code == 404
    assert client.delete(f"/api/v1/deployments/{body['id']}/").status_code == 404
    listed = client.get("/api/v1/deployments/?deleted=true").json()["results"]
    assert [(d["id"], d["state"]) for d in listed] == [(body["id"], "draining")]


@pytest.mark.django_db
def test_an_unhealthy_replica_leaves_the_routing_set_until_it_recovers(tenant, pool_settings, monkeypatch,
                                                                        tmp_path) -> None:
    sick = tmp_path / "sick"
    monkeypatch.setenv("FAKE_VLLM_SICK_FILE", str(sick))
    pool_settings.INFERENCE_UNHEALTHY_AFTER = 2
    deployment = request(tenant)
    _until(lambda: Deployment.objects.get(pk=deployment.pk).state == "ready")
    sick.touch()
    _until(lambda: Replica.objects.get(deployment=deployment).state == "unhealthy")
    replica = Replica.objects.get(deployment=deployment)
    assert "left the routing set" in replica.state_reason and replica.restarts == 0
    sick.unlink()
    _until(lambda: Replica.objects.get(deployment=deployment).state == "ready")
    deployment_delete(deployment=deployment, actor="test")
    _until(lambda: Deployment.objects.get(pk=deployment.pk).state == "stopped")


def test_the_backend_registry_names_each_backend_and_refuses_others() -> None:
    from inference.backends import backend_for

    assert backend_for("local").name == "local" and backend_for("kubernetes").name == "kubernetes"
    with pytest.raises(ValueError, match="Unknown inference backend"):
        backend_for("ray")


@pytest.mark.django_db
def test_staff_see_and_manage_the_whole_pool_and_keys_never_do(tenant, client_for, outsider_org, monkeypatch) -> None:
    from rest_framework.test import APIClient

    from tests.factories import UserFactory

    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation, _, _ = tenant
    request(tenant)
    staff = APIClient()
    staff.force_login(UserFactory(is_staff=True))
    assert [n["name"] for n in staff.get("/api/v1/pool/nodes/").json()["results"]] == ["gpu-1"]
    assert staff.get("/api/v1/pool/gpus/").json()["count"] == 4
    assert staff.get("/api/v1/pool/deployments/").json()["count"] == 1
    created = staff.post("/api/v1/pool/quotas/", {"organisation": outsider_org.pk, "max_gpus": 2}, format="json")
    assert created.status_code == 201, created.content
    admin_key = client_for(organisation, ["read", "write", "admin"])
    for path in ("/api/v1/pool/nodes/", "/api/v1/pool/gpus/", "/api/v1/pool/quotas/", "/api/v1/pool/deployments/"):
        assert admin_key.get(path).status_code == 403, path


# --- the EU clause for running deployments ------------------------------------------------------------------


@pytest.mark.django_db
def test_moving_into_the_eu_drains_the_multimodal_deployments_and_raises_an_alert(tenant, client_for,
                                                                                    monkeypatch) -> None:
    """Llama 3.2 AUP: "With respect to any multimodal models included in Llama 3.2, the rights granted under Section
    1(a) of the Llama 3.2 Community License Agreement are not being granted to you if you are ... a company with a
    principal place of business in, the European Union."

    Acme runs Llama-3.2-11B-Vision-Instruct (multimodal, 3.2: drained), Llama-3.2-1B-Instruct (text only: kept) and
    Llama-3.1-8B-Instruct (3.1 carries no such clause: kept), then records that its principal place of business is
    in the EU. One alert for Llama 3.2 names the drained deployment; the reconciler stops it."""
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation, _, _ = tenant
    v32 = licence("llama-3.2")
    licence_accept(organisation=organisation, licence_version=v32, licence_sha256=v32.licence_sha256,
                   aup_version=v32.aup_version, accepted_by="test")
    product = ProductFactory(organisation=organisation, licence_version=v32)
    vision = request(tenant, product=product, served_model_name="vision",
                     base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-11B-Vision-Instruct"))
    request(tenant, product=product, served_model_name="small",
            base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-3.2-1B-Instruct"))
    request(tenant)  # "chat" on Llama 3.1
    Replica.objects.create(deployment=vision, ordinal=0, state="ready", endpoint="http://127.0.0.1:9",
                           key_salt="s", last_health_ok=True)

    response = client_for(organisation, ["read", "admin"]).post(
        f"/api/v1/organisations/{organisation.pk}/domicile/", {"eu_domiciled": True}, format="json")

    assert response.status_code == 200, response.content
    assert response.json()["drained_deployments"] == [{"id": vision.pk, "served_model_name": "vision"}]
    live = Deployment.objects.filter(deleted=False).order_by("served_model_name")
    assert [d.served_model_name for d in live] == ["chat", "small"]
    [alert] = Alert.objects.filter(level="eu_multimodal")
    assert (alert.group, alert.licence_version, alert.kind) == (organisation.group, v32, "raised")
    assert alert.figures["deployments"] == [{"id": vision.pk, "served_model_name": "vision"}]
    assert "(vision)" in alert.message and "multimodal models included in Llama 3.2" in alert.message
    [deleted] = AuditEvent.objects.filter(action="deployment.deleted", object_id=str(vision.pk))
    assert "European Union" in deleted.data["reason"]
    assert AuditEvent.objects.filter(action="alert.raised", object_id=str(alert.pk)).exists()

    reconciler.step_replica_rows()
    reconciler.step_drain()
    reconciler.step_deployment_states()
    vision.refresh_from_db()
    assert vision.state == "stopped"
    assert list(vision.replica_set.values_list("state", flat=True)) == ["stopped"]

    again = organisation_domicile_set(organisation=organisation, eu_domiciled=True, actor="test")
    assert (again.changed, again.drained) == (False, [])
    assert Alert.objects.filter(level="eu_multimodal").count() == 1


@pytest.mark.django_db
def test_the_eu_alert_is_dispatched_like_the_evaluations(tenant, monkeypatch, django_capture_on_commit_callbacks
                                                         ) -> None:
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    organisation, _, _ = tenant
    v4 = licence("llama-4")
    licence_accept(organisation=organisation, licence_version=v4, licence_sha256=v4.licence_sha256,
                   aup_version=v4.aup_version, accepted_by="test")
    request(tenant, product=ProductFactory(organisation=organisation, licence_version=v4), served_model_name="scout",
            base_model=BaseModel.objects.get(repo_id="meta-llama/Llama-4-Scout-17B-16E-Instruct"))
    policy = group_policy_get(group=organisation.group)
    GroupPolicy.objects.filter(pk=policy.pk).update(email_enabled=True, email_recipients=["counsel@example.com"])

    with django_capture_on_commit_callbacks(execute=True):
        organisation_domicile_set(organisation=organisation, eu_domiciled=True, actor="test")

    alert = Alert.objects.get(level="eu_multimodal")
    assert alert.dispatched_at is not None and alert.emailed_at is not None
    from django.core import mail

    assert "Llama 4" in mail.outbox[-1].subject and mail.outbox[-1].to == ["counsel@example.com"]


# --- stopping without sleeping, and each node's work on its own queue ---------------------------------------


@pytest.mark.django_db
def test_stopping_a_replica_returns_at_once_and_a_later_pass_finishes_it(tenant, pool_settings, monkeypatch) -> None:
    """A replica that ignores SIGTERM: the pass that asks it to stop does not wait out the 30 s grace period;
    it keeps its GPU until a pass after the grace period kills it and sees it gone."""
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    pool_settings.INFERENCE_STOP_GRACE_SECONDS = 30
    deployment = request(tenant)
    reconciler.step_replica_rows()
    stubborn = subprocess.Popen(
        [sys.executable, "-c", "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
                               "print('up', flush=True); time.sleep(120)"],
        start_new_session=True, stdout=subprocess.PIPE)
    try:
        assert stubborn.stdout.readline() == b"up\n"  # SIGTERM is ignored from here on
        node = Node.objects.get(name="gpu-1")
        replica = Replica.objects.get(deployment=deployment)
        GpuAllocation.objects.create(gpu=GPU.objects.get(node=node, index=0), replica=replica)
        Replica.objects.filter(pk=replica.pk).update(
            state="draining", node=node, port=18099, pid=stubborn.pid, endpoint="http://127.0.0.1:18099",
            metrics={"_start_time": process_start_time(stubborn.pid)})

        asked = time.monotonic()
        assert reconciler.step_drain() is True
        assert time.monotonic() - asked < 2
        replica.refresh_from_db()
        assert replica.state == "draining" and "grace period until" in replica.state_reason
        assert 28 <= (replica.stopping_until - timezone.now()).total_seconds() <= 30
        assert _alive(stubborn.pid) and GpuAllocation.objects.filter(replica=replica).count() == 1
        assert reconciler.step_drain() is False  # still in its grace period: nothing to do, no waiting

        Replica.objects.filter(pk=replica.pk).update(stopping_until=timezone.now() - dt.timedelta(seconds=1))
        deadline = time.monotonic() + 5
        while Replica.objects.get(pk=replica.pk).state == "draining" and time.monotonic() < deadline:
            reconciler.step_drain()  # kills it, then sees it gone
            time.sleep(0.05)
        replica.refresh_from_db()
        assert replica.state == "stopped" and replica.stopping_until is None and replica.pid is None
        assert not _alive(stubborn.pid)
        assert GpuAllocation.objects.count() == 0
    finally:
        stubborn.kill()
        stubborn.wait()


@pytest.fixture
def two_nodes(tenant, pool_settings, monkeypatch):
    """gpu-1 (the tenant's) and gpu-2, four GPUs each, node queues on, and one deployment with a replica on
    each (four GPUs per replica)."""
    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    pool_settings.INFERENCE_NODE_QUEUES = True
    GpuQuota.objects.filter(organisation=tenant[0]).update(max_gpus=8)
    second = Node.objects.create(name="gpu-2", address="10.0.0.2")
    for index in range(4):
        GPU.objects.create(node=second, index=index, model="NVIDIA L4", memory_mib=24_576)
    deployment = request(tenant, replicas=2, tensor_parallel_size=4)
    return Node.objects.get(name="gpu-1"), second, deployment


@pytest.mark.django_db
def test_each_nodes_replicas_are_started_by_the_worker_on_its_own_queue(two_nodes, pool_settings,
                                                                        monkeypatch) -> None:
    from inference import tasks

    first, second, deployment = two_nodes
    sent: list[tuple[list[int], str]] = []
    monkeypatch.setattr(tasks.reconcile_node, "apply_async", lambda *, args, queue: sent.append((args, queue)))
    started: list[tuple[int, str]] = []
    monkeypatch.setattr(reconciler, "_start", lambda replica, node, gpus, port: started.append((replica.pk, node.name)))

    tasks.reconcile_pool()
    placed = dict(Replica.objects.filter(deployment=deployment).values_list("node__name", "pk"))
    assert set(placed) == {"gpu-1", "gpu-2"}
    assert started == []  # the central pass only placed them: starting is the nodes' work
    assert sent == [([first.pk], "node.gpu-1"), ([second.pk], "node.gpu-2")]

    # the worker on gpu-1 (INFERENCE_NODE_NAME=gpu-1) starts gpu-1's replica only
    pool_settings.INFERENCE_NODE_NAME = "gpu-1"
    assert reconciler.reconcile_node_once(first.pk) is True
    assert started == [(placed["gpu-1"], "gpu-1")]
    # work for gpu-2 that reached it by mistake is refused: vLLM would start on the wrong host
    assert reconciler.reconcile_node_once(second.pk) is False
    assert started == [(placed["gpu-1"], "gpu-1")]
    pool_settings.INFERENCE_NODE_NAME = "gpu-2"
    reconciler.reconcile_node_once(second.pk)
    assert started == [(placed["gpu-1"], "gpu-1"), (placed["gpu-2"], "gpu-2")]


@pytest.mark.django_db
def test_stopping_a_nodes_replica_is_sent_to_that_node(two_nodes, pool_settings, monkeypatch) -> None:
    from inference import tasks

    first, second, deployment = two_nodes
    sent: list[tuple[list[int], str]] = []
    monkeypatch.setattr(tasks.reconcile_node, "apply_async", lambda *, args, queue: sent.append((args, queue)))
    monkeypatch.setattr(reconciler, "_start", lambda *a: None)
    tasks.reconcile_pool()
    on_second = Replica.objects.get(deployment=deployment, node=second)
    Replica.objects.filter(pk=on_second.pk).update(pid=4_000_000, endpoint="http://10.0.0.2:8100")
    stops: list[int] = []
    monkeypatch.setattr("inference.backends.local.LocalBackend.stop",
                        lambda self, ref, grace_seconds: stops.append(ref.replica_id))
    assert on_second.ordinal == 1  # placed in name order: ordinal 0 on gpu-1, ordinal 1 on gpu-2
    deployment_scale(deployment=deployment, replicas=1, actor="test")
    sent.clear()
    tasks.reconcile_pool()
    assert Replica.objects.get(pk=on_second.pk).state == "draining" and stops == []  # not stopped centrally
    assert sent == [([first.pk], "node.gpu-1"), ([second.pk], "node.gpu-2")]
    pool_settings.INFERENCE_NODE_NAME = "gpu-1"
    reconciler.reconcile_node_once(first.pk)
    assert stops == []
    pool_settings.INFERENCE_NODE_NAME = "gpu-2"
    reconciler.reconcile_node_once(second.pk)
    assert stops == [on_second.pk]
    assert Replica.objects.get(pk=on_second.pk).state == "stopped"  # its (made-up) process is long gone


@pytest.mark.django_db
def test_without_node_queues_one_worker_does_everything_and_sends_nothing(tenant, pool_settings,
                                                                           monkeypatch) -> None:
    from inference import tasks

    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    sent: list[object] = []
    monkeypatch.setattr(tasks.reconcile_node, "apply_async", lambda **kwargs: sent.append(kwargs))
    started: list[str] = []
    monkeypatch.setattr(reconciler, "_start", lambda replica, node, gpus, port: started.append(node.name))
    request(tenant)
    tasks.reconcile_pool()
    assert started == ["gpu-1"] and sent == []


# --- a replica's last log lines, read by the worker that can reach them -----------------------------------


@pytest.fixture
def log_cache(settings, tmp_path):
    """A cache the workers and the web processes share (Redis in production, files here), new for each test."""
    from django.core.cache import cache

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.filebased.FileBasedCache",
                                   "LOCATION": str(tmp_path / "cache")}}
    return cache


def _placed_replica(tenant, pool_settings, **fields) -> Replica:
    deployment = request(tenant)
    reconciler.step_replica_rows()
    replica = Replica.objects.get(deployment=deployment)
    Replica.objects.filter(pk=replica.pk).update(node=Node.objects.get(name="gpu-1"), state="ready", **fields)
    return Replica.objects.select_related("node", "deployment").get(pk=replica.pk)


@pytest.mark.django_db
def test_a_local_replicas_last_log_lines_are_read_into_the_cache_without_its_key(
        tenant, pool_settings, log_cache, monkeypatch) -> None:
    from inference import tasks
    from inference.backends.local import LocalBackend
    from inference.models import replica_key
    from inference.services import replica_log_cached

    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    log_dir = Path(pool_settings.INFERENCE_LOG_DIR)
    log_dir.mkdir(parents=True)
    replica = _placed_replica(tenant, pool_settings, key_salt="s4lt", log_path=str(log_dir / "replica.log"))
    secret = replica_key(replica.pk, "s4lt")
    # 68 KB: more than the 64 KB read, so only the end of the file is read and its cut first line dropped
    head = "".join(f"early line {i:05d} " + "." * 50 + "\n" for i in range(1000))
    (log_dir / "replica.log").write_bytes(head.encode() + f"INFO key {secret} loaded\n".encode()
                                          + b"caf\xe9\nINFO Uvicorn running\n")
    tasks.read_replica_log(replica.pk, tenant[0].pk + 1000)  # another organisation's id: nothing is read
    assert replica_log_cached(replica=replica) == (None, None)

    before = timezone.now()
    tasks.read_replica_log.delay(replica.pk, tenant[0].pk)
    entry, pending = replica_log_cached(replica=replica)
    assert pending is None and entry["error"] == ""
    assert entry["lines"][-3:] == ["INFO key [vLLM key] loaded", "caf\ufffd", "INFO Uvicorn running"]
    assert len(entry["lines"]) == 200 and entry["lines"][0].startswith("early line 00803 ")
    assert not any(secret in line for line in entry["lines"])
    assert before <= dt.datetime.fromisoformat(entry["read_at"]) <= timezone.now()
    everything = LocalBackend().log_tail(reconciler.replica_ref(replica), lines=5000)
    assert everything[0].startswith("early line ") and len(everything[0]) == 67  # complete, though cut in the file
    assert "early line 00000 " not in everything[0] and len(everything) < 1003  # only the last 64 KB are read


@pytest.mark.django_db
def test_a_log_file_outside_the_log_directory_is_not_read(tenant, pool_settings, log_cache, monkeypatch,
                                                          tmp_path) -> None:
    from inference.backends.base import LogUnavailable, ReplicaRef
    from inference.backends.local import LocalBackend
    from inference.services import replica_log_read

    monkeypatch.setattr("inference.services.reconcile_soon", lambda: None)
    Path(pool_settings.INFERENCE_LOG_DIR).mkdir(parents=True)
    (tmp_path / "secret.txt").write_text("SECRET_KEY=do-not-show\n")
    outside = f"{pool_settings.INFERENCE_LOG_DIR}/../secret.txt"
    ref = ReplicaRef(replica_id=1, deployment_id=1, endpoint="", log_path=outside)
    with pytest.raises(LogUnavailable, match="outside INFERENCE_LOG_DIR"):
        LocalBackend().log_tail(ref, lines=10)
    replica = _placed_replica(tenant, pool_settings, log_path=outside)
    entry = replica_log_read(replica=replica)
    assert entry["lines"] == [] and "outside INFERENCE_LOG_DIR" in entry["error"]
    Replica.objects.filter(pk=replica.pk).update(log_path=f"{pool_settings.INFERENCE_LOG_DIR}/gone.log")
    replica.refresh_from_db()
    assert replica_log_read(replica=replica)["error"].startswith("No log file gone.log on host ")


@pytest.mark.django_db
def test_a_local_replicas_log_is_read_by_the_worker_on_its_nodes_queue(two_nodes, pool_settings, log_cache,
                                                                       monkeypatch) -> None:
    from inference import tasks
    from inference.services import replica_log_cached, replica_log_request

    _, second, deployment = two_nodes
    monkeypatch.setattr(tasks.reconcile_node, "apply_async", lambda *, args, queue: None)
    monkeypatch.setattr(reconciler, "_start", lambda *a: None)
    tasks.reconcile_pool()
    on_second = Replica.objects.select_related("node", "deployment").get(deployment=deployment, node=second)
    log_dir = Path(pool_settings.INFERENCE_LOG_DIR)
    log_dir.mkdir(parents=True)
    (log_dir / "r.log").write_text("INFO on gpu-2\n")
    Replica.objects.filter(pk=on_second.pk).update(log_path=str(log_dir / "r.log"))
    on_second.refresh_from_db()
    sent: list[tuple[list[int], str | None]] = []
    monkeypatch.setattr(tasks.read_replica_log, "apply_async", lambda *, args, queue: sent.append((args, queue)))

    assert replica_log_request(replica=on_second) is True
    assert sent == [([on_second.pk, deployment.organisation_id], "node.gpu-2")]
    entry, pending = replica_log_cached(replica=on_second)
    assert entry is None and pending is not None
    assert replica_log_request(replica=on_second) is True  # one read awaited at a time
    assert len(sent) == 1

    pool_settings.INFERENCE_NODE_NAME = "gpu-1"  # the read reached the wrong host: it says so, reads nothing
    tasks.read_replica_log(on_second.pk, deployment.organisation_id)
    entry, pending = replica_log_cached(replica=on_second)
    assert entry["lines"] == [] and "reached the worker of node gpu-1, not node gpu-2's" in entry["error"]
    assert pending is None
    pool_settings.INFERENCE_NODE_NAME = "gpu-2"
    tasks.read_replica_log(on_second.pk, deployment.organisation_id)
    assert replica_log_cached(replica=on_second)[0]["lines"] == ["INFO on gpu-2"]

    pool_settings.INFERENCE_NODE_QUEUES = False  # one worker does everything: the default queue
    log_cache.clear()
    replica_log_request(replica=on_second)
    assert sent[-1] == ([on_second.pk, deployment.organisation_id], None)
    pool_settings.INFERENCE_NODE_QUEUES = True  # a kubernetes node's log is an API call any worker makes
    Node.objects.filter(pk=second.pk).update(backend="kubernetes")
    on_second.node.refresh_from_db()
    log_cache.clear()
    replica_log_request(replica=on_second)
    assert sent[-1] == ([on_second.pk, deployment.organisation_id], None)

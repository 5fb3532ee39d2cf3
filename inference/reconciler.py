"""Converge the world to the deployments in the database. Each function is a step that reports whether it
did anything, so a test drives one step and looks at the database (and a Celery task loops over them).

Safe to run twice and after the worker running it crashed: every state change is a conditional UPDATE from
the state the step read (a second worker that lost the race sees "0 rows" and leaves it), GPUs are held by
a unique allocation row, and a replica that was being started when a worker died is found again by its pid.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from pathlib import Path

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from config.observability import RECONCILE_DURATION
from governance.audit import audit_record
from inference import backends
from inference.backends.base import Backend, ReplicaRef, ReplicaSpec
from inference.backends.local import process_start_time
from inference.models import GPU, Deployment, DeploymentState, GpuAllocation, Node, Replica, ReplicaState
from inference.services import replica_key

logger = logging.getLogger(__name__)
ACTIVE = [ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY]


def backend_for(node: Node) -> Backend:
    return backends.backend_for(node.backend)


def _ref(replica: Replica) -> ReplicaRef:
    return ReplicaRef(replica_id=replica.pk, deployment_id=replica.deployment_id, endpoint=replica.endpoint,
                      pid=replica.pid, pod_name=replica.pod_name,
                      extra={"start_time": replica.metrics.get("_start_time", "")} if replica.pid else {})


def _move(replica: Replica, old: str, new: str, **fields: object) -> bool:
    """Conditional state change: True if this caller moved it, False if someone else already did."""
    changed = Replica.objects.filter(pk=replica.pk, state=old).update(state=new, **fields)
    if changed:
        replica.state = new
        for name, value in fields.items():
            setattr(replica, name, value)
    return bool(changed)


# --- desired replica rows -----------------------------------------------------------------------------------


def step_replica_rows() -> bool:
    """Create missing replica rows (as scheduling) and mark surplus ones draining."""
    did = False
    for deployment in Deployment.objects.exclude(state__in=[DeploymentState.FAILED, DeploymentState.STOPPED]):
        wanted = 0 if deployment.deleted else deployment.replicas
        current = {r.ordinal: r for r in deployment.replica_set.exclude(state=ReplicaState.STOPPED)}
        for ordinal in range(wanted):
            if ordinal not in current:
                try:
                    Replica.objects.create(deployment=deployment, ordinal=ordinal, state=ReplicaState.SCHEDULING,
                                           key_salt=secrets.token_hex(16))
                    did = True
                except IntegrityError:  # a stopped row with this ordinal: reuse it
                    did |= bool(Replica.objects.filter(deployment=deployment, ordinal=ordinal,
                                                       state=ReplicaState.STOPPED).update(
                        state=ReplicaState.SCHEDULING, restarts=0, next_start_at=None, state_reason="",
                        key_salt=secrets.token_hex(16)))
        for ordinal, replica in current.items():
            if ordinal >= wanted and replica.state != ReplicaState.DRAINING:
                did |= _move(replica, replica.state, ReplicaState.DRAINING, state_reason="scaled down or deleted")
    return did


# --- scheduling and starting --------------------------------------------------------------------------------


def _free_gpus(node: Node) -> list[GPU]:
    return list(GPU.objects.filter(node=node, allocation__isnull=True).order_by("index"))


def _free_port(node: Node) -> int | None:
    low, high = settings.INFERENCE_PORT_RANGE
    used = set(Replica.objects.filter(node=node, port__isnull=False).exclude(state=ReplicaState.STOPPED)
               .values_list("port", flat=True))
    for port in range(low, high + 1):
        if port not in used:
            return port
    return None


def _place(replica: Replica) -> tuple[Node, list[GPU], int] | str:
    """Reserve a node, GPUs and a port for the replica in one transaction, or say why not."""
    deployment = replica.deployment
    nodes = Node.objects.filter(active=True).order_by("name")
    if deployment.device == Deployment.Device.CPU:
        nodes = nodes.filter(cpu_only=True)
    else:
        nodes = nodes.filter(cpu_only=False)
    reasons = []
    for node in nodes:
        with transaction.atomic():
            locked = Node.objects.select_for_update().get(pk=node.pk)  # one placement per node at a time
            port = _free_port(locked)
            if port is None:
                reasons.append(f"{node.name}: no free port")
                continue
            if deployment.device == Deployment.Device.CPU:
                running = Replica.objects.filter(node=locked).exclude(
                    state__in=[ReplicaState.STOPPED, ReplicaState.FAILED, ReplicaState.SCHEDULING]).count()
                if running >= locked.cpu_slots:
                    reasons.append(f"{node.name}: {running} of {locked.cpu_slots} CPU slots in use")
                    continue
                gpus: list[GPU] = []
            else:
                free = _free_gpus(locked)
                if len(free) < deployment.tensor_parallel_size:
                    reasons.append(f"{node.name}: {len(free)} free GPUs, {deployment.tensor_parallel_size} needed")
                    continue
                gpus = free[: deployment.tensor_parallel_size]
            try:
                with transaction.atomic():
                    GpuAllocation.objects.bulk_create([GpuAllocation(gpu=gpu, replica=replica) for gpu in gpus])
                    claimed = Replica.objects.filter(pk=replica.pk, state=ReplicaState.SCHEDULING).update(
                        state=ReplicaState.STARTING, node=locked, port=port, state_reason="starting",
                        started_at=timezone.now(), consecutive_health_failures=0, last_health_ok=False)
                    if not claimed:
                        raise IntegrityError("replica already placed by another worker")
            except IntegrityError:
                return "placed concurrently"
            return locked, gpus, port
    if not reasons:
        kind = "CPU-only" if deployment.device == Deployment.Device.CPU else "GPU"
        reasons.append(f"no active {kind} node")
    return "no capacity: " + "; ".join(reasons)


def step_schedule() -> bool:
    """Place and start replicas waiting in scheduling whose backoff has passed."""
    did = False
    now = timezone.now()
    waiting = Replica.objects.filter(state=ReplicaState.SCHEDULING, deployment__deleted=False).filter(
        Q(next_start_at__isnull=True) | Q(next_start_at__lte=now)).select_related("deployment", "deployment__organisation")
    for replica in waiting:
        placed = _place(replica)
        if isinstance(placed, str):
            if placed != "placed concurrently" and replica.state_reason != placed:
                Replica.objects.filter(pk=replica.pk, state=ReplicaState.SCHEDULING).update(state_reason=placed)
                did = True
            continue
        node, gpus, port = placed
        did = True
        _start(replica, node, gpus, port)
    return did


def _start(replica: Replica, node: Node, gpus: list[GPU], port: int) -> None:
    deployment = replica.deployment
    spec = ReplicaSpec(
        replica_id=replica.pk, deployment_id=deployment.pk, organisation_slug=deployment.organisation.slug,
        product_id=deployment.product_id, served_model_name=deployment.served_model_name,
        model_source=deployment.model_source, dtype=deployment.dtype, max_model_len=deployment.max_model_len,
        tensor_parallel_size=deployment.tensor_parallel_size,
        gpu_memory_utilization=deployment.gpu_memory_utilization, quantization=deployment.quantization,
        lora_modules=dict(deployment.lora_adapters), extra_args=list(deployment.extra_args),
        gpu_indices=[g.index for g in gpus], node_name=node.name, node_address=node.address, port=port,
        api_key=replica_key(replica.pk, replica.key_salt),
    )
    try:
        handle = backend_for(node).start(spec)
    except Exception as exc:  # the backend could not even start it: count as a crash
        logger.exception("replica %s failed to start", replica.pk)
        _crashed(replica, f"could not start: {type(exc).__name__}: {exc}")
        return
    metrics = {"_start_time": process_start_time(handle.pid)} if handle.pid else {}
    Replica.objects.filter(pk=replica.pk).update(endpoint=handle.endpoint, pid=handle.pid, pod_name=handle.pod_name,
                                                 log_path=handle.log_path, metrics=metrics)
    logger.info("replica %s of deployment %s starting on %s port %s", replica.pk, deployment.pk, node.name, port)


def _release(replica: Replica) -> None:
    GpuAllocation.objects.filter(replica=replica).delete()


def _log_tail(replica: Replica, lines: int = 5) -> str:
    if not replica.log_path:
        return ""
    try:
        text = Path(replica.log_path).read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " | ".join(text[-lines:])[-600:]


def _crashed(replica: Replica, detail: str) -> None:
    """A replica died: restart it after a backoff, or fail the deployment after too many crashes.

    Whatever is left of it is stopped first: when vLLM's main process dies, its engine and worker children
    (a gigabyte or more) can live on in the process group.
    """
    replica.refresh_from_db()
    if replica.node is not None and (replica.pid or replica.pod_name):
        try:
            backend_for(replica.node).stop(_ref(replica), grace_seconds=2)
        except Exception:
            logger.exception("could not clean up after replica %s", replica.pk)
    restarts = replica.restarts + 1
    deployment = replica.deployment
    tail = _log_tail(replica)
    reason = f"{detail}" + (f"; last log lines: {tail}" if tail else "")
    with transaction.atomic():
        _release(replica)
        if restarts > settings.INFERENCE_MAX_RESTARTS:
            if _move(replica, replica.state, ReplicaState.FAILED, restarts=restarts, state_reason=reason, pid=None):
                failed = Deployment.objects.filter(pk=deployment.pk).exclude(state=DeploymentState.FAILED).update(
                    state=DeploymentState.FAILED,
                    state_reason=f"replica {replica.ordinal} crashed {restarts} times: {reason}")
                if failed:
                    audit_record(action="deployment.failed", actor="reconciler", organisation=deployment.organisation,
                                 obj=deployment, data={"reason": reason[:500]})
            return
        backoff = min(300, 5 * 2 ** (restarts - 1))
        _move(replica, replica.state, ReplicaState.SCHEDULING, restarts=restarts, pid=None, port=None, node=None,
              next_start_at=timezone.now() + dt.timedelta(seconds=backoff),
              state_reason=f"restarting in {backoff} s after: {reason}")
        Deployment.objects.filter(pk=deployment.pk).update(crash_count=deployment.crash_count + 1)


# --- health and metrics -------------------------------------------------------------------------------------


def read_metrics(text: str) -> dict[str, float]:
    """The load figures Corral routes and reports on, from vLLM's Prometheus exposition."""
    wanted = {
        "vllm:num_requests_running": "requests_running",
        "vllm:num_requests_waiting": "requests_waiting",
        "vllm:kv_cache_usage_perc": "kv_cache_usage",
        "vllm:gpu_cache_usage_perc": "kv_cache_usage",
        "vllm:prompt_tokens": "prompt_tokens",
        "vllm:generation_tokens": "generation_tokens",
        "vllm:request_success": "requests_succeeded",
    }
    out: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            base = sample.name.removesuffix("_total")
            if base in wanted and not sample.name.endswith(("_created", "_bucket", "_sum", "_count")):
                key = wanted[base]
                out[key] = out.get(key, 0.0) + float(sample.value)
    return out


def _probe(replica: Replica) -> tuple[bool, dict[str, float], str]:
    try:
        with httpx.Client(timeout=httpx.Timeout(3.0, connect=1.0), trust_env=False) as client:
            health = client.get(f"{replica.endpoint}/health")
            if health.status_code != 200:
                return False, {}, f"/health answered {health.status_code}"
            metrics_response = client.get(f"{replica.endpoint}/metrics")
            metrics = read_metrics(metrics_response.text) if metrics_response.status_code == 200 else {}
            return True, metrics, "healthy"
    except (httpx.HTTPError, ValueError) as exc:
        return False, {}, f"{type(exc).__name__}: {exc}"[:300]


def step_observe() -> bool:
    """Check every active replica: still running, healthy, loaded how; restart the dead, demote the sick."""
    did = False
    now = timezone.now()
    for replica in Replica.objects.filter(state__in=ACTIVE).select_related("deployment", "node"):
        observation = backend_for(replica.node).observe(_ref(replica)) if replica.node else None
        if observation is None or not observation.running:
            _crashed(replica, observation.detail if observation else "no node")
            did = True
            continue
        healthy, metrics, detail = _probe(replica)
        metrics = {**metrics, "_start_time": replica.metrics.get("_start_time", "")}
        if healthy:
            target = ReplicaState.READY
            if replica.state != target:
                did |= _move(replica, replica.state, target, last_health_at=now, last_health_ok=True,
                             consecutive_health_failures=0, metrics=metrics, state_reason="healthy")
            else:
                Replica.objects.filter(pk=replica.pk).update(last_health_at=now, last_health_ok=True,
                                                             consecutive_health_failures=0, metrics=metrics)
            continue
        failures = replica.consecutive_health_failures + 1
        if replica.state == ReplicaState.STARTING:
            started = replica.started_at or now
            if (now - started).total_seconds() > settings.INFERENCE_STARTUP_TIMEOUT_SECONDS:
                backend_for(replica.node).stop(_ref(replica), grace_seconds=settings.INFERENCE_STOP_GRACE_SECONDS)
                _crashed(replica, f"not healthy {settings.INFERENCE_STARTUP_TIMEOUT_SECONDS} s after start ({detail})")
                did = True
            else:
                Replica.objects.filter(pk=replica.pk).update(last_health_at=now, last_health_ok=False)
            continue
        if replica.state == ReplicaState.READY and failures >= settings.INFERENCE_UNHEALTHY_AFTER:
            did |= _move(replica, ReplicaState.READY, ReplicaState.UNHEALTHY, last_health_at=now,
                         last_health_ok=False, consecutive_health_failures=failures,
                         state_reason=f"left the routing set: {detail}")
        else:
            Replica.objects.filter(pk=replica.pk).update(last_health_at=now, last_health_ok=False,
                                                         consecutive_health_failures=failures)
    return did


# --- draining and stopping ----------------------------------------------------------------------------------


def step_drain() -> bool:
    """Stop replicas marked draining (scaled down or deleted), free their GPUs and ports."""
    did = False
    for replica in Replica.objects.filter(state=ReplicaState.DRAINING).select_related("node", "deployment"):
        if replica.node is not None and (replica.pid or replica.pod_name):
            backend_for(replica.node).stop(_ref(replica), grace_seconds=settings.INFERENCE_STOP_GRACE_SECONDS)
        with transaction.atomic():
            _release(replica)
            did |= _move(replica, ReplicaState.DRAINING, ReplicaState.STOPPED, pid=None, port=None,
                         state_reason="stopped")
    return did


def step_deployment_states() -> bool:
    """Summarise each deployment's state from its replicas."""
    did = False
    for deployment in Deployment.objects.exclude(state__in=[DeploymentState.FAILED, DeploymentState.STOPPED]):
        counts = dict(deployment.replica_set.values_list("state").annotate(n=Count("id")))
        if deployment.deleted:
            state, reason = ((DeploymentState.STOPPED, "deleted; every replica stopped")
                             if not any(counts.get(s) for s in [*ACTIVE, ReplicaState.DRAINING, ReplicaState.SCHEDULING])
                             else (DeploymentState.DRAINING, "deleting: stopping replicas"))
        elif deployment.replicas == 0:
            state, reason = DeploymentState.STOPPED if not any(counts.get(s) for s in ACTIVE) else \
                DeploymentState.DRAINING, "scaled to zero"
        elif counts.get(ReplicaState.READY, 0) >= deployment.replicas:
            state, reason = DeploymentState.READY, f"{deployment.replicas} replica(s) ready"
        elif counts.get(ReplicaState.STARTING) or counts.get(ReplicaState.READY) or counts.get(ReplicaState.UNHEALTHY):
            state, reason = DeploymentState.STARTING, (f"{counts.get(ReplicaState.READY, 0)} of "
                                                       f"{deployment.replicas} replica(s) ready")
        elif counts.get(ReplicaState.SCHEDULING):
            waiting = deployment.replica_set.filter(state=ReplicaState.SCHEDULING).first()
            state, reason = DeploymentState.SCHEDULING, (waiting.state_reason if waiting else "") or "scheduling"
        else:
            state, reason = DeploymentState.PENDING, "waiting for the reconciler"
        if (deployment.state, deployment.state_reason) != (state, reason):
            changed = Deployment.objects.filter(pk=deployment.pk, state=deployment.state).update(
                state=state, state_reason=reason)
            if changed and deployment.state != state:
                audit_record(action="deployment.state", actor="reconciler", organisation=deployment.organisation,
                             obj=deployment, data={"from": deployment.state, "to": state, "reason": reason[:300]})
            did |= bool(changed)
    return did


def reconcile_once() -> bool:
    """One pass of every step, in order. True if anything changed."""
    did = False
    with RECONCILE_DURATION.time():
        for step in (step_replica_rows, step_drain, step_schedule, step_observe, step_deployment_states):
            did |= step()
    return did

"""Converge the world to the deployments in the database. Each function is a step that reports whether it
did anything, so a test drives one step and looks at the database (and a Celery task loops over them).

Safe to run twice and after the worker running it crashed: every state change is a conditional UPDATE from
the state the step read (a second worker that lost the race sees "0 rows" and leaves it), GPUs are held by
a unique allocation row, and a replica that was being started when a worker died is found again by its pid.

Nothing here waits for a replica to go: stopping asks the backend once, records ``stopping_until`` (the end of
the grace period) and finishes on a later pass, when the backend says nothing is left.

Where the work runs: by default every step runs in ``reconcile_pool``, in whichever worker takes it. With
INFERENCE_NODE_QUEUES on, the steps that start, observe and stop replicas of a local node run in
``reconcile_node`` on that node's own Celery queue (``node.<name>``), so several GPU hosts serve one pool: the
central pass places replicas (database only) and ``node_work`` says which nodes to send work to.
"""

from __future__ import annotations

import datetime as dt
import logging
import secrets
from collections.abc import Collection
from pathlib import Path
from typing import Literal

import httpx
from django.conf import settings
from django.db import IntegrityError, transaction
from django.db.models import Count, Q, QuerySet
from django.utils import timezone
from prometheus_client.parser import text_string_to_metric_families

from access.audit import audit_record
from config.observability import RECONCILE_DURATION
from inference import backends
from inference.backends.base import Backend, ReplicaRef, ReplicaSpec
from inference.backends.local import process_start_time
from inference.models import GPU, Deployment, DeploymentState, GpuAllocation, Node, Replica, ReplicaState, replica_key
from inference.models import Backend as BackendName

logger = logging.getLogger(__name__)
ACTIVE = [ReplicaState.STARTING, ReplicaState.READY, ReplicaState.UNHEALTHY]


def backend_for(node: Node) -> Backend:
    return backends.backend_for(node.backend)


def node_queue(node_name: str) -> str:
    """The Celery queue of a node's own worker (INFERENCE_NODE_QUEUES)."""
    return f"node.{node_name}"


def routed_node_ids() -> set[int]:
    """Nodes whose replicas are started, observed and stopped by their own host's worker: every local node
    when INFERENCE_NODE_QUEUES is on (a kubernetes node's work is API calls, which any worker can make)."""
    if not settings.INFERENCE_NODE_QUEUES:
        return set()
    return set(Node.objects.filter(backend=BackendName.LOCAL).values_list("pk", flat=True))


def node_work(node_ids: Collection[int]) -> list[tuple[int, str]]:
    """(node id, queue) of each of ``node_ids`` with a replica to start, watch or stop."""
    busy = (Node.objects.filter(pk__in=node_ids, replicas__state__in=[*ACTIVE, ReplicaState.DRAINING])
            .distinct().order_by("name").values_list("pk", "name"))
    return [(pk, node_queue(name)) for pk, name in busy]


def _on_nodes(replicas: QuerySet[Replica], only_node: int | None, skip_nodes: Collection[int]) -> QuerySet[Replica]:
    if only_node is not None:
        replicas = replicas.filter(node_id=only_node)
    if skip_nodes:
        replicas = replicas.exclude(node_id__in=skip_nodes)
    return replicas


def replica_ref(replica: Replica) -> ReplicaRef:
    """What a backend needs to find the replica again (its ids, process or pod, log file)."""
    return ReplicaRef(replica_id=replica.pk, deployment_id=replica.deployment_id, endpoint=replica.endpoint,
                      pid=replica.pid, pod_name=replica.pod_name, log_path=replica.log_path,
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


def step_schedule(*, skip_nodes: Collection[int] = ()) -> bool:
    """Place and start replicas waiting in scheduling whose backoff has passed. A replica placed on one of
    ``skip_nodes`` is left in starting for that node's own worker to start (step_start)."""
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
        if node.pk not in skip_nodes:
            _start(replica, node, gpus, port)
    return did


def step_start(*, only_node: int | None = None, skip_nodes: Collection[int] = ()) -> bool:
    """Start replicas placed (starting, with GPUs and a port) but not started yet: the work a node's own
    worker does for the replicas the central pass placed on it."""
    did = False
    placed = (Replica.objects.filter(state=ReplicaState.STARTING, endpoint="", pid__isnull=True, pod_name="",
                                     node__isnull=False)
              .select_related("deployment", "deployment__organisation", "node"))
    for replica in _on_nodes(placed, only_node, skip_nodes):
        node, port = replica.node, replica.port
        if node is None or port is None:  # not reached: placement sets both in one update
            continue
        gpus = list(GPU.objects.filter(allocation__replica=replica).order_by("index"))
        _start(replica, node, gpus, port)
        did = True
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
    recorded = Replica.objects.filter(pk=replica.pk, state=ReplicaState.STARTING).update(
        endpoint=handle.endpoint, pid=handle.pid, pod_name=handle.pod_name, log_path=handle.log_path,
        metrics=metrics)
    if not recorded:  # drained or deleted while it was being started: nothing will ever stop it but this
        backend_for(node).kill(ReplicaRef(replica_id=replica.pk, deployment_id=deployment.pk,
                                          endpoint=handle.endpoint, pid=handle.pid, pod_name=handle.pod_name))
        return
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


def _crashed(replica: Replica, detail: str) -> bool:
    """A replica died: restart it after a backoff, or fail the deployment after too many crashes.

    Whatever is left of it is killed first: when vLLM's main process dies, its engine and worker children
    (a gigabyte or more) can live on in the process group. Its GPUs are released only once they are gone (a
    later pass calls this again) or the backend's slack has passed; nothing here waits.
    """
    replica.refresh_from_db()
    if replica.node is not None and (replica.pid or replica.pod_name):
        remains = _kill_remains(replica, replica.node, detail)
        if remains != "gone":
            return remains == "began waiting"
    restarts = replica.restarts + 1
    deployment = replica.deployment
    tail = _log_tail(replica)
    reason = f"{detail}" + (f"; last log lines: {tail}" if tail else "")
    with transaction.atomic():
        _release(replica)
        if restarts > settings.INFERENCE_MAX_RESTARTS:
            if _move(replica, replica.state, ReplicaState.FAILED, restarts=restarts, state_reason=reason, pid=None,
                     stopping_until=None):
                failed = Deployment.objects.filter(pk=deployment.pk).exclude(state=DeploymentState.FAILED).update(
                    state=DeploymentState.FAILED,
                    state_reason=f"replica {replica.ordinal} crashed {restarts} times: {reason}")
                if failed:
                    audit_record(action="deployment.failed", actor="reconciler", organisation=deployment.organisation,
                                 obj=deployment, data={"reason": reason[:500]})
            return True
        backoff = min(300, 5 * 2 ** (restarts - 1))
        _move(replica, replica.state, ReplicaState.SCHEDULING, restarts=restarts, pid=None, port=None, node=None,
              stopping_until=None, endpoint="", pod_name="",
              next_start_at=timezone.now() + dt.timedelta(seconds=backoff),
              state_reason=f"restarting in {backoff} s after: {reason}")
        Deployment.objects.filter(pk=deployment.pk).update(crash_count=deployment.crash_count + 1)
    return True


def _kill_remains(replica: Replica, node: Node, detail: str) -> Literal["gone", "began waiting", "waiting"]:
    """Kill what is left of a crashed replica: "gone" once nothing is (or the backend's slack is over). While
    its processes or pod are still going: "began waiting" the first time (the replica leaves the routing set
    and records until when it is waited for), then "waiting"."""
    backend = backend_for(node)
    ref = replica_ref(replica)
    now = timezone.now()
    try:
        backend.kill(ref)
        if backend.stopped(ref):
            return "gone"
    except Exception:
        logger.exception("could not clean up after replica %s", replica.pk)
        return "gone"
    if replica.stopping_until is None:
        Replica.objects.filter(pk=replica.pk, state=replica.state).update(
            stopping_until=now + dt.timedelta(seconds=backend.stop_slack_seconds), last_health_ok=False,
            state_reason=f"{detail}; waiting for what is left of it to end")
        return "began waiting"
    if now < replica.stopping_until:
        return "waiting"
    logger.warning("replica %s: still not gone %.0f s after it was killed", replica.pk, backend.stop_slack_seconds)
    return "gone"


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


def step_observe(*, only_node: int | None = None, skip_nodes: Collection[int] = ()) -> bool:
    """Check every active replica: still running, healthy, loaded how; restart the dead, demote the sick."""
    did = False
    now = timezone.now()
    timeout = settings.INFERENCE_STARTUP_TIMEOUT_SECONDS
    active = Replica.objects.filter(state__in=ACTIVE).select_related("deployment", "node")
    for replica in _on_nodes(active, only_node, skip_nodes):
        if replica.state == ReplicaState.STARTING and not (replica.endpoint or replica.pid or replica.pod_name):
            # Placed, not started yet: its node's worker starts it (step_start).
            if (now - (replica.started_at or now)).total_seconds() > timeout:
                queue = node_queue(replica.node.name) if replica.node else "its node's queue"
                did |= _crashed(replica, f"not started {timeout} s after placement (is a worker consuming {queue}?)")
            continue
        observation = backend_for(replica.node).observe(replica_ref(replica)) if replica.node else None
        if observation is None or not observation.running:
            did |= _crashed(replica, observation.detail if observation else "no node")
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
            if (now - started).total_seconds() > timeout:
                # The same timeout as the kubernetes backend's startup probe (periodSeconds x failureThreshold).
                did |= _crashed(replica, f"not healthy {timeout} s after start ({detail})")
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


def step_drain(*, only_node: int | None = None, skip_nodes: Collection[int] = ()) -> bool:
    """Stop replicas marked draining (scaled down or deleted), free their GPUs and ports once they are gone.

    The first pass asks the backend to stop the replica and records the end of its grace period
    (``stopping_until``); later passes finish it when the backend says it is gone, kill it once the grace
    period is over, and give up waiting (with a warning) the backend's slack after that.
    """
    did = False
    draining = Replica.objects.filter(state=ReplicaState.DRAINING).select_related("node", "deployment")
    for replica in _on_nodes(draining, only_node, skip_nodes):
        did |= _drain_one(replica)
    return did


def _drain_one(replica: Replica) -> bool:
    now = timezone.now()
    if replica.node is not None and (replica.pid or replica.pod_name):
        backend = backend_for(replica.node)
        ref = replica_ref(replica)
        grace = settings.INFERENCE_STOP_GRACE_SECONDS
        if replica.stopping_until is None:
            backend.stop(ref, grace_seconds=grace)
            until = now + dt.timedelta(seconds=grace)
            asked = Replica.objects.filter(pk=replica.pk, state=ReplicaState.DRAINING,
                                           stopping_until__isnull=True).update(
                stopping_until=until, state_reason=f"stopping: grace period until {until:%H:%M:%S} UTC")
            if not backend.stopped(ref):
                return bool(asked)
        elif not backend.stopped(ref):
            if now < replica.stopping_until:
                return False
            backend.kill(ref)
            if not backend.stopped(ref):
                waited = (now - replica.stopping_until).total_seconds()
                if waited < backend.stop_slack_seconds:
                    return False
                logger.warning("replica %s still not gone %.0f s after its grace period; releasing it", replica.pk,
                               waited)
    with transaction.atomic():
        _release(replica)
        return _move(replica, ReplicaState.DRAINING, ReplicaState.STOPPED, pid=None, port=None, stopping_until=None,
                     state_reason="stopped")


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


def reconcile_once(*, skip_nodes: Collection[int] = ()) -> bool:
    """One pass of every step, in order, leaving the replicas on ``skip_nodes`` (routed_node_ids) to their
    own nodes' workers. True if anything changed."""
    with RECONCILE_DURATION.time():
        did = step_replica_rows()
        did |= step_drain(skip_nodes=skip_nodes)
        did |= step_schedule(skip_nodes=skip_nodes)
        did |= step_observe(skip_nodes=skip_nodes)
        return step_deployment_states() or did


def reconcile_node_once(node_id: int) -> bool:
    """One pass of the steps that touch one node's replicas, on that node's worker. A worker that is not the
    node's (INFERENCE_NODE_NAME says which node it runs on) does nothing: it would start vLLM on the wrong host.
    """
    node = Node.objects.filter(pk=node_id).first()
    if node is None:
        return False
    here = settings.INFERENCE_NODE_NAME
    if here and here != node.name:
        logger.error("work for node %s reached the worker of node %s: check its queues (-Q %s)", node.name, here,
                     node_queue(here))
        return False
    with RECONCILE_DURATION.time():
        did = step_drain(only_node=node_id)
        did |= step_start(only_node=node_id)
        return step_observe(only_node=node_id) or did

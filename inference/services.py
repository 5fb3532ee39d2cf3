"""Writes of the inference pool: request, scale and delete deployments, with every refusal the licence needs."""

from __future__ import annotations

import datetime as dt
import logging
import re
from pathlib import Path
from typing import TypedDict

from django.conf import settings
from django.core.cache import cache, caches
from django.core.cache.backends.locmem import LocMemCache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import QuerySet, Sum
from django.utils import timezone

from access.audit import audit_record
from access.models import Organisation
from governance import queue as governance_queue
from governance.models import Alert
from inference import queue
from inference.models import Backend as BackendName
from inference.models import Deployment, GpuQuota, Replica, replica_key
from licensing.eu_multimodal import LEVEL as EU_MULTIMODAL
from licensing.eu_multimodal import eu_multimodal_refusal
from licensing.models import BaseModel, LicenceVersion, Product
from licensing.selectors import organisation_exemption

logger = logging.getLogger(__name__)

DTYPES = {"auto", "float16", "bfloat16", "float32"}
QUANTIZATIONS = {"", "awq", "gptq", "fp8", "bitsandbytes", "compressed-tensors"}
_REPO_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
_SERVED_NAME = re.compile(r"^[A-Za-z0-9][\w.:-]{0,99}$")
_LORA_NAME = re.compile(r"^[A-Za-z0-9][\w.-]{0,63}$")

# Extra vLLM arguments a tenant may pass, with the type of their value (None: a flag without value).
# Anything touching the host, the network, the API key, trust_remote_code or code loading is not here.
ALLOWED_ARGS: dict[str, type | None] = {
    "--max-num-seqs": int,
    "--max-num-batched-tokens": int,
    "--seed": int,
    "--swap-space": int,
    "--block-size": int,
    "--enable-prefix-caching": None,
    "--enable-chunked-prefill": None,
    "--disable-log-requests": None,
    "--enforce-eager": None,
    "--kv-cache-dtype": str,
    "--max-logprobs": int,
    "--generation-config": str,
}
_KV_CACHE_DTYPES = {"auto", "fp8", "fp8_e4m3", "fp8_e5m2"}


def validate_extra_args(args: object) -> list[str]:
    """The arguments as a flat list, or ValidationError naming the first one off the allow-list."""
    if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
        raise ValidationError({"extra_args": "Must be a list of strings, e.g. [\"--max-num-seqs\", \"64\"]."})
    result: list[str] = []
    items = list(args)
    i = 0
    while i < len(items):
        raw = items[i]
        name, eq, inline = raw.partition("=")
        if name not in ALLOWED_ARGS:
            raise ValidationError({"extra_args": f"{name!r} is not allowed; allowed: {', '.join(sorted(ALLOWED_ARGS))}."})
        kind = ALLOWED_ARGS[name]
        if kind is None:
            if eq:
                raise ValidationError({"extra_args": f"{name} takes no value."})
            result.append(name)
            i += 1
            continue
        if eq:
            value = inline
            i += 1
        else:
            if i + 1 >= len(items):
                raise ValidationError({"extra_args": f"{name} needs a value."})
            value = items[i + 1]
            i += 2
        if kind is int and not (value.isdigit() and 0 < int(value) <= 1_000_000):
            raise ValidationError({"extra_args": f"{name} needs a positive whole number, not {value!r}."})
        if name == "--kv-cache-dtype" and value not in _KV_CACHE_DTYPES:
            raise ValidationError({"extra_args": f"--kv-cache-dtype must be one of {sorted(_KV_CACHE_DTYPES)}."})
        if name == "--generation-config" and value not in ("auto", "vllm"):
            raise ValidationError({"extra_args": "--generation-config must be 'auto' or 'vllm'."})
        result += [name, value]
    return result


def _local_path_allowed(source: str) -> bool:
    path = Path(source).resolve()
    return any(path.is_relative_to(Path(root).resolve()) for root in settings.INFERENCE_LOCAL_MODEL_DIRS)


def validate_source(field: str, source: str) -> str:
    """A Hugging Face repo id, or a local directory inside an operator-allowed model directory."""
    if source.startswith("/") or source.startswith("."):
        if not _local_path_allowed(source):
            raise ValidationError({field: f"{source!r} is not inside an allowed model directory "
                                          f"(INFERENCE_LOCAL_MODEL_DIRS)."})
        return str(Path(source).resolve())
    if not _REPO_ID.match(source) or ".." in source:
        raise ValidationError({field: f"{source!r} is neither a Hugging Face repo id (owner/name) nor an allowed "
                                      f"local path."})
    if Path(source).exists():
        # vLLM loads a name that exists on disk from disk (relative to its working directory, Corral's), which
        # would read outside INFERENCE_LOCAL_MODEL_DIRS: such a repo id must be given as an allowed path.
        raise ValidationError({field: f"{source!r} names a local path, not a Hugging Face repo id; give a local "
                                      f"model as an absolute path inside INFERENCE_LOCAL_MODEL_DIRS."})
    return source


def _live(deployments: QuerySet[Deployment]) -> QuerySet[Deployment]:
    """The deployments that count against a quota: not deleted, not failed."""
    return deployments.filter(deleted=False).exclude(state="failed")


def quota_use_many(*, organisation_ids: list[int]) -> dict[int, tuple[int, int]]:
    """GPUs and CPU replicas in use per organisation, as the quota counts them, in one query."""
    use = {pk: (0, 0) for pk in organisation_ids}
    rows = _live(Deployment.objects.filter(organisation_id__in=organisation_ids)).values_list(
        "organisation_id", "device", "replicas", "tensor_parallel_size")
    for organisation_id, device, replicas, tensor_parallel_size in rows:
        gpus, cpu_replicas = use[organisation_id]
        if device == Deployment.Device.GPU:
            use[organisation_id] = (gpus + replicas * tensor_parallel_size, cpu_replicas)
        else:
            use[organisation_id] = (gpus, cpu_replicas + replicas)
    return use


def _gpus_in_use(organisation: Organisation, exclude: Deployment | None = None) -> tuple[int, int]:
    live = _live(Deployment.objects.filter(organisation=organisation))
    if exclude is not None:
        live = live.exclude(pk=exclude.pk)
    gpu = live.filter(device=Deployment.Device.GPU)
    gpus = sum(d.replicas * d.tensor_parallel_size for d in gpu.only("replicas", "tensor_parallel_size"))
    cpu_replicas = live.filter(device=Deployment.Device.CPU).aggregate(n=Sum("replicas"))["n"] or 0
    return gpus, cpu_replicas


def _check_quota(organisation: Organisation, device: str, replicas: int, tensor_parallel_size: int,
                 exclude: Deployment | None = None) -> None:
    quota = GpuQuota.objects.filter(organisation=organisation).first()
    gpus, cpu_replicas = _gpus_in_use(organisation, exclude)
    if device == Deployment.Device.GPU:
        allowed = quota.max_gpus if quota else 0
        wanted = replicas * tensor_parallel_size
        if gpus + wanted > allowed:
            raise ValidationError({"replicas": f"GPU quota exceeded: {gpus} of {allowed} GPUs in use, this needs "
                                               f"{wanted} more."})
    else:
        allowed = quota.max_cpu_replicas if quota else 0
        if cpu_replicas + replicas > allowed:
            raise ValidationError({"replicas": f"CPU replica quota exceeded: {cpu_replicas} of {allowed} in use, "
                                               f"this needs {replicas} more."})


def eu_multimodal_refusal_for(organisation: Organisation, base_model: BaseModel) -> str | None:
    """The EU clause (licensing/eu_multimodal.py) for this organisation and model, from the catalogue."""
    version = base_model.licence_version
    return eu_multimodal_refusal(version_name=version.name, licence_name=version.licence_name,
                                 restricted=version.eu_multimodal_restriction, multimodal=base_model.multimodal,
                                 eu_domiciled=organisation.eu_domiciled)


def _check_licence(organisation: Organisation, product: Product, base_model: BaseModel) -> LicenceVersion:
    """The product's licence version, once the deployment may run under it; ValidationError otherwise."""
    from governance.compliance.services import access_check

    version = product.licence_version
    if version is None:
        raise ValidationError({"product": f"{product.name} is not built on Llama: a deployment serves a Llama model, "
                                          f"so it needs a product built on one (give the product its licence "
                                          f"version first)."})
    if base_model.licence_version_id != version.pk:
        raise ValidationError({"base_model": f"{base_model.repo_id} is released under "
                                             f"{base_model.licence_version.name}; the product runs under "
                                             f"{version.name}."})
    refusal = eu_multimodal_refusal_for(organisation, base_model)
    if refusal:
        raise ValidationError({"base_model": refusal})
    exemption = organisation_exemption(organisation=organisation)
    if exemption is not None:
        raise ValidationError({"licence": (
            f"{organisation.name} records that it receives Llama only as part of an integrated end user product "
            f"from {exemption.supplier} (clause 1.b.ii): running a Llama model on the pool receives the materials "
            f"themselves. Withdraw the exemption first.")})
    decision = access_check(organisation=organisation, licence_version=version)
    if not decision.allowed:
        raise ValidationError({"licence": f"{decision.detail} ({decision.reason})"})
    return version


def deployment_request(
    *,
    organisation: Organisation,
    product: Product,
    base_model: BaseModel,
    served_model_name: str,
    created_by: str,
    model_source: str = "",
    device: str = Deployment.Device.GPU,
    dtype: str = "auto",
    max_model_len: int = 4096,
    tensor_parallel_size: int = 1,
    gpu_memory_utilization: float = 0.9,
    quantization: str = "",
    lora_adapters: dict[str, str] | None = None,
    extra_args: list[str] | None = None,
    replicas: int = 1,
) -> Deployment:
    """Record a deployment after every licence and pool check; the reconciler brings it up."""
    if product.organisation_id != organisation.pk:
        raise ValidationError({"product": "The product belongs to another organisation."})
    if not _SERVED_NAME.match(served_model_name):
        raise ValidationError({"served_model_name": "1-100 letters, digits, '.', '_', ':' or '-'."})
    if dtype not in DTYPES:
        raise ValidationError({"dtype": f"One of {sorted(DTYPES)}."})
    if quantization not in QUANTIZATIONS:
        raise ValidationError({"quantization": f"One of {sorted(QUANTIZATIONS - {''})}, or empty."})
    if device == Deployment.Device.CPU and tensor_parallel_size != 1:
        raise ValidationError({"tensor_parallel_size": "A CPU deployment runs on one node: 1."})
    lora = lora_adapters or {}
    for name, source in lora.items():
        if not _LORA_NAME.match(name):
            raise ValidationError({"lora_adapters": f"{name!r} is not a valid adapter name."})
        lora[name] = validate_source("lora_adapters", source)
    args = validate_extra_args(extra_args or [])
    source = validate_source("model_source", model_source or base_model.repo_id)
    licence_version = _check_licence(organisation, product, base_model)
    _check_quota(organisation, device, replicas, tensor_parallel_size)
    if Deployment.objects.filter(organisation=organisation, served_model_name=served_model_name, deleted=False).exists():
        raise ValidationError({"served_model_name": f"{served_model_name!r} is already deployed by this organisation."})
    with transaction.atomic():
        deployment = Deployment.objects.create(
            organisation=organisation, product=product, licence_version=licence_version,
            base_model=base_model, model_source=source, served_model_name=served_model_name, device=device,
            dtype=dtype, max_model_len=max_model_len, tensor_parallel_size=tensor_parallel_size,
            gpu_memory_utilization=gpu_memory_utilization, quantization=quantization, lora_adapters=lora,
            extra_args=args, replicas=replicas, created_by=created_by,
        )
        audit_record(action="deployment.requested", actor=created_by, organisation=organisation, obj=deployment,
                     data={"served_model_name": served_model_name, "base_model": base_model.repo_id,
                           "licence_version": licence_version.slug, "replicas": replicas, "device": device})
        transaction.on_commit(reconcile_soon)
    return deployment


def deployment_scale(*, deployment: Deployment, replicas: int, actor: str) -> Deployment:
    if deployment.deleted:
        raise ValidationError({"replicas": "The deployment is being deleted."})
    if replicas > deployment.replicas:
        _check_licence(deployment.organisation, deployment.product, deployment.base_model)
        _check_quota(deployment.organisation, deployment.device, replicas, deployment.tensor_parallel_size,
                     exclude=deployment)
    with transaction.atomic():
        before = deployment.replicas
        Deployment.objects.filter(pk=deployment.pk).update(replicas=replicas)
        audit_record(action="deployment.scaled", actor=actor, organisation=deployment.organisation, obj=deployment,
                     data={"from": before, "to": replicas})
        transaction.on_commit(reconcile_soon)
    deployment.refresh_from_db()
    return deployment


def deployment_delete(*, deployment: Deployment, actor: str, reason: str = "") -> Deployment:
    """Drain and stop every replica; the record stays (state stopped) for the audit trail."""
    with transaction.atomic():
        changed = Deployment.objects.filter(pk=deployment.pk, deleted=False).update(
            deleted=True, state="draining", state_reason=reason or f"deleted by {actor}")
        if changed:
            data = {"served_model_name": deployment.served_model_name}
            if reason:
                data["reason"] = reason
            audit_record(action="deployment.deleted", actor=actor, organisation=deployment.organisation,
                         obj=deployment, data=data)
            transaction.on_commit(reconcile_soon)
    deployment.refresh_from_db()
    return deployment


def deployments_drain_eu_multimodal(*, organisation: Organisation, actor: str) -> list[Deployment]:
    """Drain the organisation's deployments the EU clause does not allow it (after a move into the EU), and
    raise one alert per licence version saying why. Safe to run twice: drained deployments are not live."""
    live = (Deployment.objects.filter(organisation=organisation, deleted=False)
            .select_related("base_model__licence_version", "licence_version").order_by("pk"))
    drained: dict[int, tuple[LicenceVersion, list[Deployment], str]] = {}
    for deployment in live:
        refusal = eu_multimodal_refusal_for(organisation, deployment.base_model)
        if not refusal:
            continue
        deployment_delete(deployment=deployment, actor=actor,
                          reason=f"Drained: {organisation.name} is domiciled in the EU. {refusal}")
        version = deployment.base_model.licence_version
        drained.setdefault(version.pk, (version, [], refusal))[1].append(deployment)
    for version, deployments, refusal in drained.values():
        _eu_multimodal_alert(organisation, version, deployments, refusal, actor)
    return [d for _, deployments, _ in drained.values() for d in deployments]


def _eu_multimodal_alert(organisation: Organisation, version: LicenceVersion, deployments: list[Deployment],
                         refusal: str, actor: str) -> Alert | None:
    """An alert of the group's for the version, as the evaluation raises them (audited, emailed, webhooks).

    One per group, version and month (the alerts' unique rule): a second drain in the same month is in the
    audit log (each ``deployment.deleted`` with its reason) but announces nothing new.
    """
    group = organisation.group
    month = timezone.now().date().replace(day=1)
    if Alert.objects.filter(group=group, licence_version=version, level=EU_MULTIMODAL, month=month,
                            kind=Alert.Kind.RAISED).exists():
        return None
    names = ", ".join(d.served_model_name for d in deployments)
    alert = Alert.objects.create(
        group=group, licence_version=version, level=EU_MULTIMODAL, kind=Alert.Kind.RAISED, month=month,
        figures={"organisation": {"id": organisation.pk, "name": organisation.name},
                 "deployments": [{"id": d.pk, "served_model_name": d.served_model_name} for d in deployments]},
        message=f"{group.name}, {version.name}: {organisation.name} is now domiciled in the EU, so its deployments "
                f"of {version.name} multimodal models were drained ({names}). {refusal}")
    audit_record(action="alert.raised", actor=actor, group=group, organisation=organisation, obj=alert,
                 data={"licence_version": version.slug, "level": EU_MULTIMODAL, "month": month,
                       "figures": alert.figures})
    transaction.on_commit(lambda: governance_queue.alert_dispatch_soon(alert.pk))
    return alert


def reconcile_soon() -> None:
    queue.reconcile_soon()


# --- a replica's last log lines, read by the worker that can reach them -------------------------------------
#
# The web process cannot read them itself: a local replica's log file is on the GPU host that runs it, and a
# Kubernetes pod's log needs the API token that only the workers hold. The page asks (``replica_log_request``),
# the worker that can read it answers into the shared cache (``replica_log_read``), the page shows the answer.

LOG_LINES = 200
LOG_CACHE_SECONDS = 300  # how long an answer is shown before the page asks again
LOG_PENDING_SECONDS = 60  # how long a request is awaited before the page says no worker answered


class ReplicaLogTail(TypedDict):
    lines: list[str]
    read_at: str  # ISO 8601, UTC
    error: str  # why no lines were read, or ""


def _log_key(replica_id: int) -> str:
    return f"inference:replica-log:{replica_id}"


def _log_pending_key(replica_id: int) -> str:
    return f"inference:replica-log:{replica_id}:pending"


def replica_log_queue(replica: Replica) -> str | None:
    """The queue of the worker that can read the replica's log: its node's own queue for a local replica when
    node queues are on (the file is on that host), the default queue otherwise (any worker reaches the API)."""
    from inference.reconciler import node_queue

    node = replica.node
    if settings.INFERENCE_NODE_QUEUES and node is not None and node.backend == BackendName.LOCAL:
        return node_queue(node.name)
    return None


def replica_log_cached(*, replica: Replica) -> tuple[ReplicaLogTail | None, dt.datetime | None]:
    """The last answer for ``replica`` (None once it expired) and when a newer read was asked for (None when
    none is awaited). ``replica`` is one the caller may see: the cache is keyed by replica only."""
    entry = cache.get(_log_key(replica.pk))
    pending = cache.get(_log_pending_key(replica.pk))
    return entry, dt.datetime.fromisoformat(pending) if pending else None


def _cache_shared() -> bool:
    """Whether a worker's answer reaches this process: not through the per-process cache of a single host
    without Redis (settings.CACHES), where this process is on the replica's host and reads the log itself."""
    return not isinstance(caches["default"], LocMemCache)


def replica_log_request(*, replica: Replica) -> bool:
    """Queue a read of the replica's log on the worker that can read it, unless one is already awaited.
    True when a read is awaited now (this one or an earlier one) or done, False when it could not be queued."""
    pending = _log_pending_key(replica.pk)
    if not cache.add(pending, timezone.now().isoformat(), timeout=LOG_PENDING_SECONDS):
        return True
    if not _cache_shared():
        replica_log_read(replica=replica)
        return True
    if queue.replica_log_read_soon(replica.pk, replica.deployment.organisation_id,
                                   queue=replica_log_queue(replica)):
        return True
    cache.delete(pending)
    return False


def replica_log_read(*, replica: Replica, lines: int = LOG_LINES) -> ReplicaLogTail:
    """On the worker that can reach it: read the replica's last ``lines`` through its node's backend, take
    vLLM's key out of them and keep the answer in the cache for LOG_CACHE_SECONDS. A failure is an answer too:
    its ``error`` says why, so the page never waits for a read that will not come."""
    from inference.backends import backend_for
    from inference.backends.base import LogUnavailable
    from inference.reconciler import replica_ref

    node, here = replica.node, settings.INFERENCE_NODE_NAME
    found: list[str] = []
    error = ""
    if node is None:
        error = "The replica is not placed on a node yet, so it has no log."
    elif replica_log_queue(replica) and here and here != node.name:
        error = (f"The read reached the worker of node {here}, not node {node.name}'s: "
                 f"check which worker consumes queue {replica_log_queue(replica)}.")
    else:
        try:
            found = backend_for(node.backend).log_tail(replica_ref(replica), lines=lines)
        except LogUnavailable as refusal:
            error = str(refusal)
        except Exception as failure:  # the API server unreachable, a bad kubeconfig: say so, details in our log
            logger.exception("reading the log of replica %s failed", replica.pk)
            error = f"The log could not be read ({type(failure).__name__}); the worker's log has the details."
    if replica.key_salt:  # vLLM's key never leaves Corral, not even in a log line
        secret = replica_key(replica.pk, replica.key_salt)
        found = [line.replace(secret, "[vLLM key]") for line in found]
        error = error.replace(secret, "[vLLM key]")
    entry = ReplicaLogTail(lines=found, read_at=timezone.now().isoformat(), error=error)
    cache.set(_log_key(replica.pk), entry, timeout=LOG_CACHE_SECONDS)
    cache.delete(_log_pending_key(replica.pk))
    return entry

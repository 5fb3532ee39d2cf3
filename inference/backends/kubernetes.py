"""The Kubernetes backend: each replica is a one-pod Deployment of the official vLLM image, with a Service.

- Three objects per replica, all named from the deployment and replica ids (``corral-d12-r34``): a Secret
  holding vLLM's API key, a Deployment running ``vllm serve`` with the key in its environment (never in its
  arguments), and a ClusterIP Service on port 8000. They are applied with server-side apply (field manager
  ``corral``, forced), so starting twice is harmless.
- The pod is hardened as far as vLLM's image allows: see ``render_manifests`` and docs/kubernetes.md.
- Observe reads the Deployment and its pod back; stop deletes the three objects in the foreground and waits,
  a bounded time, for the Deployment (and so its pod and GPUs) to be gone.

Settings, read when first needed: KUBERNETES_NAMESPACE, KUBERNETES_VLLM_IMAGE, KUBERNETES_KUBECONFIG,
KUBERNETES_CONTEXT, KUBERNETES_VLLM_RUN_AS_USER, KUBERNETES_HF_TOKEN_SECRET, KUBERNETES_MODELS_CLAIM and
KUBERNETES_MODELS_PATH (docs/kubernetes.md says what each does).
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import time
from pathlib import PurePosixPath
from typing import Any

from django.conf import settings
from kubernetes import config as kube_config
from kubernetes.client import ApiClient, AppsV1Api, Configuration, CoreV1Api
from kubernetes.client.exceptions import ApiException

from inference.backends.base import Observation, ReplicaHandle, ReplicaRef, ReplicaSpec, serving_flags

logger = logging.getLogger(__name__)

DEFAULT_NAMESPACE = "corral-inference"
DEFAULT_IMAGE = "vllm/vllm-openai:v0.11.0"
# vLLM images from mid-2026 on ship a `vllm` user with this uid; older ones run any uid once HOME and USER
# are set (see _environment), so the same uid serves both.
DEFAULT_RUN_AS_USER = 2000
DEFAULT_MODELS_PATH = "/models"

FIELD_MANAGER = "corral"
APPLY_PATCH = "application/apply-patch+yaml"
PORT = 8000
API_KEY_ITEM = "api-key"
HOME = "/home/vllm"
SHM_SIZE = "8Gi"
# Pulling the image (~10 GB) and downloading and loading the weights can take long; the startup probe allows
# 30 minutes, the Deployment's progress deadline an hour, after which observe reports the replica failed.
STARTUP_PERIOD_SECONDS = 10
STARTUP_FAILURE_THRESHOLD = 180
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
        {"name": "HF_HOME", "value": f"{HOME}/.cache/huggingface"},
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
        context.update({"runAsNonRoot": True, "runAsUser": run_as_user, "runAsGroup": run_as_user})
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
) -> list[dict[str, Any]]:
    """The Secret, Deployment and Service of one replica, in the order they are applied.

    ``labels`` go on every object and on the pod, together with the replica's selector labels (which win).
    ``run_as_user`` None runs the image's own user (root), for an image that cannot run otherwise.
    ``models_claim`` names a PersistentVolumeClaim mounted read-only at ``models_path``: a local model or
    adapter path must lie under it. Raises ValueError for a local path that the pod could not see.
    """
    _check_local_paths(spec, models_claim, models_path)
    name = object_name(spec.deployment_id, spec.replica_id)
    selector = selector_labels(spec.deployment_id, spec.replica_id)
    all_labels = {**labels, **selector}
    tp = str(spec.tensor_parallel_size)

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
    if models_claim:
        volumes.append({"name": "models", "persistentVolumeClaim": {"claimName": models_claim, "readOnly": True}})
        mounts.append({"name": "models", "mountPath": models_path, "readOnly": True})

    container = {
        "name": "vllm",
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "command": ["vllm", "serve"],
        "args": vllm_arguments(spec),
        "env": _environment(secret_name, hf_token_secret),
        "ports": [{"name": "http", "containerPort": PORT, "protocol": "TCP"}],
        "resources": {"requests": {"nvidia.com/gpu": tp}, "limits": {"nvidia.com/gpu": tp}},
        "startupProbe": _probe(STARTUP_PERIOD_SECONDS, 5, STARTUP_FAILURE_THRESHOLD),
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
        "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        "containers": [container],
        "volumes": volumes,
    }
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
                "progressDeadlineSeconds": PROGRESS_DEADLINE_SECONDS,
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


class KubernetesBackend:
    name = "kubernetes"
    poll_seconds = 2.0
    # Foreground deletion returns at once; stop waits the grace period and this much more for the pod to go.
    stop_slack_seconds = 60.0

    def __init__(self, api_client: ApiClient | None = None, *, namespace: str | None = None,
                 image: str | None = None) -> None:
        self._api_client = api_client
        self._namespace = namespace
        self._image = image

    @property
    def namespace(self) -> str:
        return self._namespace or getattr(settings, "KUBERNETES_NAMESPACE", DEFAULT_NAMESPACE)

    @property
    def image(self) -> str:
        return self._image or getattr(settings, "KUBERNETES_VLLM_IMAGE", DEFAULT_IMAGE)

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
        )

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        """Apply the Secret, the Deployment and the Service; the handle's pod_name is the Deployment's name."""
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        apply = {"field_manager": FIELD_MANAGER, "force": True, "_content_type": APPLY_PATCH}
        appliers = {"Secret": core.patch_namespaced_secret, "Deployment": apps.patch_namespaced_deployment,
                    "Service": core.patch_namespaced_service}
        for manifest in self.manifests(spec):
            kind, name = manifest["kind"], manifest["metadata"]["name"]
            try:
                appliers[kind](name, self.namespace, manifest, **apply)
            except ApiException as error:
                raise _refusal("applying", kind, name, error, with_message=kind != "Secret") from None
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

    def stop(self, ref: ReplicaRef, *, grace_seconds: float) -> None:
        """Delete the Deployment (foreground), Service and Secret, tolerating any already gone, then wait a
        bounded time for the Deployment to disappear, which foreground deletion makes wait for its pod."""
        name = object_name(ref.deployment_id, ref.replica_id)
        core, apps = CoreV1Api(self._client()), AppsV1Api(self._client())
        options = {"grace_period_seconds": math.ceil(grace_seconds), "propagation_policy": "Foreground"}
        deleters = [("Deployment", name, apps.delete_namespaced_deployment),
                    ("Service", name, core.delete_namespaced_service),
                    ("Secret", key_secret_name(ref.deployment_id, ref.replica_id), core.delete_namespaced_secret)]
        for kind, target, delete in deleters:
            try:
                # The answer is a Status or the object itself, depending on the kind and on pending finalizers;
                # nothing in it is needed, so it is not parsed into a model that might not fit.
                delete(target, self.namespace, _preload_content=False, **options).drain_conn()
            except ApiException as error:
                if error.status != 404:
                    raise _refusal("deleting", kind, target, error, with_message=kind != "Secret") from None
        deadline = time.monotonic() + grace_seconds + self.stop_slack_seconds
        while time.monotonic() < deadline:
            try:
                apps.read_namespaced_deployment(name, self.namespace)
            except ApiException as error:
                if error.status == 404:
                    return
                raise _refusal("reading", "Deployment", name, error, with_message=True) from None
            time.sleep(self.poll_seconds)
        logger.warning("Deployment %s/%s still terminating after %.0fs", self.namespace, name,
                       grace_seconds + self.stop_slack_seconds)

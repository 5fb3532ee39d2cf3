"""The Kubernetes backend: rendered manifests against the Kubernetes schema, and start/observe/stop through the
real `kubernetes` client against a small fake API server on loopback. No database.

No kube-apiserver can be run on this machine (docs/kubernetes.md says why), so the fake stands in for it: it
checks what a real server checks of an apply request (the content type, a field manager) and answers with the
objects it was sent plus the status each test gives it.
"""

from __future__ import annotations

import copy
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import kubernetes_validate
import pytest
import yaml
from kubernetes.client import ApiClient, Configuration

from inference.backends.base import LogUnavailable, ReplicaRef, ReplicaSpec
from inference.backends.kubernetes import (
    DEFAULT_IMAGE,
    EMPTY_DIR,
    KubernetesBackend,
    KubernetesError,
    PodResources,
    key_secret_name,
    label_value,
    object_name,
    render_manifests,
    replica_labels,
)

API_KEY = "vk-7f3a9c2e5b1d48e6a0c4f2b8d9e1a3c5"
KUBERNETES_VERSIONS = ["1.30", "1.33"]
DNS_1123_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")

BASE_SPEC = ReplicaSpec(
    replica_id=34, deployment_id=12, organisation_slug="acme-robotics", product_id=5,
    served_model_name="acme-chat", model_source="meta-llama/Llama-3.1-8B-Instruct", dtype="bfloat16",
    max_model_len=8192, tensor_parallel_size=1, gpu_memory_utilization=0.9, quantization="", lora_modules={},
    extra_args=[], gpu_indices=[0], node_name="gpu-node-1", node_address="10.0.0.7", port=8101, api_key=API_KEY,
)
SPECS = {
    "plain": BASE_SPEC,
    "lora": replace(BASE_SPEC, lora_modules={"support": "acme/support-lora", "sql": "acme/sql-lora"}),
    "quantized": replace(BASE_SPEC, model_source="hugging-quants/Meta-Llama-3.1-70B-Instruct-AWQ-INT4",
                         quantization="awq", dtype="float16"),
    "tp2": replace(BASE_SPEC, tensor_parallel_size=2, gpu_indices=[0, 1]),
    "extra-args": replace(BASE_SPEC, extra_args=["--enable-prefix-caching", "--max-num-seqs", "128"]),
    "everything": replace(BASE_SPEC, tensor_parallel_size=4, gpu_indices=[0, 1, 2, 3], quantization="fp8",
                          lora_modules={"support": "acme/support-lora"}, extra_args=["--enable-prefix-caching"],
                          node_name=""),
}


def render(spec: ReplicaSpec = BASE_SPEC, **kwargs: Any) -> dict[str, dict[str, Any]]:
    manifests = render_manifests(
        spec, namespace="corral-inference", image=DEFAULT_IMAGE,
        secret_name=key_secret_name(spec.deployment_id, spec.replica_id), labels=replica_labels(spec), **kwargs,
    )
    return {manifest["kind"]: manifest for manifest in manifests}


def container_of(manifests: dict[str, dict[str, Any]]) -> dict[str, Any]:
    [container] = manifests["Deployment"]["spec"]["template"]["spec"]["containers"]
    return container


# --- Rendering ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("case", SPECS)
def test_it_renders_manifests_the_kubernetes_schema_accepts(case: str, version: str) -> None:
    manifests = render(SPECS[case])
    assert [m["kind"] for m in manifests.values()] == ["Secret", "Deployment", "Service"]
    for manifest in manifests.values():
        # strict: an unknown field (a typo) fails too, instead of being dropped by the API server
        assert kubernetes_validate.validate(manifest, version, strict=True) == version


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_it_validates_the_optional_volumes_and_the_root_fallback(version: str) -> None:
    spec = replace(BASE_SPEC, model_source="/models/llama-3.1-8b", lora_modules={"sql": "/models/adapters/sql"})
    manifests = render(spec, run_as_user=None, hf_token_secret="hf-token", models_claim="llama-weights")
    for manifest in manifests.values():
        kubernetes_validate.validate(manifest, version, strict=True)


def test_its_schema_check_catches_a_broken_manifest() -> None:
    manifests = render()
    container_of(manifests)["securityContext"]["readOnlyRootFileSystem"] = True  # misspelt
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifests["Deployment"], "1.30", strict=True)
    manifests = render()
    container_of(manifests)["resources"]["limits"]["nvidia.com/gpu"] = ["1"]
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(manifests["Deployment"], "1.30", strict=True)


def test_it_hardens_the_pod() -> None:
    manifests = render()
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = container_of(manifests)
    assert pod["automountServiceAccountToken"] is False
    assert pod["enableServiceLinks"] is False
    assert pod["securityContext"] == {"runAsNonRoot": True, "runAsUser": 2000, "runAsGroup": 2000,
                                      "fsGroup": 2000, "fsGroupChangePolicy": "OnRootMismatch",
                                      "seccompProfile": {"type": "RuntimeDefault"}}
    assert container["securityContext"] == {"allowPrivilegeEscalation": False, "privileged": False,
                                            "readOnlyRootFilesystem": True, "capabilities": {"drop": ["ALL"]}}
    assert "hostNetwork" not in pod and "hostIPC" not in pod and "hostPID" not in pod
    volumes = {volume["name"]: volume for volume in pod["volumes"]}
    mounts = {mount["mountPath"]: mount["name"] for mount in container["volumeMounts"]}
    assert mounts == {"/home/vllm": "home", "/tmp": "tmp", "/dev/shm": "dshm",
                      "/home/vllm/.cache/huggingface": "model-cache"}
    assert volumes["home"] == {"name": "home", "emptyDir": {}}
    assert volumes["model-cache"] == {"name": "model-cache",
                                      "persistentVolumeClaim": {"claimName": "corral-model-cache"}}
    assert volumes["tmp"] == {"name": "tmp", "emptyDir": {}}
    assert volumes["dshm"]["emptyDir"]["medium"] == "Memory"
    env = {item["name"]: item.get("value") for item in container["env"]}
    assert env["HOME"] == "/home/vllm" and env["USER"] == "vllm"
    assert env["HF_HOME"] == "/home/vllm/.cache/huggingface"


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_it_shares_the_model_cache_claim_and_falls_back_to_an_empty_dir_only_when_asked(version: str) -> None:
    shared = render(model_cache_claim="llama-cache")
    volumes = {v["name"]: v for v in shared["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    # read-write: the pods fill the cache they share (the claim is ReadWriteMany: docs/kubernetes.md)
    assert volumes["model-cache"] == {"name": "model-cache", "persistentVolumeClaim": {"claimName": "llama-cache"}}
    assert {"name": "model-cache", "mountPath": "/home/vllm/.cache/huggingface"} in container_of(shared)["volumeMounts"]
    fallback = render(model_cache_claim=EMPTY_DIR)
    volumes = {v["name"]: v for v in fallback["Deployment"]["spec"]["template"]["spec"]["volumes"]}
    assert volumes["model-cache"] == {"name": "model-cache", "emptyDir": {}}
    kubernetes_validate.validate(fallback["Deployment"], version, strict=True)


def test_it_can_fall_back_to_the_images_root_user_and_stays_otherwise_hardened() -> None:
    manifests = render(run_as_user=None)
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    assert pod["securityContext"] == {"runAsNonRoot": False, "seccompProfile": {"type": "RuntimeDefault"}}
    security = container_of(manifests)["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["readOnlyRootFilesystem"] is True
    assert pod["automountServiceAccountToken"] is False


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_it_requests_one_gpu_per_tensor_parallel_rank(tp: int) -> None:
    container = container_of(render(replace(BASE_SPEC, tensor_parallel_size=tp, gpu_indices=list(range(tp)))))
    assert container["resources"]["requests"]["nvidia.com/gpu"] == str(tp)
    assert container["resources"]["limits"]["nvidia.com/gpu"] == str(tp)
    args = container["args"]
    assert args[args.index("--tensor-parallel-size") + 1] == str(tp)


def _qos_class(pod: dict[str, Any]) -> str:
    """The QoS class Kubernetes gives a pod (pkg/apis/core/helper/qos): BestEffort when no container requests
    or limits CPU or memory; Guaranteed when every container's CPU and memory limits equal its requests."""
    containers = pod["containers"]
    compute = [{kind: {name: value for name, value in c.get("resources", {}).get(kind, {}).items()
                       if name in ("cpu", "memory")} for kind in ("requests", "limits")} for c in containers]
    if not any(r["requests"] or r["limits"] for r in compute):
        return "BestEffort"
    guaranteed = all(set(r["limits"]) == {"cpu", "memory"}
                     and all(r["requests"].get(name, r["limits"][name]) == r["limits"][name] for name in r["limits"])
                     for r in compute)
    return "Guaranteed" if guaranteed else "Burstable"


@pytest.mark.parametrize("case", SPECS)
def test_it_gives_the_pod_cpu_and_memory_so_it_is_never_best_effort(case: str) -> None:
    pod = render(SPECS[case])["Deployment"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert resources["requests"]["cpu"] == "4" and resources["requests"]["memory"] == "32Gi"
    assert resources["limits"]["cpu"] == "16" and resources["limits"]["memory"] == "64Gi"
    assert _qos_class(pod) == "Burstable"
    equal = PodResources(cpu_request="8", cpu_limit="8", memory_request="48Gi", memory_limit="48Gi")
    assert _qos_class(render(SPECS[case], resources=equal)["Deployment"]["spec"]["template"]["spec"]) == "Guaranteed"


def test_its_qos_check_sees_a_pod_without_resources_as_best_effort() -> None:
    pod = render()["Deployment"]["spec"]["template"]["spec"]
    pod["containers"][0]["resources"] = {"requests": {"nvidia.com/gpu": "1"}, "limits": {"nvidia.com/gpu": "1"}}
    assert _qos_class(pod) == "BestEffort"  # what the pod was before: GPUs do not count


def test_it_asks_for_gpus_and_tolerates_gpu_nodes_only_when_the_replica_has_gpus() -> None:
    pod = render(replace(BASE_SPEC, gpu_indices=[]))["Deployment"]["spec"]["template"]["spec"]
    resources = pod["containers"][0]["resources"]
    assert "nvidia.com/gpu" not in resources["requests"] and "nvidia.com/gpu" not in resources["limits"]
    assert "tolerations" not in pod
    gpu_pod = render()["Deployment"]["spec"]["template"]["spec"]
    assert gpu_pod["tolerations"] == [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]


def test_it_reads_the_pods_resources_from_settings_and_refuses_a_request_above_its_limit(settings: Any) -> None:
    from django.core.exceptions import ImproperlyConfigured

    settings.KUBERNETES_VLLM_CPU_REQUEST, settings.KUBERNETES_VLLM_CPU_LIMIT = "6", "12"
    settings.KUBERNETES_VLLM_MEMORY_REQUEST, settings.KUBERNETES_VLLM_MEMORY_LIMIT = "40Gi", "80Gi"
    [_, deployment, _] = KubernetesBackend(namespace="corral-inference").manifests(BASE_SPEC)
    resources = deployment["spec"]["template"]["spec"]["containers"][0]["resources"]
    assert resources == {"requests": {"cpu": "6", "memory": "40Gi", "nvidia.com/gpu": "1"},
                         "limits": {"cpu": "12", "memory": "80Gi", "nvidia.com/gpu": "1"}}
    settings.KUBERNETES_VLLM_MEMORY_REQUEST = "100Gi"
    with pytest.raises(ImproperlyConfigured, match="KUBERNETES_VLLM_MEMORY_REQUEST='100Gi' is more than "
                                                   "KUBERNETES_VLLM_MEMORY_LIMIT='80Gi'"):
        KubernetesBackend(namespace="corral-inference").manifests(BASE_SPEC)


@pytest.mark.parametrize("timeout", [1, 7, 45, 600, 1800, 3601])
def test_its_startup_probe_gives_up_exactly_when_the_reconciler_does(timeout: int, settings: Any) -> None:
    settings.INFERENCE_STARTUP_TIMEOUT_SECONDS = timeout
    [_, deployment, _] = KubernetesBackend(namespace="corral-inference").manifests(BASE_SPEC)
    startup = deployment["spec"]["template"]["spec"]["containers"][0]["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == timeout
    assert 1 <= startup["periodSeconds"] <= 10  # a ready server is noticed within seconds
    assert deployment["spec"]["progressDeadlineSeconds"] > timeout  # the pull does not count against the probe
    kubernetes_validate.validate(deployment, "1.33", strict=True)


def test_it_probes_health_on_port_8000() -> None:
    manifests = render()
    container = container_of(manifests)
    assert container["ports"] == [{"name": "http", "containerPort": 8000, "protocol": "TCP"}]
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"] == {"path": "/health", "port": "http"}
    startup = container["startupProbe"]
    assert startup["periodSeconds"] * startup["failureThreshold"] == 600  # the default start-up timeout
    assert manifests["Deployment"]["spec"]["progressDeadlineSeconds"] >= 20 * 60
    assert manifests["Service"]["spec"]["ports"] == [{"name": "http", "port": 8000, "targetPort": "http",
                                                      "protocol": "TCP"}]
    assert manifests["Service"]["spec"]["type"] == "ClusterIP"


def test_it_labels_every_object_with_the_tenant_and_selects_only_its_own_pod() -> None:
    manifests = render()
    expected = {"corral.io/organisation": "acme-robotics", "corral.io/deployment": "12", "corral.io/replica": "34",
                "app.kubernetes.io/managed-by": "corral"}
    for manifest in manifests.values():
        assert manifest["metadata"]["labels"] == expected
        assert manifest["metadata"]["namespace"] == "corral-inference"
    deployment = manifests["Deployment"]["spec"]
    selector = {"corral.io/deployment": "12", "corral.io/replica": "34"}
    assert deployment["selector"] == {"matchLabels": selector}
    assert deployment["template"]["metadata"]["labels"] == expected
    assert manifests["Service"]["spec"]["selector"] == selector
    assert deployment["replicas"] == 1
    assert deployment["strategy"] == {"type": "Recreate"}


@pytest.mark.parametrize("case", SPECS)
def test_it_keeps_the_api_key_in_the_secret_only(case: str) -> None:
    manifests = render(SPECS[case], hf_token_secret="hf-token")
    assert manifests["Secret"]["stringData"] == {"api-key": API_KEY}
    assert manifests["Secret"]["type"] == "Opaque"
    assert API_KEY not in json.dumps(manifests["Deployment"])
    assert API_KEY not in json.dumps(manifests["Service"])
    env = {item["name"]: item for item in container_of(manifests)["env"]}
    assert env["VLLM_API_KEY"] == {"name": "VLLM_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "corral-d12-r34-api-key", "key": "api-key"}}}
    assert "--api-key" not in container_of(manifests)["args"]


@pytest.mark.parametrize(("deployment_id", "replica_id"), [(12, 34), (1, 1), (2**63 - 1, 2**63 - 1)])
def test_it_names_objects_with_valid_dns_labels(deployment_id: int, replica_id: int) -> None:
    manifests = render(replace(BASE_SPEC, deployment_id=deployment_id, replica_id=replica_id))
    for manifest in manifests.values():
        name = manifest["metadata"]["name"]
        assert DNS_1123_LABEL.match(name) and len(name) <= 63, name
        assert name[0].isalpha()  # a Service name must also be a DNS-1035 label
    assert manifests["Deployment"]["metadata"]["name"] == f"corral-d{deployment_id}-r{replica_id}"
    assert manifests["Service"]["metadata"]["name"] == manifests["Deployment"]["metadata"]["name"]


def test_it_makes_any_organisation_slug_a_valid_label_value() -> None:
    for slug in ["acme", "-odd-slug-", "x" * 80 + "-", "ünïcode_org", "a.b_c-d"]:
        value = label_value(slug)
        assert len(value) <= 63
        assert value == "" or re.match(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$", value), value
    assert label_value("acme-robotics") == "acme-robotics"
    manifests = render(replace(BASE_SPEC, organisation_slug="-" + "y" * 70))
    kubernetes_validate.validate(manifests["Deployment"], "1.30", strict=True)


def test_it_passes_the_deployments_vllm_arguments_in_order() -> None:
    container = container_of(render(SPECS["everything"]))
    assert container["image"] == "vllm/vllm-openai:v0.32.0"
    assert container["command"] == ["vllm", "serve"]
    assert container["args"] == [
        "meta-llama/Llama-3.1-8B-Instruct", "--host", "0.0.0.0", "--port", "8000",
        "--served-model-name", "acme-chat", "--dtype", "bfloat16", "--max-model-len", "8192",
        "--tensor-parallel-size", "4", "--gpu-memory-utilization", "0.9", "--quantization", "fp8",
        "--enable-lora", "--max-lora-rank", "64", "--lora-modules", "support=acme/support-lora",
        "--enable-prefix-caching",
    ]
    plain = container_of(render())["args"]
    assert "--quantization" not in plain and "--enable-lora" not in plain


def test_it_pins_the_pod_to_the_node_corral_scheduled_it_on() -> None:
    assert render()["Deployment"]["spec"]["template"]["spec"]["nodeSelector"] == {
        "kubernetes.io/hostname": "gpu-node-1"}
    assert "nodeSelector" not in render(SPECS["everything"])["Deployment"]["spec"]["template"]["spec"]


def test_it_refuses_a_local_model_path_the_pod_cannot_see() -> None:
    local = replace(BASE_SPEC, model_source="/models/llama-3.1-8b")
    with pytest.raises(ValueError, match="KUBERNETES_MODELS_CLAIM"):
        render(local)
    with pytest.raises(ValueError, match="not under"):
        render(replace(BASE_SPEC, model_source="/srv/weights/llama"), models_claim="llama-weights")
    with pytest.raises(ValueError, match="KUBERNETES_MODELS_CLAIM"):
        render(replace(BASE_SPEC, lora_modules={"sql": "/models/adapters/sql"}))


def test_it_mounts_the_models_volume_read_only_and_reads_the_hf_token_from_its_secret() -> None:
    manifests = render(replace(BASE_SPEC, model_source="/models/llama-3.1-8b"), models_claim="llama-weights",
                       hf_token_secret="hf-token")
    pod = manifests["Deployment"]["spec"]["template"]["spec"]
    container = container_of(manifests)
    claim = {"claimName": "llama-weights", "readOnly": True}
    assert {"name": "models", "persistentVolumeClaim": claim} in pod["volumes"]
    assert {"name": "models", "mountPath": "/models", "readOnly": True} in container["volumeMounts"]
    env = {item["name"]: item for item in container["env"]}
    assert env["HF_TOKEN"]["valueFrom"]["secretKeyRef"] == {"name": "hf-token", "key": "token", "optional": True}
    assert "HF_TOKEN" not in {item["name"] for item in container_of(render())["env"]}


# --- A fake API server ----------------------------------------------------------------------------------

_ROUTE = re.compile(r"^/(?:api/v1|apis/apps/v1)/namespaces/(?P<ns>[^/]+)/(?P<plural>secrets|services|deployments|pods)"
                    r"(?:/(?P<name>[^/]+)(?P<log>/log)?)?$")


@dataclass
class Recorded:
    method: str
    path: str
    query: dict[str, list[str]]
    content_type: str
    authorization: str
    body: Any


@dataclass
class FakeApiServer:
    """Keeps applied objects by path; serves canned deployment status and pods; records every request."""

    requests: list[Recorded] = field(default_factory=list)
    objects: dict[str, dict[str, Any]] = field(default_factory=dict)
    deployment_status: dict[str, Any] = field(default_factory=dict)
    pods: list[dict[str, Any]] = field(default_factory=list)
    deleted_pods: list[dict[str, Any]] = field(default_factory=list)
    failures: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)  # (method, plural) -> answer
    deleted: dict[str, dict[str, Any]] = field(default_factory=dict)
    terminating_lists: int = 0  # lists of pods that still show a deleted pod, terminating, as in its grace period
    logs: dict[str, bytes] = field(default_factory=dict)  # pod name -> its vllm container's output
    url: str = ""

    def handle(self, method: str, raw_path: str, headers: Any, raw_body: bytes) -> tuple[int, dict[str, Any] | bytes]:
        parts = urlsplit(raw_path)
        body = yaml.safe_load(raw_body) if raw_body else None
        self.requests.append(Recorded(method, parts.path, parse_qs(parts.query), headers.get("Content-Type", ""),
                                      headers.get("Authorization", ""), body))
        route = _ROUTE.match(parts.path)
        if route is None:
            return 404, _status(404, "NotFound", f"no route {parts.path}")
        plural, name = route["plural"], route["name"]
        if (method, plural) in self.failures:
            code, message = self.failures[(method, plural)]
            return code, _status(code, "Invalid" if code == 422 else "InternalError", message)
        if route["log"]:
            if (method, "pods/log") in self.failures:
                code, message = self.failures[(method, "pods/log")]
                return code, _status(code, "Forbidden" if code == 403 else "BadRequest", message)
            return self._log(name, parse_qs(parts.query))
        if method == "PATCH":
            return self._apply(parts.path, parse_qs(parts.query), headers.get("Content-Type", ""), body)
        selector = _selector(parse_qs(parts.query))
        if method == "GET" and plural == "pods":
            pods = [pod for pod in self.pods if _matches(pod, selector)]
            if not pods and self.terminating_lists > 0:
                self.terminating_lists -= 1
                pods = [{**pod, "metadata": {**pod["metadata"], "deletionTimestamp": "2026-11-28T10:00:00Z"}}
                        for pod in self.deleted_pods]
            return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "7"},
                         "items": copy.deepcopy(pods)}
        if method == "GET" and name is None:
            kind = {"deployments": "Deployment", "services": "Service", "secrets": "Secret"}[plural]
            items = [self._with_status(o) for o in self.objects.values() if o["kind"] == kind and _matches(o, selector)]
            return 200, {"apiVersion": "v1", "kind": f"{kind}List", "metadata": {"resourceVersion": "7"},
                         "items": items}
        if method == "GET":
            if parts.path in self.objects:
                return 200, self._with_status(self.objects[parts.path])
            return 404, _status(404, "NotFound", f'{plural} "{name}" not found')
        if method == "DELETE" and name is None:  # a collection, by label selector
            if plural == "pods":
                self.deleted_pods += [pod for pod in self.pods if _matches(pod, selector)]
                self.pods = [pod for pod in self.pods if not _matches(pod, selector)]
                return 200, {"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}
            gone = [path for path, o in self.objects.items() if parts.path in path and _matches(o, selector)]
            for path in gone:
                self.deleted[path] = self.objects.pop(path)
            # the deleted objects, a Secret's data included: which is why the backend never parses the answer
            return 200, {"apiVersion": "v1", "kind": "List", "metadata": {},
                         "items": [copy.deepcopy(self.deleted[path]) for path in gone]}
        return 405, _status(405, "MethodNotAllowed", method)

    def _apply(self, path: str, query: dict[str, list[str]], content_type: str,
               body: Any) -> tuple[int, dict[str, Any]]:
        # What kube-apiserver checks before it looks at the object:
        if content_type != "application/apply-patch+yaml":
            return 415, _status(415, "UnsupportedMediaType", f"unsupported patch type {content_type}")
        if not query.get("fieldManager"):
            return 422, _status(422, "Invalid", "PatchOptions.meta.k8s.io is invalid: fieldManager: Required value")
        stored = copy.deepcopy(body)
        created = path not in self.objects
        stored["metadata"].update({"uid": f"uid-{len(self.objects) + 1}", "resourceVersion": str(len(self.requests)),
                                   "creationTimestamp": "2026-11-28T09:00:00Z"})
        if stored["kind"] == "Secret":  # the API server keeps stringData as data and never returns it
            stored["data"] = {key: "<base64>" for key in stored.pop("stringData")}
        self.objects[path] = stored
        return (201 if created else 200), self._with_status(stored)

    def _log(self, name: str, query: dict[str, list[str]]) -> tuple[int, dict[str, Any] | bytes]:
        """What kube-apiserver answers for pods/<name>/log: the last tailLines lines, then at most limitBytes of
        them (so the cut is at the end), as plain text."""
        pod = next((pod for pod in self.pods if pod["metadata"]["name"] == name), None)
        if pod is None:
            return 404, _status(404, "NotFound", f'pods "{name}" not found')
        container = query.get("container", [""])[0]
        if container not in [c["name"] for c in pod["spec"]["containers"]]:
            return 400, _status(400, "BadRequest", f"container {container} is not valid for pod {name}")
        text = self.logs.get(name, b"")
        if "tailLines" in query:
            text = b"".join(text.splitlines(keepends=True)[-int(query["tailLines"][0]):])
        if "limitBytes" in query:
            text = text[:int(query["limitBytes"][0])]
        return 200, text

    def _with_status(self, stored: dict[str, Any]) -> dict[str, Any]:
        answer = copy.deepcopy(stored)
        if answer["kind"] == "Deployment":
            answer["status"] = copy.deepcopy(self.deployment_status)
        return answer


def _selector(query: dict[str, list[str]]) -> dict[str, str]:
    [text] = query.get("labelSelector", [""])
    return dict(term.split("=", 1) for term in text.split(",") if term)


def _matches(obj: dict[str, Any], selector: dict[str, str]) -> bool:
    labels = obj["metadata"].get("labels") or {}
    return all(labels.get(key) == value for key, value in selector.items())


def _status(code: int, reason: str, message: str) -> dict[str, Any]:
    return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure" if code >= 400 else "Success",
            "message": message, "reason": reason, "code": code}


@pytest.fixture
def fake_api() -> Iterator[FakeApiServer]:
    fake = FakeApiServer()

    class Handler(BaseHTTPRequestHandler):
        def _answer(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            code, payload = fake.handle(self.command, self.path, self.headers, self.rfile.read(length))
            data = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
            self.send_response(code)
            self.send_header("Content-Type", "text/plain" if isinstance(payload, bytes) else "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        do_GET = do_PATCH = do_DELETE = _answer

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    fake.url = f"http://127.0.0.1:{server.server_address[1]}"
    yield fake
    server.shutdown()
    server.server_close()
    thread.join(timeout=5)


@pytest.fixture
def backend(fake_api: FakeApiServer) -> Iterator[KubernetesBackend]:
    client = ApiClient(Configuration(host=fake_api.url))
    backend = KubernetesBackend(client, namespace="corral-inference")
    yield backend
    client.close()


REF = ReplicaRef(replica_id=34, deployment_id=12, endpoint="http://corral-d12-r34.corral-inference.svc:8000",
                 pod_name="corral-d12-r34")


def _pod(*, phase: str = "Running", state: dict[str, Any] | None = None, last_state: dict[str, Any] | None = None,
         restarts: int = 0, conditions: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    statuses = [{"name": "vllm", "image": DEFAULT_IMAGE, "imageID": "", "ready": False, "restartCount": restarts,
                 "state": state or {"running": {"startedAt": "2026-11-28T09:01:00Z"}},
                 "lastState": last_state or {}}]
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "corral-d12-r34-6d9f7c9b8-x2x7q", "namespace": "corral-inference",
                         "creationTimestamp": "2026-11-28T09:00:01Z",
                         "labels": {"corral.io/organisation": "acme-robotics", "corral.io/deployment": "12",
                                    "corral.io/replica": "34", "app.kubernetes.io/managed-by": "corral"}},
            "spec": {"containers": [{"name": "vllm", "image": DEFAULT_IMAGE}]},
            "status": {"phase": phase, "conditions": conditions or [],
                       "containerStatuses": [] if phase == "Pending" and state is None else statuses}}


# --- start --------------------------------------------------------------------------------------------


def test_it_starts_a_replica_by_server_side_applying_three_objects(backend: KubernetesBackend,
                                                                   fake_api: FakeApiServer) -> None:
    handle = backend.start(SPECS["tp2"])
    assert handle.endpoint == "http://corral-d12-r34.corral-inference.svc:8000"
    assert handle.pod_name == "corral-d12-r34"
    assert handle.pid is None
    secret_path = "/api/v1/namespaces/corral-inference/secrets/corral-d12-r34-api-key"
    deployment_path = "/apis/apps/v1/namespaces/corral-inference/deployments/corral-d12-r34"
    assert [(r.method, r.path) for r in fake_api.requests] == [
        ("PATCH", secret_path),  # first, unowned: the pod cannot start without it
        ("PATCH", deployment_path),
        ("PATCH", "/api/v1/namespaces/corral-inference/services/corral-d12-r34"),
        ("PATCH", secret_path),  # again, now owned by the Deployment
    ]
    expected = render(SPECS["tp2"])
    owner = [{"apiVersion": "apps/v1", "kind": "Deployment", "name": "corral-d12-r34",
              "uid": fake_api.objects[deployment_path]["metadata"]["uid"], "blockOwnerDeletion": True}]
    sent = [expected["Secret"], expected["Deployment"],
            {**expected["Service"], "metadata": {**expected["Service"]["metadata"], "ownerReferences": owner}},
            {**expected["Secret"], "metadata": {**expected["Secret"]["metadata"], "ownerReferences": owner}}]
    for request, manifest in zip(fake_api.requests, sent, strict=True):
        assert request.content_type == "application/apply-patch+yaml"
        assert request.query == {"fieldManager": ["corral"], "force": ["true"]}
        assert request.body == manifest  # sent as written: the client added nothing and dropped nothing
    for request in fake_api.requests[2:]:
        kubernetes_validate.validate(request.body, "1.33", strict=True)


def test_it_applies_again_without_harm(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    first = list(fake_api.objects)
    backend.start(BASE_SPEC)
    assert list(fake_api.objects) == first and len(first) == 3
    assert [r.method for r in fake_api.requests] == ["PATCH"] * 8


def test_it_reports_a_refused_apply_without_the_api_key(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    fake_api.failures[("PATCH", "secrets")] = (422, f'Secret is invalid: stringData[api-key]: "{API_KEY}"')
    with pytest.raises(KubernetesError) as raised:
        backend.start(BASE_SPEC)
    assert "422" in str(raised.value) and "Secret corral-d12-r34-api-key" in str(raised.value)
    assert API_KEY not in str(raised.value) and raised.value.__cause__ is None
    assert raised.value.__suppress_context__


def test_it_reports_a_refused_deployment_with_the_servers_reason(backend: KubernetesBackend,
                                                                 fake_api: FakeApiServer) -> None:
    fake_api.failures[("PATCH", "deployments")] = (
        403, 'deployments.apps "corral-d12-r34" is forbidden: violates PodSecurity "restricted:latest"')
    with pytest.raises(KubernetesError, match="violates PodSecurity"):
        backend.start(BASE_SPEC)
    assert [r.path.rsplit("/", 2)[1] for r in fake_api.requests] == ["secrets", "deployments"]


# --- observe ------------------------------------------------------------------------------------------


def test_it_reports_an_available_replica_as_running(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.deployment_status = {
        "observedGeneration": 1, "replicas": 1, "readyReplicas": 1, "availableReplicas": 1, "updatedReplicas": 1,
        "conditions": [{"type": "Available", "status": "True", "reason": "MinimumReplicasAvailable"},
                       {"type": "Progressing", "status": "True", "reason": "NewReplicaSetAvailable"}]}
    fake_api.pods = [_pod()]
    observation = backend.observe(REF)
    assert observation.running is True
    assert observation.detail == "available"
    pods_request = fake_api.requests[-1]
    assert pods_request.path == "/api/v1/namespaces/corral-inference/pods"
    assert pods_request.query["labelSelector"] == ["corral.io/deployment=12,corral.io/replica=34"]
    assert fake_api.requests[-2].path == "/apis/apps/v1/namespaces/corral-inference/deployments/corral-d12-r34"


def test_it_reports_a_crash_looping_replica_with_its_last_exit(backend: KubernetesBackend,
                                                               fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.deployment_status = {"replicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Available", "status": "False", "reason": "MinimumReplicasUnavailable"},
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
    fake_api.pods = [_pod(
        state={"waiting": {"reason": "CrashLoopBackOff", "message": "back-off 40s restarting failed container"}},
        last_state={"terminated": {"exitCode": 137, "reason": "OOMKilled", "startedAt": "2026-11-28T09:01:00Z",
                                   "finishedAt": "2026-11-28T09:02:00Z"}},
        restarts=3)]
    observation = backend.observe(REF)
    assert observation.running is False
    assert observation.exit_code == 137
    assert "CrashLoopBackOff" in observation.detail
    assert "restarts 3, last exit 137 (OOMKilled)" in observation.detail


def test_it_reports_a_replica_that_can_never_pull_its_image(backend: KubernetesBackend,
                                                            fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    waiting = {"reason": "ImagePullBackOff", "message": 'Back-off pulling image "vllm/vllm-openai:v0.32.0"'}
    fake_api.pods = [_pod(phase="Pending", state={"waiting": waiting})]
    observation = backend.observe(REF)
    assert observation.running is False
    assert observation.detail.startswith("ImagePullBackOff: Back-off pulling image")


def test_it_reports_a_replica_still_waiting_for_gpus_as_starting(backend: KubernetesBackend,
                                                                 fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.deployment_status = {"replicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Progressing", "status": "True", "reason": "ReplicaSetUpdated"}]}
    fake_api.pods = [_pod(phase="Pending", conditions=[{
        "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
        "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])]
    observation = backend.observe(REF)
    assert observation.running is True
    assert observation.detail == ("starting (Pending); Unschedulable: 0/3 nodes are available: "
                                  "3 Insufficient nvidia.com/gpu.")


def test_it_reports_a_replica_past_its_progress_deadline_as_failed(backend: KubernetesBackend,
                                                                   fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.deployment_status = {"replicas": 1, "unavailableReplicas": 1, "conditions": [
        {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
         "message": 'ReplicaSet "corral-d12-r34-6d9f7c9b8" has timed out progressing.'}]}
    fake_api.pods = [_pod(phase="Pending")]
    observation = backend.observe(REF)
    assert observation.running is False
    assert observation.detail.startswith("ProgressDeadlineExceeded: ")


def test_it_reports_a_just_applied_replica_as_starting(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    observation = backend.observe(REF)
    assert observation.running is True
    assert observation.detail == "starting (no pod yet)"


def test_it_reports_a_missing_replica_as_not_running(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    observation = backend.observe(REF)
    assert observation.running is False
    assert observation.detail == "Deployment corral-inference/corral-d12-r34 not found"


# --- stop ---------------------------------------------------------------------------------------------


SELECTOR = "app.kubernetes.io/managed-by=corral,corral.io/deployment=12,corral.io/replica=34"


def test_it_asks_for_every_object_of_the_replica_to_go_by_label_and_returns_at_once(
        backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    backend.start(replace(BASE_SPEC, replica_id=35))  # another replica of the same deployment stays
    fake_api.pods = [_pod()]
    fake_api.requests.clear()
    backend.stop(REF, grace_seconds=20.5)
    assert [(r.method, r.path) for r in fake_api.requests] == [
        ("DELETE", "/apis/apps/v1/namespaces/corral-inference/deployments"),
        ("DELETE", "/api/v1/namespaces/corral-inference/pods"),
        ("DELETE", "/api/v1/namespaces/corral-inference/services"),
        ("DELETE", "/api/v1/namespaces/corral-inference/secrets"),
    ]  # no read, no wait: the reconciler asks `stopped` on a later pass
    for request in fake_api.requests:
        assert request.query == {"labelSelector": [SELECTOR], "gracePeriodSeconds": ["21"],
                                 "propagationPolicy": ["Background"]}
    assert sorted(fake_api.objects) == [
        "/api/v1/namespaces/corral-inference/secrets/corral-d12-r35-api-key",
        "/api/v1/namespaces/corral-inference/services/corral-d12-r35",
        "/apis/apps/v1/namespaces/corral-inference/deployments/corral-d12-r35",
    ]
    assert backend.observe(REF).running is False


def test_it_says_stopped_only_once_no_deployment_and_no_pod_is_left(backend: KubernetesBackend,
                                                                     fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.pods = [_pod()]
    assert backend.stopped(REF) is False
    backend.stop(REF, grace_seconds=30)
    fake_api.terminating_lists = 2  # the pod takes its grace period to go
    assert backend.stopped(REF) is False
    assert backend.stopped(REF) is False
    assert backend.stopped(REF) is True
    lists = [r for r in fake_api.requests if r.method == "GET"]
    assert {r.query["labelSelector"][0] for r in lists} == {SELECTOR}


def test_it_kills_what_is_left_without_a_grace_period(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    backend.start(BASE_SPEC)
    fake_api.requests.clear()
    backend.kill(REF)
    assert {r.query["gracePeriodSeconds"][0] for r in fake_api.requests} == {"0"}
    assert fake_api.objects == {}


def test_it_stops_a_replica_whose_objects_are_already_gone(backend: KubernetesBackend,
                                                            fake_api: FakeApiServer) -> None:
    backend.stop(REF, grace_seconds=5)
    assert [r.method for r in fake_api.requests] == ["DELETE"] * 4
    assert backend.stopped(REF) is True


def test_it_reports_a_refused_delete(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    fake_api.failures[("DELETE", "deployments")] = (403, "deployments.apps is forbidden: cannot delete")
    with pytest.raises(KubernetesError, match="forbidden"):
        backend.stop(REF, grace_seconds=5)


# --- log ----------------------------------------------------------------------------------------------


def _named_pod(name: str, created: str) -> dict[str, Any]:
    pod = _pod()
    pod["metadata"].update({"name": name, "creationTimestamp": created})
    return pod


def test_it_reads_the_last_lines_of_the_newest_pods_vllm_container(backend: KubernetesBackend,
                                                                    fake_api: FakeApiServer) -> None:
    fake_api.pods = [_named_pod("corral-d12-r34-old", "2026-11-28T09:00:01Z"),
                     _named_pod("corral-d12-r34-new", "2026-11-28T10:00:01Z")]
    fake_api.logs = {"corral-d12-r34-old": b"the old pod\n",
                     "corral-d12-r34-new": b"INFO starting\n" + b"line\n" * 10
                     + b'{"looks": "like json"}\n' + b"caf\xe9 not utf-8\nINFO Uvicorn running\n"}
    fake_api.requests.clear()
    assert backend.log_tail(REF, lines=3) == ['{"looks": "like json"}', "caf\ufffd not utf-8", "INFO Uvicorn running"]
    listing, read = fake_api.requests
    assert listing.query["labelSelector"] == ["corral.io/deployment=12,corral.io/replica=34"]
    assert read.method == "GET" and read.path == "/api/v1/namespaces/corral-inference/pods/corral-d12-r34-new/log"
    assert read.query == {"container": ["vllm"], "tailLines": ["3"], "limitBytes": ["65536"]}


def test_it_drops_the_line_the_byte_limit_cuts(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    fake_api.pods = [_named_pod("corral-d12-r34-x", "2026-11-28T10:00:01Z")]
    long_lines = [f"{i:04d} " + "x" * 995 for i in range(100)]  # 1000 bytes a line with its newline
    fake_api.logs = {"corral-d12-r34-x": "".join(f"{line}\n" for line in long_lines).encode()}
    tail = backend.log_tail(REF, lines=80)
    # 80 lines are 80,000 bytes: the server stops after 65,536, in line 66 of them, which is left out
    assert tail == long_lines[20:85]


def test_it_says_why_a_pods_log_cannot_be_read(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    with pytest.raises(LogUnavailable, match=r"^No pod of corral-inference/corral-d12-r34 exists now\.$"):
        backend.log_tail(REF, lines=10)
    fake_api.pods = [_named_pod("corral-d12-r34-x", "2026-11-28T10:00:01Z")]
    forbidden = ('pods "corral-d12-r34-x" is forbidden: User "system:serviceaccount:corral:corral-worker" cannot get '
                 'resource "pods/log" in API group "" in the namespace "corral-inference"')
    fake_api.failures[("GET", "pods/log")] = (403, forbidden)
    with pytest.raises(LogUnavailable) as refused:
        backend.log_tail(REF, lines=10)
    assert str(refused.value).startswith("reading the log of pod corral-d12-r34-x failed: HTTP 403 Forbidden: ")
    assert 'cannot get resource "pods/log"' in str(refused.value)
    fake_api.failures[("GET", "pods/log")] = (
        400, 'container "vllm" in pod "corral-d12-r34-x" is waiting to start: ContainerCreating')
    with pytest.raises(LogUnavailable, match="HTTP 400 Bad Request: container .* is waiting to start"):
        backend.log_tail(REF, lines=10)
    fake_api.failures[("GET", "pods")] = (500, "etcdserver: request timed out")
    with pytest.raises(LogUnavailable, match="listing pods of corral-d12-r34 failed: HTTP 500 .*timed out"):
        backend.log_tail(REF, lines=10)


# --- configuration ------------------------------------------------------------------------------------


def test_it_reads_its_configuration_from_django_settings_when_first_used(fake_api: FakeApiServer, settings: Any,
                                                                         tmp_path: Path) -> None:
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "other",
        "clusters": [{"name": "fake", "cluster": {"server": fake_api.url}},
                     {"name": "elsewhere", "cluster": {"server": "http://127.0.0.1:9"}}],
        "users": [{"name": "corral", "user": {"token": "sa-token-123"}}],
        "contexts": [{"name": "fake", "context": {"cluster": "fake", "user": "corral"}},
                     {"name": "other", "context": {"cluster": "elsewhere", "user": "corral"}}],
    }))
    backend = KubernetesBackend()  # nothing is read yet: settings may change until first use
    settings.KUBERNETES_KUBECONFIG = str(kubeconfig)
    settings.KUBERNETES_CONTEXT = "fake"
    settings.KUBERNETES_NAMESPACE = "tenants-eu"
    settings.KUBERNETES_HF_TOKEN_SECRET = "hf-token"
    handle = backend.start(BASE_SPEC)
    assert handle.endpoint == "http://corral-d12-r34.tenants-eu.svc:8000"
    assert {r.path.split("/namespaces/")[1].split("/")[0] for r in fake_api.requests} == {"tenants-eu"}
    assert {r.authorization for r in fake_api.requests} == {"Bearer sa-token-123"}
    [deployment] = [r.body for r in fake_api.requests if r.body["kind"] == "Deployment"]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "vllm/vllm-openai:v0.32.0"
    assert "HF_TOKEN" in {item["name"] for item in container["env"]}
    pinned = "registry.example/vllm-openai@sha256:" + "4f" * 32
    settings.KUBERNETES_VLLM_IMAGE = pinned
    settings.KUBERNETES_VLLM_RUN_AS_USER = None
    backend.start(BASE_SPEC)
    deployment = fake_api.requests[-3].body
    assert deployment["spec"]["template"]["spec"]["containers"][0]["image"] == pinned
    assert deployment["spec"]["template"]["spec"]["securityContext"]["runAsNonRoot"] is False


def test_its_names_agree_with_the_rendered_objects() -> None:
    assert object_name(12, 34) == "corral-d12-r34"
    assert key_secret_name(12, 34) == "corral-d12-r34-api-key"
    manifests = render()
    assert manifests["Deployment"]["metadata"]["name"] == object_name(12, 34)
    assert manifests["Secret"]["metadata"]["name"] == key_secret_name(12, 34)


def test_a_deleted_deployment_leaves_nothing_behind(backend: KubernetesBackend, fake_api: FakeApiServer) -> None:
    """Every replica's Secret and Service is owned by its Deployment (Kubernetes' garbage collector deletes
    them with it), and stopping each replica deletes everything carrying its labels."""
    refs = [replace(REF, replica_id=replica_id) for replica_id in (34, 35)]
    for ref in refs:
        backend.start(replace(BASE_SPEC, replica_id=ref.replica_id))
    deployments = {o["metadata"]["name"]: o["metadata"]["uid"] for o in fake_api.objects.values()
                   if o["kind"] == "Deployment"}
    for obj in fake_api.objects.values():
        if obj["kind"] != "Deployment":
            [owner] = obj["metadata"]["ownerReferences"]
            replica = obj["metadata"]["labels"]["corral.io/replica"]
            assert owner["uid"] == deployments[f"corral-d12-r{replica}"] and owner["kind"] == "Deployment"
    fake_api.pods = [_pod()]
    for ref in refs:
        backend.stop(ref, grace_seconds=20)
    assert fake_api.objects == {} and fake_api.pods == []
    assert all(backend.stopped(ref) for ref in refs)

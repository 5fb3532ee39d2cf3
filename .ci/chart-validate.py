"""Validates rendered chart manifests against pinned Kubernetes schemas, and checks what the chart promises.

    .venv/bin/python .ci/chart-validate.py RENDERED.yaml...

Every object is validated with kubernetes-validate in strict mode (an unknown field is an error) against
each version in KUBERNETES_VERSIONS. Then, per rendered file, what docs/kubernetes.md says the chart does:
exactly one beat (replicas 1, Recreate), the migrate Job a pre-install/pre-upgrade hook, an HPA on web, a
PodDisruptionBudget per scaled Deployment, secrets reaching pods only as *_FILE paths from existing
Secrets, the provisioner Role granting exactly what inference/backends/kubernetes.py calls, and the
NetworkPolicy admitting only Corral's web and worker pods to vLLM's port.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import kubernetes_validate
import yaml

ROOT = Path(__file__).resolve().parent.parent

# Pinned: the oldest Kubernetes the chart supports (Chart.yaml kubeVersion) and a current one.
KUBERNETES_VERSIONS = ("1.30.0", "1.33.0")
# inference/backends/kubernetes.py: patch_namespaced_secret/service/deployment (server-side apply, which
# needs create for an object's first apply), delete_collection_namespaced_* by the replica's labels,
# read_namespaced_deployment, list_namespaced_deployment, list_namespaced_pod and read_namespaced_pod_log.
PROVISIONER_RULES = {("", "secrets"): {"create", "patch", "deletecollection"},
                     ("", "services"): {"create", "patch", "deletecollection"},
                     ("", "pods"): {"list", "deletecollection"},
                     ("", "pods/log"): {"get"},
                     ("apps", "deployments"): {"get", "list", "create", "patch", "deletecollection"}}
SECRET_SETTINGS = {"SECRET_KEY", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"}


class Failed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise Failed(message)


def pod_spec(obj: dict[str, Any]) -> dict[str, Any]:
    return obj["spec"]["template"]["spec"]


def check_promises(objects: list[dict[str, Any]]) -> list[str]:
    by_kind: dict[str, list[dict[str, Any]]] = {}
    for obj in objects:
        by_kind.setdefault(obj["kind"], []).append(obj)
    deployments = {obj["metadata"]["labels"]["app.kubernetes.io/component"]: obj for obj in by_kind["Deployment"]}
    check(set(deployments) == {"web", "worker", "beat"}, f"Deployments: {sorted(deployments)}")
    notes = []

    beat = deployments["beat"]
    check(beat["spec"]["replicas"] == 1 and beat["spec"]["strategy"]["type"] == "Recreate",
          "beat must be one replica replaced with Recreate")
    notes.append("beat: replicas 1, strategy Recreate")

    jobs = by_kind.get("Job", [])
    check(len(jobs) == 1, "one migrate Job")
    hooks = jobs[0]["metadata"].get("annotations", {}).get("helm.sh/hook", "")
    check(set(hooks.split(",")) == {"pre-install", "pre-upgrade"}, f"migrate Job hook: {hooks!r}")
    check(pod_spec(jobs[0])["containers"][0]["command"] == ["python", "manage.py", "migrate", "--noinput"],
          "migrate Job command")
    check("serviceAccountName" not in pod_spec(jobs[0]),
          "the migrate hook runs before the release's service accounts exist: it must not name one")
    notes.append(f"migrate Job: helm.sh/hook {hooks}")

    hpas = by_kind.get("HorizontalPodAutoscaler", [])
    check(len(hpas) == 1 and hpas[0]["spec"]["scaleTargetRef"]["name"] == deployments["web"]["metadata"]["name"],
          "one HPA, on web")
    check("replicas" not in deployments["web"]["spec"], "with an HPA, web's Deployment must leave replicas alone")
    notes.append(f"HPA on web: {hpas[0]['spec']['minReplicas']}..{hpas[0]['spec']['maxReplicas']} replicas")

    pdbs = {obj["spec"]["selector"]["matchLabels"]["app.kubernetes.io/component"] for obj in by_kind["PodDisruptionBudget"]}
    check(pdbs == {"web", "worker"}, f"PodDisruptionBudgets for web and worker, got {sorted(pdbs)}")
    notes.append("PodDisruptionBudgets: web, worker")

    for obj in [*deployments.values(), *jobs]:
        spec = pod_spec(obj)
        volumes = {volume["name"]: volume for volume in spec["volumes"]}
        sources = volumes["secrets"]["projected"]["sources"]
        for container in spec["containers"]:
            env = {item["name"]: item for item in container["env"]}
            for setting in SECRET_SETTINGS:
                check(setting not in env, f"{obj['metadata']['name']}: {setting} must come as a file")
                check(f"{setting}_FILE" in env, f"{obj['metadata']['name']}: no {setting}_FILE")
            check(all("value" in item or "valueFrom" not in item for item in env.values()),
                  "no environment variable from a Secret")
            check(container["securityContext"]["readOnlyRootFilesystem"] is True, "read-only root file system")
        check(spec["securityContext"]["runAsNonRoot"] is True and spec["securityContext"]["runAsUser"] == 10001,
              "pods run as the image's uid 10001")
        check(len(sources) >= len(SECRET_SETTINGS) and all("secret" in source for source in sources),
              "secrets come from existing Secrets")
    notes.append("secrets: files from existing Secrets (" + ", ".join(sorted(
        {s["secret"]["name"] for obj in deployments.values() for s in
         {v["name"]: v for v in pod_spec(obj)["volumes"]}["secrets"]["projected"]["sources"]})) + ") via *_FILE")

    web = pod_spec(deployments["web"])["containers"][0]
    allowed = {item["name"]: item.get("value", "") for item in web["env"]}["ALLOWED_HOSTS"].split(",")
    probe_host = {h["name"]: h["value"] for h in web["readinessProbe"]["httpGet"]["httpHeaders"]}["Host"]
    check(probe_host in allowed, f"the readiness probe's Host {probe_host} is not in ALLOWED_HOSTS {allowed}")
    notes.append(f"web readiness probe: /healthz with Host {probe_host}, which ALLOWED_HOSTS lists")

    # The worker and beat probes are the compose health checks that .ci/image-proof.py runs.
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())["services"]
    for name in ("worker", "beat"):
        probe = pod_spec(deployments[name])["containers"][0]["livenessProbe"]["exec"]["command"]
        kind, *test = compose[name]["healthcheck"]["test"]
        expected = ["sh", "-c", " ".join(test).replace("$$", "$")] if kind == "CMD-SHELL" else test
        check(probe == expected, f"{name} liveness probe {probe} differs from compose's health check {expected}")
    notes.append("worker and beat liveness probes: the compose health checks the image proof runs")

    tokens = {name: pod_spec(obj).get("automountServiceAccountToken") for name, obj in deployments.items()}
    check(tokens["web"] is False and tokens["beat"] is False, "only the worker gets an API token")
    roles = by_kind.get("Role", [])
    if roles:
        granted = {}
        for rule in roles[0]["rules"]:
            for group in rule["apiGroups"]:
                for resource in rule["resources"]:
                    granted[(group, resource)] = set(rule["verbs"])
        check(granted == PROVISIONER_RULES, f"provisioner Role grants {granted}, the backend needs {PROVISIONER_RULES}")
        binding = by_kind["RoleBinding"][0]
        check(binding["subjects"][0]["name"] == pod_spec(deployments["worker"])["serviceAccountName"],
              "the Role is bound to the worker's service account")
        notes.append(f"Role in {roles[0]['metadata']['namespace']}: exactly the backend's verbs, bound to the worker")
        policies = by_kind.get("NetworkPolicy", [])
        check(len(policies) == 1, "one NetworkPolicy for the vLLM pods")
        policy = policies[0]["spec"]
        check(policy["podSelector"]["matchLabels"] == {"app.kubernetes.io/managed-by": "corral"},
              "the NetworkPolicy selects the pods the backend labels")
        source = policy["ingress"][0]["from"][0]
        components = [e["values"] for e in source["podSelector"]["matchExpressions"]
                      if e["key"] == "app.kubernetes.io/component"][0]
        check(sorted(components) == ["web", "worker"] and len(policy["ingress"]) == 1
              and len(policy["ingress"][0]["from"]) == 1, "vLLM accepts Corral's web and worker pods only")
        check(policy["ingress"][0]["ports"] == [{"port": 8000, "protocol": "TCP"}], "on vLLM's port only")
        notes.append("NetworkPolicy: vLLM pods accept web and worker pods of this release only, port 8000")
    return notes


def main() -> int:
    failed = False
    for path in sys.argv[1:]:
        objects = [obj for obj in yaml.safe_load_all(Path(path).read_text()) if obj]
        errors = []
        for obj in objects:
            for version in KUBERNETES_VERSIONS:
                try:
                    kubernetes_validate.validate(obj, version, strict=True)
                except (kubernetes_validate.ValidationError, kubernetes_validate.SchemaNotFoundError) as error:
                    errors.append(f"  {obj.get('kind')} {obj.get('metadata', {}).get('name')} "
                                  f"(Kubernetes {version}): {getattr(error, 'message', error)}")
        kinds: dict[str, int] = {}
        for obj in objects:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        summary = ", ".join(f"{count} {kind}" for kind, count in sorted(kinds.items()))
        if errors:
            failed = True
            print(f"{path}: {len(errors)} schema error(s):\n" + "\n".join(errors))
            continue
        print(f"{path}: {len(objects)} objects valid (strict) against Kubernetes "
              f"{' and '.join(KUBERNETES_VERSIONS)}: {summary}")
        try:
            for note in check_promises(objects):
                print(f"  {note}")
        except Failed as failure:
            failed = True
            print(f"{path}: {failure}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env bash
# CI: the Helm chart (deploy/helm/corral) lints, renders and validates, with its default values and with
# values-production.yaml. Helm's engine comes from helm-python-sdk (scripts/install-deploy-tools.sh: no
# registry this project reaches ships a helm binary); kubernetes-validate (a dev dependency) checks every
# object against pinned Kubernetes schemas, and .ci/chart-validate.py what docs/kubernetes.md promises.
# No cluster is contacted: what stays unproven is in docs/kubernetes.md.
set -euo pipefail
cd "$(dirname "$0")/.."

started=$SECONDS
scripts/install-deploy-tools.sh
test -x .venv/bin/python || make install
chart=deploy/helm/corral
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
.venv-deploy/bin/python .ci/chart-render.py "$chart" "$out/default.yaml"
.venv-deploy/bin/python .ci/chart-render.py "$chart" "$out/production.yaml" --values "$chart/values-production.yaml" \
    --kube-version v1.33.0
.venv/bin/python .ci/chart-validate.py "$out/default.yaml" "$out/production.yaml"
echo "chart check: $((SECONDS - started)) s"

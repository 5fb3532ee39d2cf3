#!/usr/bin/env bash
# Installs the tools that build and check Corral's deployment files into their own virtual environment
# (default: .venv-deploy/ at the repo root, override with DEPLOY_TOOLS_VENV). Corral never imports them.
#   - uv: compiles requirements.lock from pyproject.toml (scripts/lock-requirements.sh, .ci/lock-drift.sh);
#   - helm-python-sdk: Helm's own Go engine (Helm v4.2.3's SDK, compiled into the wheel) behind a Python API.
#     No registry this project can reach ships a `helm` binary (PyPI, Debian and npm were searched), so
#     .ci/chart-check.sh renders and lints the chart through this library: the same template engine, values
#     coalescing and lint rules as `helm template` and `helm lint`.
#
# Idempotent: a stamp file in the venv records the pins; re-running unchanged returns at once.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${DEPLOY_TOOLS_VENV:-$ROOT/.venv-deploy}"
PYTHON="${PYTHON:-python3}"
# Pinned exactly; both wheels have no dependencies. uv is the release scripts/install-vllm-cpu.sh uses.
PINS=(uv==0.13.9 helm-python-sdk==0.2.2)
STAMP="$VENV/.corral-deploy-tools"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "${PINS[*]}" ] && [ -x "$VENV/bin/uv" ]; then
    exit 0
fi
started=$SECONDS
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet "${PINS[@]}" 2>&1 | grep -v "is ignored: it is neither" >&2 || true
"$VENV/bin/uv" --version >/dev/null
"$VENV/bin/python" -c 'import helm_python; print("helm SDK", helm_python.helm_sdk_version())' >/dev/null
echo "${PINS[*]}" >"$STAMP"
echo "deploy tools (${PINS[*]}) installed in $VENV in $((SECONDS - started)) s" >&2

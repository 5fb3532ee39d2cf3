#!/usr/bin/env bash
# Writes requirements.lock: every package the image installs (pyproject.toml's [project] dependencies and
# theirs, no dev tools), each pinned and with the SHA-256 of every file PyPI publishes for that release, so
# `pip install --require-hashes` in the Dockerfile installs exactly these bytes.
#
#   scripts/lock-requirements.sh            # after changing pyproject.toml's dependencies; commit both
#   scripts/lock-requirements.sh OUT        # write elsewhere (.ci/lock-drift.sh compares)
#
# uv keeps the versions already in the output file unless pyproject.toml asks otherwise, so a transitive
# dependency only moves when you mean it to: delete the file first to take new releases. The hashes are
# always asked of PyPI afresh (uv would carry over those of the old file, a mistyped one included).
# The resolution is for Python 3.11 on Linux, the image's; the hashes cover every platform's wheels.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/requirements.lock}")"
"$ROOT/scripts/install-deploy-tools.sh"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
if [ -f "$OUT" ]; then  # the old pins, without their hashes, as uv's starting point
    sed -e '/^ *--hash=/d' -e 's/ \\$//' "$OUT" >"$work/requirements.lock"
fi
cd "$ROOT"
"${DEPLOY_TOOLS_VENV:-$ROOT/.venv-deploy}/bin/uv" pip compile pyproject.toml --quiet --no-progress --generate-hashes \
    --python-version 3.11 --python-platform linux --index-url https://pypi.org/simple \
    --custom-compile-command "scripts/lock-requirements.sh" --output-file "$work/requirements.lock"
mv "$work/requirements.lock" "$OUT"

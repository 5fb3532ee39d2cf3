"""A stand-in for `vllm serve` in the fast tests: the same command-line flags, /health, /metrics and the
API key from VLLM_API_KEY, in milliseconds instead of a minute. The real engine is exercised by
test_vllm_e2e.py. Behaviour switches (for crash tests) come from FAKE_VLLM_* environment variables.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


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
    key = os.environ.get("VLLM_API_KEY", "")
    name = args.served_model_name
    print(f"fake vllm serving {name} on {args.port}; args={sys.argv[1:]}", flush=True)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, code: int, body: bytes, content_type: str = "application/json") -> None:
            self.send_response(code)
            self.send_header("Content-Type", content_type)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:  # noqa: N802
            if self.path == "/health":
                sick = os.environ.get("FAKE_VLLM_SICK_FILE")
                self._send(503 if sick and os.path.exists(sick) else 200, b"")
            elif self.path == "/metrics":
                self._send(200, (
                    "# TYPE vllm:num_requests_running gauge\n"
                    f'vllm:num_requests_running{{model_name="{name}"}} 2.0\n'
                    "# TYPE vllm:num_requests_waiting gauge\n"
                    f'vllm:num_requests_waiting{{model_name="{name}"}} 1.0\n'
                    "# TYPE vllm:kv_cache_usage_perc gauge\n"
                    f'vllm:kv_cache_usage_perc{{model_name="{name}"}} 0.25\n'
                    "# TYPE vllm:prompt_tokens counter\n"
                    f'vllm:prompt_tokens_total{{model_name="{name}"}} 120.0\n'
                ).encode(), "text/plain; version=0.0.4")
            elif self.path == "/v1/models":
                if self.headers.get("Authorization") != f"Bearer {key}":
                    self._send(401, b'{"error": "unauthorized"}')
                else:
                    self._send(200, json.dumps({"data": [{"id": name}]}).encode())
            else:
                self._send(404, b"{}")

        def log_message(self, *a: object) -> None:
            pass

    server = ThreadingHTTPServer((args.host, args.port), Handler)
    try:
        server.serve_forever()
    finally:
        time.sleep(0)


if __name__ == "__main__":
    main()

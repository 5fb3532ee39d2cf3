"""Cost of the observability layer per request: config.observability.ObservedApp (request id, the request
counter and latency histogram, the X-Request-ID response header) around an ASGI app that answers at once,
against the same app called bare, in one process with no network, so the difference is the layer's own cost.
Also the cost of counting one gateway refusal.

    .venv/bin/python bench/observability.py [--requests 200000]
    PROMETHEUS_MULTIPROC_DIR=$(mktemp -d) .venv/bin/python bench/observability.py   # multiprocess mode

Not a test: CI does not run it. docs/benchmarks.md has the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
os.environ.setdefault("LOG_LEVEL", "WARNING")

import django  # noqa: E402

django.setup()

from config.observability import ObservedApp, count_refusal  # noqa: E402

SCOPE = {"type": "http", "method": "POST", "path": "/v1/chat/completions",
         "headers": [(b"host", b"127.0.0.1"), (b"authorization", b"Bearer crl_x"),
                     (b"content-type", b"application/json"),
                     (b"x-request-id", b"client-trace-0001")]}
START = {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
BODY = {"type": "http.response.body", "body": b"{}"}


async def answer(scope, receive, send) -> None:
    await send(dict(START, headers=list(START["headers"])))
    await send(BODY)


async def receive():
    return {"type": "http.request", "body": b"", "more_body": False}


async def sink(message) -> None:
    pass


async def run(app, n: int) -> float:
    started = time.perf_counter()
    for _ in range(n):
        await app(dict(SCOPE), receive, sink)
    return (time.perf_counter() - started) / n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    observed = ObservedApp(answer)
    bare_runs, observed_runs = [], []
    for _ in range(args.rounds):  # interleaved, so drift in the machine's load hits both alike
        bare_runs.append(asyncio.run(run(answer, args.requests)))
        observed_runs.append(asyncio.run(run(observed, args.requests)))
    bare, wrapped = statistics.median(bare_runs), statistics.median(observed_runs)
    started = time.perf_counter()
    for _ in range(args.requests):
        count_refusal("rate_limit_exceeded")
    refusal = (time.perf_counter() - started) / args.requests
    mode = "multiprocess" if os.environ.get("PROMETHEUS_MULTIPROC_DIR") else "single process"
    print(f"{platform.processor() or platform.machine()}, Python {platform.python_version()}, prometheus-client "
          f"{mode}, {args.requests} requests x {args.rounds} rounds (median)")
    print(f"bare app:            {bare * 1e6:7.2f} us/request")
    print(f"with ObservedApp:    {wrapped * 1e6:7.2f} us/request")
    print(f"the layer's cost:    {(wrapped - bare) * 1e6:7.2f} us/request")
    print(f"count one refusal:   {refusal * 1e6:7.2f} us")


if __name__ == "__main__":
    main()

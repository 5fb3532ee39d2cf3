"""Load run: many tenants ingesting activity, reading their MAU and calling the gateway (streaming and not)
at once, for minutes, against the production stack on this machine: uvicorn (config.asgi), PostgreSQL, Redis
and a Celery worker compacting and evaluating behind it. The replicas are the fast stand-in for vLLM
(tests/inference/fake_openai.py under uvicorn), so the figures are Corral's, not a model's.

    make bench-load                                   # 20 tenants, 32 virtual users, 4 minutes
    make bench-load BENCH_ARGS="--seconds 60 --users 16"

Each virtual user loops: pick a tenant, pick an operation by weight (ingest a batch of 100 ids with an
Idempotency-Key 40%, MAU of the product this month 20%, chat completion 25%, streamed chat completion 15%),
wait for the whole answer. Prints requests, throughput, p50/p99 and errors per endpoint, and writes them to
var/bench-load.json. Needs PostgreSQL and Redis on 127.0.0.1; uses the database ``corral_faults`` and Redis
databases 10 and 11. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import random
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import production_env, recreate_database, spawn, stop, wait_until_up  # noqa: E402

DATABASE = "corral_faults"
production_env(database=DATABASE, redis_db=10, broker_db=11)
UPSTREAM_PORT, CORRAL_PORT = 8793, 8794
WEIGHTS = {"ingest": 40, "mau": 20, "chat": 25, "chat_stream": 15}
MESSAGES = [{"role": "user", "content": "Say something short about llamas."}]


def setup(tenants: int) -> list[dict]:
    recreate_database(DATABASE)
    subprocess.run([sys.executable, "manage.py", "migrate", "--noinput", "-v", "0"], cwd=ROOT, check=True)
    import redis

    for url in (os.environ["REDIS_URL"], os.environ["CELERY_BROKER_URL"]):
        redis.Redis.from_url(url).flushdb()
    out = subprocess.run([sys.executable, "tests/faults/tenants.py", str(tenants), "read,ingest,inference",
                          f"http://127.0.0.1:{UPSTREAM_PORT}"], cwd=ROOT, check=True, capture_output=True,
                         text=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] if ordered else 0.0


async def run(tenants: list[dict], *, users: int, seconds: float, seed: int) -> tuple[dict, float]:
    import aiohttp

    base = f"http://127.0.0.1:{CORRAL_PORT}"
    today = dt.datetime.now(dt.UTC).date()
    latencies: dict[str, list[float]] = defaultdict(list)  # of the requests that got an answer
    sent: dict[str, int] = defaultdict(int)
    errors: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    operations, weights = list(WEIGHTS), list(WEIGHTS.values())
    counter = iter(range(10**9))

    async def call(session: aiohttp.ClientSession, rng: random.Random, name: str, tenant: dict) -> None:
        headers = {"Authorization": f"Bearer {tenant['key']}"}
        if name == "ingest":
            ids = [f"user-{n}" for n in rng.sample(range(50_000), 100)]
            request = session.post(f"{base}/api/v1/products/{tenant['product']}/activity",
                                   json={"day": today.isoformat(), "user_ids": ids},
                                   headers={**headers, "Idempotency-Key": f"load-{next(counter)}"})
        elif name == "mau":
            request = session.get(f"{base}/api/v1/products/{tenant['product']}/mau",
                                  params={"month": f"{today:%Y-%m}"}, headers=headers)
        else:
            body = {"model": tenant["model"], "messages": MESSAGES, "max_tokens": 16,
                    "user": f"user-{rng.randrange(50_000)}"}
            if name == "chat_stream":
                body["stream"] = True
            request = session.post(f"{base}/v1/chat/completions", json=body, headers=headers)
        sent[name] += 1
        started = time.monotonic()
        try:
            async with request as response:
                payload = await response.read()
                status = response.status
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            errors[name][type(exc).__name__] += 1
            return
        latencies[name].append(time.monotonic() - started)
        if status >= 400 or (name == "chat_stream" and b"data: [DONE]" not in payload):
            errors[name][str(status) if status >= 400 else "stream incomplete"] += 1

    async def user(number: int, session: aiohttp.ClientSession, until: float) -> None:
        rng = random.Random(seed * 1000 + number)
        while time.monotonic() < until:
            await call(session, rng, rng.choices(operations, weights)[0], rng.choice(tenants))

    connector = aiohttp.TCPConnector(limit=users)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=60)) as session:
        started = time.monotonic()
        await asyncio.gather(*(user(n, session, started + seconds) for n in range(users)))
        elapsed = time.monotonic() - started
    results = {}
    for name in operations:
        done = latencies[name]
        failed = sum(errors[name].values())
        results[name] = {
            "requests": sent[name], "per_second": round(sent[name] / elapsed, 1),
            "p50_ms": round(percentile(done, 0.50) * 1000, 1), "p99_ms": round(percentile(done, 0.99) * 1000, 1),
            "errors": dict(errors[name]), "error_rate": round(failed / max(sent[name], 1), 5),
        }
    return results, elapsed


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tenants", type=int, default=20)
    parser.add_argument("--users", type=int, default=32, help="concurrent virtual users")
    parser.add_argument("--seconds", type=float, default=240)
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()

    tenants = setup(args.tenants)
    upstream = spawn([sys.executable, str(ROOT / "tests/inference/fake_openai.py"), "--port", str(UPSTREAM_PORT),
                      *(arg for t in tenants for arg in ("--key", t["upstream_key"]))], quiet=True)
    corral = spawn([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(CORRAL_PORT),
                    "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"],
                   quiet=True)
    worker = spawn([sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", "1",
                    "--without-gossip", "--without-mingle", "--loglevel", "WARNING"], quiet=True)
    try:
        wait_until_up(UPSTREAM_PORT, "/health")
        wait_until_up(CORRAL_PORT, "/healthz")
        print(f"{args.tenants} tenants, {args.users} virtual users, {args.seconds:.0f} s", flush=True)
        results, elapsed = asyncio.run(run(tenants, users=args.users, seconds=args.seconds, seed=args.seed))
    finally:
        stop(worker)
        stop(corral)
        stop(upstream)

    total = sum(r["requests"] for r in results.values())
    failed = sum(sum(r["errors"].values()) for r in results.values())
    print(f"\n{'endpoint':12} {'requests':>9} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7}")
    for name, r in results.items():
        print(f"{name:12} {r['requests']:9d} {r['per_second']:8.1f} {r['p50_ms']:8.1f} {r['p99_ms']:8.1f} "
              f"{sum(r['errors'].values()):7d} {r['errors'] or ''}")
    print(f"{'all':12} {total:9d} {total / elapsed:8.1f} {'':8} {'':8} {failed:7d}  error rate "
          f"{failed / max(total, 1):.4%}")
    out = ROOT / "var" / "bench-load.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "tenants": args.tenants, "users": args.users,
                               "seconds": round(elapsed, 1), "results": results}, indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

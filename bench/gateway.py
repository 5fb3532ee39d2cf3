"""Gateway benchmark: requests/s and added latency through Corral's gateway, against the same fast upstream
called directly and through LiteLLM's proxy, non-streaming and streaming, at 1 and 32 connections, in one run.

    make bench-gateway                          # about 4 minutes with LiteLLM (10 s per case)
    make bench-gateway BENCH_ARGS="--seconds 20 --no-litellm"

Every check is on in Corral: key authentication, the licence gate, request/token/concurrency limits per key
and organisation in Redis (limits set high enough not to refuse, so every request pays for them), routing,
metering of tokens and users. LiteLLM runs with virtual-key auth and an rpm limit on the key
(scripts/install-litellm.sh, bench/litellm_proxy.py). Load comes from wrk (Debian package `wrk`), one
thread. One server process each; the upstream is tests/inference/fake_openai.py under uvicorn, answering
like vLLM (5 completion tokens; streams of 5 chunks plus the usage chunk when asked).

Needs PostgreSQL and Redis on 127.0.0.1; uses the database ``corral_bench_gw``. Prints every figure and
writes them as JSON to var/bench-gateway.json. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import production_env, recreate_database, spawn, stop, wait_until_up  # noqa: E402

DATABASE = "corral_bench_gw"
production_env(database=DATABASE, redis_db=12, broker_db=13)
UPSTREAM_PORT, CORRAL_PORT, LITELLM_PORT = 8790, 8791, 8792
UPSTREAM_KEY = "bench-upstream-key"
MODEL = "bench-model"
MESSAGES = [{"role": "user", "content": "Say something short about llamas."}]


def _setup_tenant() -> str:
    """An organisation with an accepted licence, a ready deployment at the upstream, and a key with high limits."""
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    from access.keys import api_key_create
    from inference.models import Deployment, GatewayLimit, Replica, ReplicaState
    from licensing.models import BaseModel, LicenceVersion
    from licensing.services import licence_accept, organisation_create, product_create

    version = LicenceVersion.objects.get(slug="llama-3.1")
    organisation = organisation_create(name="Bench Tenant", group_name="Bench Group", actor="bench")
    licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="bench")
    product = product_create(organisation=organisation, name="Bench Chat", licence_version=version, actor="bench")
    base = BaseModel.objects.filter(licence_version=version).first()
    deployment = Deployment.objects.create(
        organisation=organisation, product=product, licence_version=version, base_model=base,
        model_source=base.repo_id, served_model_name=MODEL, state="ready", created_by="bench")
    replica = Replica.objects.create(deployment=deployment, ordinal=0, state=ReplicaState.READY, key_salt="bench",
                                     endpoint=f"http://127.0.0.1:{UPSTREAM_PORT}", last_health_ok=True)
    # Limits on, high enough that the load never reaches them: every request still reserves and settles.
    GatewayLimit.objects.create(organisation=organisation, requests_per_minute=100_000_000,
                                tokens_per_minute=2_000_000_000, max_concurrent=10_000)
    _, key = api_key_create(organisation=organisation, name="bench", scopes=["inference"], created_by="bench")
    from access.models import ApiKey

    ApiKey.objects.filter(prefix=key.split(".")[0]).update(
        requests_per_minute=100_000_000, tokens_per_minute=2_000_000_000, max_concurrent=10_000,
        default_user="bench-user")
    from inference.models import replica_key

    global UPSTREAM_KEY
    UPSTREAM_KEY = replica_key(replica.pk, replica.key_salt)
    return key


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process and its children (uvicorn's worker is the server itself here)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(f) for f in fields[11:15]) / ticks


_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def _wrk(url: str, key: str, body: dict, connections: int, seconds: float) -> dict:
    script = tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False)
    script.write('wrk.method = "POST"\n'
                 f"wrk.body = {json.dumps(json.dumps(body))}\n"
                 'wrk.headers["Content-Type"] = "application/json"\n'
                 f'wrk.headers["Authorization"] = "Bearer {key}"\n')
    script.close()
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{int(seconds)}s", "--latency", "-s", script.name, url],
                         capture_output=True, text=True, check=True).stdout
    os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
    total = int(re.search(r"(\d+) requests in", out).group(1))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    latency = {}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)", out).groups()
        latency[pct] = float(value) * _UNITS[unit]
    return {"rps": rps, "requests": total, "p50_ms": latency["50"], "p99_ms": latency["99"],
            "non_2xx": int(non2xx.group(1)) if non2xx else 0,
            "socket_errors": sum(int(g) for g in errors.groups()) if errors else 0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=10, help="duration of each case")
    parser.add_argument("--no-litellm", action="store_true", help="skip LiteLLM's proxy")
    args = parser.parse_args()
    if shutil.which("wrk") is None:
        raise SystemExit("wrk is needed: apt-get install wrk")

    recreate_database(DATABASE)
    key = _setup_tenant()
    upstream = spawn([sys.executable, str(ROOT / "tests/inference/fake_openai.py"), "--port", str(UPSTREAM_PORT),
                       "--key", UPSTREAM_KEY], quiet=True)
    corral = spawn([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(CORRAL_PORT),
                     "--no-access-log", "--log-level", "warning", "--loop", "uvloop", "--http", "httptools"], quiet=True)
    litellm = None
    targets = {}
    try:
        wait_until_up(UPSTREAM_PORT, "/health")
        wait_until_up(CORRAL_PORT, "/healthz")
        targets["direct"] = (f"http://127.0.0.1:{UPSTREAM_PORT}", UPSTREAM_KEY, MODEL, None)
        targets["corral"] = (f"http://127.0.0.1:{CORRAL_PORT}", key, MODEL, corral.pid)
        if not args.no_litellm:
            from bench.litellm_proxy import start_litellm

            litellm = start_litellm(f"http://127.0.0.1:{UPSTREAM_PORT}/v1", MODEL, port=LITELLM_PORT,
                                    rpm_limit=100_000_000, upstream_key=UPSTREAM_KEY)
            targets["litellm"] = (litellm.base_url.rstrip("/").removesuffix("/v1"), litellm.key, MODEL, litellm.pid)
        results = []
        for stream in (False, True):
            for connections in (1, 32):
                for name, (base, bearer, model, pid) in targets.items():
                    body = {"model": model, "messages": MESSAGES, "max_tokens": 16}
                    if stream:
                        body["stream"] = True
                    url = f"{base}/v1/chat/completions"
                    _wrk(url, bearer, body, connections, 2)  # warm-up: connections, caches, JIT-free paths
                    cpu_before = _cpu_seconds(pid) if pid else None
                    figures = _wrk(url, bearer, body, connections, args.seconds)
                    if pid:
                        figures["server_cpu_us_per_request"] = round(
                            (_cpu_seconds(pid) - cpu_before) / max(figures["requests"], 1) * 1e6)
                    figures.update(target=name, stream=stream, connections=connections)
                    results.append(figures)
                    print(f"{'stream' if stream else 'plain ':6} c={connections:<2} {name:8} "
                          f"{figures['rps']:8.0f} req/s  p50 {figures['p50_ms']:7.2f} ms  p99 "
                          f"{figures['p99_ms']:7.2f} ms  non-2xx {figures['non_2xx']}"
                          + (f"  server CPU {figures['server_cpu_us_per_request']} us/req" if pid else ""),
                          flush=True)
    finally:
        if litellm is not None:
            litellm.stop()
        stop(corral)
        stop(upstream)

    def pick(target: str, stream: bool, connections: int) -> dict | None:
        return next((r for r in results if (r["target"], r["stream"], r["connections"]) ==
                     (target, stream, connections)), None)

    print("\nSummary")
    for stream in (False, True):
        label = "streaming" if stream else "non-streaming"
        direct1, corral1 = pick("direct", stream, 1), pick("corral", stream, 1)
        corral32, litellm32 = pick("corral", stream, 32), pick("litellm", stream, 32)
        print(f"  {label}: Corral {corral32['rps']:.0f} req/s at 32 connections (goal >= 1000); added p50 at one "
              f"connection {corral1['p50_ms'] - direct1['p50_ms']:.2f} ms (goal < 1 ms)"
              + (f"; LiteLLM {litellm32['rps']:.0f} req/s, Corral/LiteLLM {corral32['rps'] / litellm32['rps']:.1f}x "
                 "(goal >= 2x)" if litellm32 else ""))
    out = ROOT / "var" / "bench-gateway.json"
    out.parent.mkdir(exist_ok=True)
    out.write_text(json.dumps({"date": time.strftime("%Y-%m-%d"), "seconds": args.seconds, "results": results},
                              indent=2))
    print(f"\nwritten to {out.relative_to(ROOT)}")


if __name__ == "__main__":
    main()

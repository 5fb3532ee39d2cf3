"""Crossing-to-webhook latency: from the ingestion request that crosses a level to the signed webhook arriving.

    make bench-alerts                      # embedded default (SQLite, filesystem broker) and PostgreSQL + Redis

Starts uvicorn and a Celery worker as `make run` does, a local HTTP receiver that verifies each signature,
and sends batches that cross 50%, 75%, 90% and then the threshold itself (the threshold is set low in the
catalogue of this private database, as an admin could). Prints each latency. Not a test; CI does not run it.
"""

from __future__ import annotations

import http.client
import http.server
import json
import os
import queue
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import stop  # noqa: E402

PORT = 8766
SETUP = """
import django, json, os
django.setup()
from django.core.management import call_command
call_command("migrate", verbosity=0)
from access.keys import api_key_create
from governance.webhooks.services import webhook_endpoint_create
from licensing.models import LicenceVersion
from licensing.services import licence_accept, organisation_create, product_create
version = LicenceVersion.objects.get(slug="llama-3.1")
version.mau_threshold = 100_000
version.save()
org = organisation_create(name="Latency Co", group_name="Latency Group", actor="bench")
product = product_create(organisation=org, name="Chat", licence_version=version, actor="bench")
licence_accept(organisation=org, licence_version=version, licence_sha256=version.licence_sha256,
               aup_version=version.aup_version, accepted_by="bench")
_, key = api_key_create(organisation=org, name="bench", scopes=["read", "ingest"], created_by="bench")
endpoint, secret = webhook_endpoint_create(group=org.group, url=os.environ["RECEIVER"], created_by="bench")
print(json.dumps({"key": key, "product": product.pk, "secret": secret}))
"""


def _receiver(arrivals: queue.Queue) -> http.server.ThreadingHTTPServer:
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's naming
            body = self.rfile.read(int(self.headers["Content-Length"]))
            arrivals.put((time.perf_counter(), body, self.headers.get("Corral-Signature")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


def run(label: str, env: dict[str, str]) -> list[float]:
    arrivals: queue.Queue = queue.Queue()
    server = _receiver(arrivals)
    env = {**os.environ, **env, "RECEIVER": f"http://127.0.0.1:{server.server_address[1]}/hook",
           "WEBHOOK_ALLOW_PRIVATE_NETWORKS": "true", "DJANGO_SETTINGS_MODULE": "config.settings",
           "LOG_LEVEL": "WARNING"}
    setup = json.loads(subprocess.run([sys.executable, "-c", SETUP], cwd=ROOT, env=env, check=True,
                                      capture_output=True, text=True).stdout.strip().splitlines()[-1])
    procs = [
        subprocess.Popen([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(PORT),
                          "--log-level", "warning", "--no-access-log"], cwd=ROOT, env=env, start_new_session=True),
        subprocess.Popen([sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
                          "--concurrency", "2"], cwd=ROOT, env=env, start_new_session=True,
                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL),
    ]
    sys.path.insert(0, str(ROOT))
    from governance.webhooks.signing import verify

    latencies = []
    try:
        time.sleep(6)
        day = time.strftime("%Y-%m-%d", time.gmtime())
        # Cumulative users of the month: 50,500 (50%), 75,500 (75%), 90,500 (90%), 101,000 (over 100,000);
        # half a percent past each level, so the +/-0.4% interval of the estimate is past it too.
        for start, end, level in [(0, 50_500, "50%"), (50_500, 75_500, "75%"), (75_500, 90_500, "90%"),
                                  (90_500, 101_000, "over")]:
            body = json.dumps({"day": day, "user_ids": list(range(start, end))}).encode()
            conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=30)  # idle keep-alives are closed
            sent = time.perf_counter()
            conn.request("POST", f"/api/v1/products/{setup['product']}/activity", body=body,
                         headers={"Authorization": f"Bearer {setup['key']}", "Content-Type": "application/json"})
            response = conn.getresponse()
            response.read()
            if response.status != 202:
                raise SystemExit(f"{label}: ingest answered {response.status}")
            arrived, payload, signature = arrivals.get(timeout=120)
            verify(setup["secret"], payload, signature, now=int(time.time()))
            event = json.loads(payload)
            latency = arrived - sent
            latencies.append(latency)
            print(f"  {label}: crossing {level:>14} -> webhook '{event.get('level')}' ({event.get('type')}) "
                  f"in {latency:.2f} s, signature verified")
            time.sleep(4)  # let the next crossing be its own evaluation
    finally:
        for proc in procs:
            stop(proc)
        server.shutdown()
    return latencies


def main() -> None:
    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    results = {}
    with tempfile.TemporaryDirectory() as var_dir:
        embedded = {"CORRAL_VAR_DIR": var_dir}
        for name in ("DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL"):
            os.environ.pop(name, None)
        results["embedded (SQLite, filesystem broker)"] = run("embedded", embedded)
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        conn.execute('DROP DATABASE IF EXISTS "corral_alerts_bench" WITH (FORCE)')
        conn.execute('CREATE DATABASE "corral_alerts_bench"')
    with tempfile.TemporaryDirectory() as var_dir:
        production = {"CORRAL_VAR_DIR": var_dir,
                      "DATABASE_URL": "postgres://postgres@127.0.0.1:5432/corral_alerts_bench",
                      "REDIS_URL": "redis://127.0.0.1:6379/6", "CELERY_BROKER_URL": "redis://127.0.0.1:6379/7"}
        subprocess.run(["redis-cli", "-n", "6", "flushdb"], capture_output=True)
        subprocess.run(["redis-cli", "-n", "7", "flushdb"], capture_output=True)
        results["PostgreSQL + Redis"] = run("postgres+redis", production)
    print()
    for name, values in results.items():
        print(f"{name}: crossing-to-webhook median {statistics.median(values):.2f} s, max {max(values):.2f} s "
              f"over {len(values)} crossings (goal: 60 s)")


if __name__ == "__main__":
    main()

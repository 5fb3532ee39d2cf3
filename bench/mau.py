"""MAU metering benchmark: ingest throughput through the real HTTP API, the 700M full-scale case, query latency.

    make bench-mau                      # throughput + query latency (a few minutes)
    make bench-mau BENCH_ARGS=--full    # also the 700,000,000-user month (about 10-20 minutes)

Needs PostgreSQL and Redis on 127.0.0.1 (the production stack); it creates and uses the database
``corral_bench``. Starts uvicorn and a Celery worker itself, as production runs them. Prints every figure;
docs/benchmarks.md records a run. Not a test: CI does not run it.
"""

from __future__ import annotations

import argparse
import base64
import collections
import datetime as dt
import http.client
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
from bench.common import cpu_share, cpu_ticks_by_role, production_env, recreate_database, spawn, stop, wait_until_up  # noqa: E402

DATABASE = "corral_bench"
production_env(database=DATABASE, redis_db=10, broker_db=11)
PORT = 8765


def _create_database() -> None:
    recreate_database(DATABASE)


def _setup_tenants(products_per_org: int, orgs: int):
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0)
    import redis

    redis.Redis.from_url(os.environ["REDIS_URL"]).flushdb()
    redis.Redis.from_url(os.environ["CELERY_BROKER_URL"]).flushdb()
    from access.keys import api_key_create
    from licensing.models import LicenceVersion
    from licensing.services import organisation_create, product_create

    version = LicenceVersion.objects.get(slug="llama-3.1")
    keys, products = [], []
    for o in range(orgs):
        organisation = organisation_create(name=f"Bench Affiliate {o}", group_name="Bench Group", actor="bench")
        _, key = api_key_create(organisation=organisation, name="bench", scopes=["read", "ingest"], created_by="bench")
        for p in range(products_per_org):
            product = product_create(organisation=organisation, name=f"Product {o}-{p}", licence_version=version,
                                     actor="bench")
            keys.append(key)
            products.append(product)
    return keys, products


def _start_servers(workers: int, celery: bool) -> list[subprocess.Popen]:
    procs = [spawn([sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(PORT), "--workers",
                    str(workers), "--no-access-log", "--log-level", "warning"])]
    if celery:
        procs.append(spawn([sys.executable, "-m", "celery", "-A", "config", "worker", "--loglevel", "WARNING",
                            "--concurrency", "2"]))
    wait_until_up(PORT, "/healthz", timeout=20)
    return procs


def _stop(procs: list[subprocess.Popen]) -> None:
    for proc in procs:
        stop(proc)


def _post(conn: http.client.HTTPConnection, path: str, body: bytes, key: str) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Authorization": f"Bearer {key}",
                                                   "Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _get(path: str, key: str) -> dict:
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    conn.request("GET", path, headers={"Authorization": f"Bearer {key}"})
    response = conn.getresponse()
    body = response.read()
    if response.status != 200:
        raise SystemExit(f"GET {path}: {response.status} {body[:300]!r}")
    return json.loads(body)


# --- 1. ingest throughput -----------------------------------------------------------------------------------


def raw_update_rate(batches: list[list[str]], seconds: float = 3.0) -> float:
    """DataSketches' own update rate on the same batches, one thread, the fastest Python form, over at least
    ``seconds`` (a virtual machine's speed drifts; a window of a fraction of a second can catch a peak)."""
    from datasketches import hll_sketch, tgt_hll_type

    started = time.perf_counter()
    ids = 0
    while True:
        for batch in batches:
            sketch = hll_sketch(18, tgt_hll_type.HLL_8)
            collections.deque(map(sketch.update, batch), maxlen=0)
            ids += len(batch)
        elapsed = time.perf_counter() - started
        if elapsed >= seconds:
            return ids / elapsed


class _LeanClient:
    """HTTP/1.1 keep-alive POSTs with the request head built once per product: the load generator shares the
    two cores with the server, and http.client spent about 0.4 ms of CPU per request building and parsing
    headers. The answer is still read whole and its status checked."""

    def __init__(self) -> None:
        self.sock = socket.create_connection(("127.0.0.1", PORT), timeout=60)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.pending = b""

    @staticmethod
    def head(path: str, key: str, length: int) -> bytes:
        return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{PORT}\r\nAuthorization: Bearer {key}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n").encode()

    def post(self, head: bytes, body: bytes) -> tuple[int, bytes]:
        self.sock.sendall(head + body)
        data = self.pending
        while b"\r\n\r\n" not in data:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            data += chunk
        header, rest = data.split(b"\r\n\r\n", 1)
        status = int(header[9:12])
        length = next(int(line.split(b":", 1)[1]) for line in header.split(b"\r\n")[1:]
                      if line[:15].lower() == b"content-length:")
        while len(rest) < length:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise ConnectionError("the server closed the connection")
            rest += chunk
        self.pending = rest[length:]
        return status, rest[:length]


def api_ingest_rate(keys, products, bodies: list[bytes], clients: int, seconds: float, batch: int
                    ) -> tuple[float, int, list]:
    deadline = time.monotonic() + seconds
    counts = [0] * clients
    errors: list = []
    latencies: list[float] = []
    # Every body has the same length (same day, same id shape), but build the head per (product, body) anyway.
    heads = {(p, b): _LeanClient.head(f"/api/v1/products/{products[p].pk}/activity", keys[p], len(bodies[b]))
             for p in range(len(products)) for b in range(len(bodies))}

    def client(index: int) -> None:
        conn = _LeanClient()
        n = index
        while time.monotonic() < deadline:
            p, b = n % len(products), n % len(bodies)
            started = time.perf_counter()
            status, text = conn.post(heads[(p, b)], bodies[b])
            latencies.append(time.perf_counter() - started)
            if status != 202:
                errors.append((status, text[:200]))
            else:
                counts[index] += 1
            n += clients

    threads = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
    started = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    elapsed = time.perf_counter() - started
    requests = sum(counts)
    if errors:  # only accepted batches count; a benchmark that got errors measured something else
        raise SystemExit(f"{len(errors)} requests were not accepted; the first: {errors[0]}")
    return requests * batch / elapsed, requests, sorted(latencies)


def stage_costs(key: str, product, bodies: list[bytes], rounds: int = 4) -> dict[str, float]:
    """CPU (this thread's, in ms) of each stage of one ingestion request, run in this process exactly as the
    fast path runs them, interleaved request by request so that a drift of the machine's speed hits every
    stage alike. Also the whole request (ingest_activity) for comparison. No HTTP: bench/mau.py's load
    measures that."""
    from django.db import close_old_connections, connections

    from access.keys import api_key_authenticate
    from governance.metering import services as metering
    from governance.metering import sketches
    from governance.metering.activity_input import activity_input
    from governance.metering.fastpath import _product, ingest_activity

    headers = {b"authorization": f"Bearer {key}".encode()}
    path = f"/api/v1/products/{product.pk}/activity"
    day = dt.date.fromisoformat(json.loads(bodies[0])["day"])
    totals: dict[str, float] = collections.defaultdict(float)
    clock = time.thread_time
    n = 0
    for _ in range(rounds):
        for body in bodies[:40]:
            t0 = clock()
            status, answer, _ = ingest_activity(product.pk, headers, body, path)
            if status != 202:
                raise SystemExit(f"stage measurement: {status} {answer}")
            t1 = clock()
            close_old_connections()
            api_key_authenticate(key)
            _product(product.pk)
            t2 = clock()
            batch = activity_input(body, content_type="application/json", path=path)
            t3 = clock()
            sketch = sketches.sketch_from_ids(batch.user_ids, 18)
            t4 = clock()
            image = sketches.serialize(sketch)
            t5 = clock()
            metering._part_create(product=product, day=day, source="id_batch", data=image, lg_k=18,
                                  items=len(batch.user_ids))
            for connection in connections.all(initialized_only=True):
                connection.close()
            t6 = clock()
            del sketch, batch
            t7 = clock()
            for name, spent in (("whole request (ingest_activity)", t1 - t0), ("authentication, product", t2 - t1),
                                ("decode and check the JSON (msgspec)", t3 - t2), ("hash 10,000 ids", t4 - t3),
                                ("serialize the sketch", t5 - t4), ("insert the part, signal", t6 - t5),
                                ("free the ids", t7 - t6)):
                totals[name] += spent
            n += 1
    return {name: spent / n * 1000 for name, spent in totals.items()}


# --- 2. the full-scale month --------------------------------------------------------------------------------


def _product_day_sketch(args: tuple[int, int, int, int, int]) -> tuple[int, int, bytes]:
    """A tenant pipeline's daily sketch: users [low, high) of a product, those whose id mod 30 is ``day``."""
    product_index, day, low, high, lg_k = args
    from datasketches import hll_sketch, tgt_hll_type

    sketch = hll_sketch(lg_k, tgt_hll_type.HLL_4)
    start = low + ((day - low) % 30)
    collections.deque(map(sketch.update, range(start, high, 30)), maxlen=0)
    return product_index, day, bytes(sketch.serialize_compact())


def full_scale(keys, products, distinct: int, id_batch_users: int) -> dict:
    """20 products of 3 affiliates over 30 days, `distinct` people, neighbours overlapping by 1/8 of a range."""
    n_products = len(products)
    share = distinct // n_products
    overlap = share // 8
    ranges = []
    for i in range(n_products):
        low = max(0, i * share - overlap)
        high = distinct if i == n_products - 1 else (i + 1) * share + overlap
        ranges.append((low, min(high, distinct)))
    month_start = dt.date.today().replace(day=1) - dt.timedelta(days=1)
    month_start = month_start.replace(day=1)  # last complete month: every day is in the past
    tasks = [(i, d, low, high, 18) for i, (low, high) in enumerate(ranges) for d in range(30)]
    started = time.perf_counter()
    uploaded = 0
    upload_bytes = 0
    conn = http.client.HTTPConnection("127.0.0.1", PORT, timeout=120)
    with ProcessPoolExecutor(max_workers=2) as pool:
        for product_index, day, data in pool.map(_product_day_sketch, tasks, chunksize=4):
            body = json.dumps({
                "day": (month_start + dt.timedelta(days=day)).isoformat(), "format": "hll",
                "sketch": base64.b64encode(data).decode(),
            }).encode()
            status, text = _post(conn, f"/api/v1/products/{products[product_index].pk}/sketches", body,
                                 keys[product_index])
            if status != 202:
                raise SystemExit(f"sketch upload failed: {status} {text[:300]!r}")
            uploaded += 1
            upload_bytes += len(data)
    sketch_seconds = time.perf_counter() - started
    # Part of the month as id batches: users already counted by the sketches plus new ones beyond `distinct`.
    extra_new = id_batch_users // 2
    ids = list(range(distinct - id_batch_users // 2, distinct + extra_new))
    started = time.perf_counter()
    for offset in range(0, len(ids), 100_000):
        body = json.dumps({"day": month_start.isoformat(), "user_ids": ids[offset: offset + 100_000]}).encode()
        status, text = _post(conn, f"/api/v1/products/{products[0].pk}/activity", body, keys[0])
        if status != 202:
            raise SystemExit(f"batch failed: {status} {text[:300]!r}")
    batch_seconds = time.perf_counter() - started
    truth = distinct + extra_new
    return {"month": month_start, "truth": truth, "uploaded": uploaded, "upload_bytes": upload_bytes,
            "sketch_seconds": sketch_seconds, "batch_seconds": batch_seconds, "batch_ids": len(ids)}


def _wait_for_compaction(timeout: float = 900) -> float:
    from governance.models import ActivityPart

    started = time.perf_counter()
    while ActivityPart.objects.exists():
        if time.perf_counter() - started > timeout:
            raise SystemExit("compaction did not finish")
        time.sleep(0.5)
    return time.perf_counter() - started


def _storage() -> dict[str, object]:
    """Live sketch bytes per rollup scope (table sizes would also count dead row versions until vacuum)."""
    from django.db import connection

    with connection.cursor() as cursor:
        cursor.execute("SELECT count(*), coalesce(sum(length(sketch)), 0) FROM governance_activitypart")
        parts, part_bytes = cursor.fetchone()
        cursor.execute("SELECT scope, count(*), sum(length(sketch)) FROM governance_rollup GROUP BY scope ORDER BY 1")
        per_scope = cursor.fetchall()
    return {"parts": parts, "part_bytes": part_bytes, "per_scope": per_scope,
            "rollup_bytes": sum(int(row[2]) for row in per_scope)}


def _timed(fn, repeat: int) -> tuple[float, float]:
    samples = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        samples.append((time.perf_counter() - started) * 1000)
    samples.sort()
    return statistics.median(samples), samples[int(len(samples) * 0.95) - 1] if len(samples) >= 20 else samples[-1]


def _peak_rss_mb(procs) -> str:
    out = []
    for proc in procs:
        try:
            status = Path(f"/proc/{proc.pid}/status").read_text()
            hwm = next(line for line in status.splitlines() if line.startswith("VmHWM"))
            out.append(f"pid {proc.pid}: {int(hwm.split()[1]) // 1024} MB")
        except (OSError, StopIteration):
            pass
    return ", ".join(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--seconds", type=float, default=10, help="length of each round's API load")
    parser.add_argument("--rounds", type=int, default=5, help="rounds of [raw rate, API load]")
    parser.add_argument("--workers", type=int, default=2, help="uvicorn worker processes")
    parser.add_argument("--full", action="store_true", help="also run the 700M-user month")
    parser.add_argument("--distinct", type=int, default=700_000_000)
    parser.add_argument("--batch", type=int, default=10_000, help="ids per activity request")
    args = parser.parse_args()

    print(f"machine: {os.cpu_count()} cores; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    _create_database()
    keys, products = _setup_tenants(products_per_org=7, orgs=3)
    products, keys = products[:20], keys[:20]
    from governance.models import Rollup  # noqa: F401 - Django is set up by now

    batches = [[f"user-{b:05d}-{i:07d}" for i in range(args.batch)] for b in range(max(20, 2_000_000 // args.batch))]
    day = (dt.date.today() - dt.timedelta(days=1)).isoformat()
    bodies = [json.dumps({"day": day, "user_ids": batch}).encode() for batch in batches]

    print(f"\n== 1. ingest throughput, {args.batch:,}-id batches ==")
    if args.batch == 10_000:
        print("CPU per stage of one request, in this process (ms):")
        stages = stage_costs(keys[0], products[0], bodies)
        for name, ms in stages.items():
            print(f"  {name:38s} {ms:6.3f}")
        whole = stages.pop("whole request (ingest_activity)")
        print(f"  {'sum of the stages':38s} {sum(stages.values()):6.3f} (whole request {whole:.3f})")
    from governance.metering.services import metering_compact_step

    while metering_compact_step():  # the stage measurement's parts
        pass
    procs = _start_servers(args.workers, celery=True)
    try:
        # Rounds of [raw rate, API load, compaction drained]: a virtual machine's speed drifts by tens of
        # percent within a minute, so each API window is set against the raw windows just before and just
        # after it, and the higher of the two counts (a busy moment must not flatter the ratio).
        raws = [raw_update_rate(batches)]
        rounds = []
        for index in range(args.rounds):
            cpu_before, started = cpu_ticks_by_role(), time.monotonic()
            api, requests, latencies = api_ingest_rate(keys, products, bodies, args.clients, args.seconds,
                                                       args.batch)
            cpu = cpu_share(cpu_before, cpu_ticks_by_role(), time.monotonic() - started)
            compaction_wait = _wait_for_compaction()
            raws.append(raw_update_rate(batches))
            raw = max(raws[-2], raws[-1])
            rounds.append((api, raw, requests, latencies, cpu, compaction_wait))
            p50 = latencies[len(latencies) // 2] * 1000
            p99 = latencies[int(len(latencies) * 0.99) - 1] * 1000
            print(f"round {index + 1}: API (uvicorn x{args.workers}, PostgreSQL, {args.clients} clients, "
                  f"{args.seconds:.0f} s) {api:,.0f} ids/s ({requests} requests, p50 {p50:.1f} ms, p99 "
                  f"{p99:.1f} ms); raw before {raws[-2]:,.0f}, after {raws[-1]:,.0f} ids/s; "
                  f"ratio {api / raw:.2f}; compaction backlog cleared {compaction_wait:.1f} s after")
            print("  CPU during the load, in cores (of " + str(os.cpu_count()) + "): "
                  + ", ".join(f"{role} {cores:.2f}" for role, cores in cpu.items() if cores >= 0.01))
        ratios = sorted(api / raw for api, raw, *_ in rounds)
        print(f"ratio API / raw over {len(rounds)} rounds: median {statistics.median(ratios):.2f}, "
              f"min {ratios[0]:.2f}, max {ratios[-1]:.2f}; against the fastest raw window of the whole run "
              f"({max(raws):,.0f} ids/s): {statistics.median(r[0] for r in rounds) / max(raws):.2f}")

        group = products[0].organisation.group
        month = dt.date.today().strftime("%Y-%m")
        median, p95 = _timed(lambda: _get(f"/api/v1/groups/{group.pk}/mau?month={month}", keys[0]), 30)
        print(f"group-month query after ingest: median {median:.1f} ms, p95 {p95:.1f} ms")

        if args.full:
            print(f"\n== 2. full scale: 3 affiliates, 20 products, {args.distinct:,} distinct users, 30 days ==")
            started = time.perf_counter()
            result = full_scale(keys, products, args.distinct, id_batch_users=2_000_000)
            compaction = _wait_for_compaction(timeout=3600)
            wall = time.perf_counter() - started
            month = result["month"].strftime("%Y-%m")
            answer = _get(f"/api/v1/groups/{group.pk}/mau?month={month}", keys[0])
            truth = result["truth"]
            inside = answer["lower"] <= truth <= answer["upper"]
            print(f"uploaded {result['uploaded']} product-day sketches ({result['upload_bytes'] / 1e6:.0f} MB) "
                  f"in {result['sketch_seconds']:.0f} s (building them included), "
                  f"{result['batch_ids']:,} ids as batches in {result['batch_seconds']:.1f} s")
            print(f"compaction finished {compaction:.1f} s after the last upload; wall time {wall:.0f} s")
            print(f"group estimate {answer['estimate']:,} [{answer['lower']:,}, {answer['upper']:,}] "
                  f"truth {truth:,}: {'inside' if inside else 'OUTSIDE'} the interval "
                  f"(error {100 * (answer['estimate'] / truth - 1):+.3f}%, half-width "
                  f"{100 * (answer['upper'] - answer['lower']) / 2 / answer['estimate']:.3f}%)")
            storage = _storage()
            print(f"storage: rollup sketches {storage['rollup_bytes'] / 1e6:.1f} MB; "
                  f"{storage['parts']} parts left ({storage['part_bytes'] / 1e6:.1f} MB)")
            for scope, count, total in storage["per_scope"]:
                print(f"  {scope}: {count} rows, {int(total) / count / 1024:.0f} KiB each")
            median, p95 = _timed(lambda: _get(f"/api/v1/groups/{group.pk}/mau?month={month}", keys[0]), 30)
            print(f"group-month query at full scale: median {median:.1f} ms, p95 {p95:.1f} ms")
            last = (result["month"] + dt.timedelta(days=29)).isoformat()
            median, p95 = _timed(
                lambda: _get(f"/api/v1/groups/{group.pk}/mau/daily?from={result['month'].isoformat()}&to={last}",
                             keys[0]), 5)
            print(f"30-day daily series (DAU + rolling 30) at full scale: median {median:.0f} ms, max {p95:.0f} ms")
            median, p95 = _timed(lambda: _get(f"/api/v1/products/{products[0].pk}/mau?month={month}", keys[0]), 30)
            print(f"product-month query at full scale: median {median:.1f} ms, p95 {p95:.1f} ms")
        print(f"\npeak memory: server processes {_peak_rss_mb(procs)}; bench process "
              f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024} MB, its children "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024} MB")
    finally:
        _stop(procs)


if __name__ == "__main__":
    main()

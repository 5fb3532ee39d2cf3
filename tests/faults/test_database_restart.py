"""PostgreSQL crashes (immediate shutdown: open transactions die half-way) and restarts while tenants ingest
batches, read their MAU and call the gateway through real uvicorn + Redis + a Celery worker.

While it is down every request is answered 503 within the pool's 2-second wait (not a 500, not a hang);
once it is back requests succeed again without anything being restarted; and nothing is half-written: every
batch the clients sent (each retried with its Idempotency-Key until acknowledged) is stored exactly once,
as the idempotency records, the parts' and rollups' tallies and the DAU figures say, and every completion
the gateway served is in TokenUsage.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import statistics
import subprocess
import sys
import threading
import time

import httpx
import pytest

from tests.faults.conftest import FULL
from tests.faults.ingest import Attempt, Ledger, deliver, figure, make_batch
from tests.faults.stack import ROOT, create_tenants, free_port, stop_group, wait_for

LOAD_BEFORE = 3.0
DOWN = 10.0 if FULL else 3.0
LOAD_AFTER = 5.0
SENDERS = 6
FAIL_FAST = 3.0  # seconds: the pool waits 2 s for a connection, plus a loaded machine's scheduling


@pytest.fixture(autouse=True)
def _quiet_client(caplog) -> None:
    caplog.set_level("WARNING", logger="httpx")


def test_a_database_restart_is_fast_503s_then_recovery_with_nothing_half_written(stack) -> None:
    upstream_port = free_port()
    tenants = create_tenants(stack.env, 2, scopes="read,ingest,inference",
                             upstream=f"http://127.0.0.1:{upstream_port}")
    upstream = subprocess.Popen(
        [sys.executable, str(ROOT / "tests/inference/fake_openai.py"), "--port", str(upstream_port),
         *(arg for t in tenants for arg in ("--key", t["upstream_key"]))], start_new_session=True)
    stack.processes.append(upstream)
    wait_for(f"http://127.0.0.1:{upstream_port}/health", upstream)
    base = stack.web()
    stack.worker()
    today = dt.datetime.now(dt.UTC).date()
    rng = random.Random(5)
    ledger, reads, calls = Ledger(), Ledger(), Ledger()
    stop = threading.Event()
    timeline: dict[str, float] = {}

    def crash_and_restart() -> None:
        time.sleep(LOAD_BEFORE)
        timeline["down"] = time.monotonic()
        stack.cluster.stop("immediate")
        time.sleep(DOWN)
        stack.cluster.start()
        timeline["up"] = time.monotonic()
        time.sleep(LOAD_AFTER)
        stop.set()

    async def main() -> None:
        numbers = itertools.count()
        deadline = time.monotonic() + LOAD_BEFORE + DOWN + LOAD_AFTER + 120

        async def sender(client: httpx.AsyncClient) -> None:
            while not stop.is_set():
                tenant = rng.choice(tenants)
                batch = make_batch(rng, tenant, days=[today], universe=2_000, size=(1, 50),
                                   key=f"batch-{next(numbers)}")
                await deliver(client, tenant, batch, ledger, deadline=deadline)

        async def reader(client: httpx.AsyncClient) -> None:
            tenant = tenants[0]
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = await client.get(f"/api/v1/products/{tenant['product']}/mau",
                                                params={"month": f"{today:%Y-%m}"},
                                                headers={"Authorization": f"Bearer {tenant['key']}"})
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                reads.attempts.append(Attempt(started, time.monotonic() - started, outcome))
                await asyncio.sleep(0.05)

        async def caller(client: httpx.AsyncClient, tenant: dict) -> None:
            while not stop.is_set():
                started = time.monotonic()
                try:
                    response = await client.post("/v1/chat/completions", headers={
                        "Authorization": f"Bearer {tenant['key']}"}, json={
                        "model": tenant["model"], "messages": [{"role": "user", "content": "hi"}], "max_tokens": 5})
                    outcome = str(response.status_code)
                except httpx.HTTPError as exc:
                    outcome = type(exc).__name__
                calls.attempts.append(Attempt(started, time.monotonic() - started, outcome))
                await asyncio.sleep(0.05)

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await asyncio.gather(reader(client), *(caller(client, t) for t in tenants),
                                 *(sender(client) for _ in range(SENDERS)))

    saboteur = threading.Thread(target=crash_and_restart)
    saboteur.start()
    try:
        asyncio.run(main())
    finally:
        saboteur.join()

    api, gateway = ledger.attempts + reads.attempts, calls.attempts
    attempts = api + gateway
    refused = [a for a in attempts if a.outcome == "503"]
    api_back, gateway_back = _recovered("API", api, timeline["up"]), _recovered("gateway", gateway, timeline["up"])
    print(f"\nPostgreSQL down {DOWN:.0f} s: {len(attempts)} requests, API {dict(ledger.outcomes() + reads.outcomes())}, "
          f"gateway {dict(calls.outcomes())}; 503 in p50 {statistics.median(a.seconds for a in refused):.2f} s, "
          f"max {max(a.seconds for a in refused):.2f} s; all requests succeed again {api_back:.2f} s (API) and "
          f"{gateway_back:.2f} s (gateway) after PostgreSQL answered; {len(ledger.acknowledged)} batches")

    assert ledger.unexpected == []
    assert {a.outcome for a in attempts} <= {"200", "202", "503"}  # never a 500 or a dropped connection
    assert len(refused) >= 10 and max(a.seconds for a in refused) < FAIL_FAST
    assert any(a.outcome == "503" for a in gateway)  # the gateway failed closed too
    assert all(timeline["down"] <= a.started + a.seconds for a in refused)  # refused only once it had crashed
    # Back on its own, without a restart of anything, within 3 s of PostgreSQL answering (a request may be in
    # its 2 s pool wait when it comes back; the pool's reconnection backoff once made this 3-6 s).
    assert api_back < 3 and gateway_back < 3

    # Nothing half-written: each acknowledged batch stored once, whole, with its idempotency record.
    batches = len(ledger.acknowledged)
    ids_sent = sum(len(b.ids) for b in ledger.acknowledged.values())
    assert stack.sql("SELECT count(*) FROM governance_idempotencyrecord") == [(batches,)]
    parts = stack.sql("SELECT count(*), coalesce(sum(items), 0) FROM governance_activitypart")[0]
    folded = stack.sql("SELECT coalesce(sum(id_batches), 0), coalesce(sum(ids_received), 0) FROM governance_rollup "
                       "WHERE scope = 'product_day'")[0]
    assert (parts[0] + folded[0], parts[1] + folded[1]) == (batches, ids_sent)
    for tenant in tenants:
        answer = figure(base, tenant["key"], f"/api/v1/products/{tenant['product']}/dau?day={today}")
        assert answer["estimate"] == ledger.exact(attribute="product", value=tenant["product"], days={today})

    # Every completion the gateway served is metered: what it could not write while PostgreSQL was down stayed
    # buffered (and it refused new requests meanwhile); the rest is written at its clean shutdown.
    stop_group(stack.web_process)
    served = sum(a.outcome == "200" for a in calls.attempts)
    assert stack.sql("SELECT coalesce(sum(requests), 0), coalesce(sum(completion_tokens), 0) "
                     "FROM inference_tokenusage") == [(served, 5 * served)]


def _recovered(surface: str, attempts: list[Attempt], up: float) -> float:
    """Seconds from ``up`` to the end of the last failed request: every request after it succeeded."""
    failed = [a.started + a.seconds for a in attempts if a.outcome[0] != "2"]
    assert any(a.started > max(failed, default=up) for a in attempts), \
        f"{surface}: no request succeeded after the last failure; (start after PostgreSQL answered, seconds, " \
        f"outcome): {[(round(a.started - up, 2), round(a.seconds, 2), a.outcome) for a in attempts][-40:]}"
    return max(0.0, max(failed, default=up) - up)

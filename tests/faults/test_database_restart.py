"""PostgreSQL crashes (immediate shutdown: open transactions die half-way) and restarts while tenants ingest
batches and read their MAU through real uvicorn + Redis + a Celery worker.

While it is down every request is answered 503 within the pool's 2-second wait (not a 500, not a hang);
once it is back requests succeed again without anything being restarted; and nothing is half-written: every
batch the clients sent (each retried with its Idempotency-Key until acknowledged) is stored exactly once,
as the idempotency records, the parts' and rollups' tallies and the DAU figures say.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import itertools
import random
import statistics
import threading
import time

import httpx
import pytest

from tests.faults.conftest import FULL
from tests.faults.ingest import Attempt, Ledger, deliver, figure, make_batch
from tests.faults.stack import create_tenants

LOAD_BEFORE = 3.0
DOWN = 10.0 if FULL else 3.0
LOAD_AFTER = 5.0
SENDERS = 6
FAIL_FAST = 3.0  # seconds: the pool waits 2 s for a connection, plus a loaded machine's scheduling


@pytest.fixture(autouse=True)
def _quiet_client(caplog) -> None:
    caplog.set_level("WARNING", logger="httpx")


def test_a_database_restart_is_fast_503s_then_recovery_with_nothing_half_written(stack) -> None:
    tenants = create_tenants(stack.env, 2, scopes="read,ingest")
    base = stack.web()
    stack.worker()
    today = dt.datetime.now(dt.UTC).date()
    rng = random.Random(5)
    ledger, reads = Ledger(), Ledger()
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

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await asyncio.gather(reader(client), *(sender(client) for _ in range(SENDERS)))

    saboteur = threading.Thread(target=crash_and_restart)
    saboteur.start()
    try:
        asyncio.run(main())
    finally:
        saboteur.join()

    attempts = ledger.attempts + reads.attempts
    refused = [a for a in attempts if a.outcome == "503"]
    recovered = min(a.started + a.seconds for a in attempts if a.started >= timeline["up"] and a.outcome[0] == "2")
    print(f"\nPostgreSQL down {DOWN:.0f} s: {len(attempts)} requests, outcomes "
          f"{dict(ledger.outcomes() + reads.outcomes())}; 503 in p50 "
          f"{statistics.median(a.seconds for a in refused):.2f} s, max {max(a.seconds for a in refused):.2f} s; "
          f"first success {recovered - timeline['up']:.2f} s after it was back; {len(ledger.acknowledged)} batches")

    assert ledger.unexpected == []
    assert {a.outcome for a in attempts} <= {"200", "202", "503"}  # never a 500 or a dropped connection
    assert len(refused) >= 10 and max(a.seconds for a in refused) < FAIL_FAST
    assert all(timeline["down"] <= a.started + a.seconds for a in refused)  # refused only once it had crashed
    # Back on its own: within 5 s of PostgreSQL answering, and from then on every request succeeds.
    assert recovered - timeline["up"] < 5
    later = [a for a in attempts if a.started > recovered]
    assert later and all(a.outcome[0] == "2" for a in later)

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

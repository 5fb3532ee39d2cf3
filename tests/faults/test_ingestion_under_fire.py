"""Ingestion under fire: thousands of activity batches (overlapping ids, replayed Idempotency-Keys, conflicting
bodies under used keys) into real uvicorn + PostgreSQL + Redis + a Celery worker, while the worker is killed
with SIGKILL every few seconds and restarted, and Redis is stopped for a while and comes back empty.

Afterwards every acknowledged batch counts: each product's, organisation's and group's DAU and MAU from the
API equal the exact count of acknowledged ids (exact at these cardinalities; within the stated interval at
the full run's), no conflicting body was accepted, and the compaction and evaluation tasks finished: no
part left, every group evaluated on the final figures and its threshold alert raised and dispatched.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import random
import threading
import time

import httpx
import pytest

from tests.faults.conftest import FULL
from tests.faults.ingest import Ledger, deliver, figure, make_batch
from tests.faults.stack import create_tenants, kill_group

TENANTS = 8 if FULL else 4  # two organisations per affiliate group
BATCHES = 20_000 if FULL else 1_500
SIZE = (1, 200) if FULL else (1, 40)
UNIVERSE = 40_000 if FULL else 1_500  # ids per product: above the sketches' exact range in the full run
CONCURRENCY = 8
KILL_EVERY = 3.0  # seconds a restarted worker lives
KILLS = 4  # at least: the batches are spread over (KILLS + 1) x KILL_EVERY seconds however fast they go
REDIS_DOWN = 5.0 if FULL else 3.0
THRESHOLD = 100  # the licence's MAU threshold in this database, so every group crosses it and is alerted
EXACT_BELOW = 20_000  # DataSketches HLL holds the hashes themselves below this: the estimate is the count


@pytest.fixture(autouse=True)
def _quiet_client(caplog) -> None:
    caplog.set_level("WARNING", logger="httpx")  # thousands of requests


def test_every_acknowledged_batch_counts_through_worker_kills_and_an_empty_redis(stack) -> None:
    tenants = create_tenants(stack.env, TENANTS, scopes="read,ingest")
    stack.sql(f"UPDATE licensing_licenceversion SET mau_threshold = {THRESHOLD} WHERE slug = 'llama-3.1'")
    base = stack.web()
    worker = [stack.worker()]
    stop = threading.Event()
    kills = [0]

    def killer() -> None:
        while not stop.wait(KILL_EVERY):
            kill_group(worker[0])
            kills[0] += 1
            worker[0] = stack.worker()

    today = dt.datetime.now(dt.UTC).date()
    days = [today - dt.timedelta(days=n) for n in range(3)]
    rng = random.Random(8)
    plan = [(make_batch(rng, rng.choice(tenants), days=days, universe=UNIVERSE, size=SIZE, key=f"batch-{n}"),
             rng.random() < 0.2, rng.random() < 0.1) for n in range(BATCHES)]
    tenant_of = {t["product"]: t for t in tenants}
    ledger = Ledger()
    outage: dict[str, float] = {}

    def redis_outage() -> None:
        outage["stopped"] = time.monotonic()
        stack.redis.stop()
        time.sleep(REDIS_DOWN)
        stack.redis.start()  # empty: queued tasks, debounce flags and limiter state are gone
        outage["started"] = time.monotonic()

    async def main() -> None:
        queue: asyncio.Queue = asyncio.Queue()
        for index, item in enumerate(plan):
            queue.put_nowait((index, *item))
        began = time.monotonic()
        deadline = began + (1800 if FULL else 240)
        spacing = (KILLS + 1) * KILL_EVERY / BATCHES

        async def sender(client: httpx.AsyncClient) -> None:
            while not queue.empty():
                index, batch, replay, conflict = queue.get_nowait()
                await asyncio.sleep(max(0.0, began + index * spacing - time.monotonic()))
                await deliver(client, tenant_of[batch.product], batch, ledger, deadline=deadline, replay=replay,
                              conflict=conflict)

        async def saboteur() -> None:
            while len(ledger.acknowledged) < BATCHES // 2:
                await asyncio.sleep(0.05)
            await asyncio.to_thread(redis_outage)

        async with httpx.AsyncClient(base_url=base, timeout=30) as client:
            await asyncio.gather(saboteur(), *(sender(client) for _ in range(CONCURRENCY)))

    threading.Thread(target=killer, daemon=True).start()
    started = time.monotonic()
    try:
        asyncio.run(main())
    finally:
        stop.set()
    load_seconds = time.monotonic() - started
    outcomes = ledger.outcomes()
    during_outage = [a for a in ledger.attempts if outage["stopped"] <= a.started < outage["started"]]
    print(f"\n{BATCHES} batches in {load_seconds:.1f} s, {kills[0]} worker kills, attempts {dict(outcomes)}, "
          f"{ledger.replays} replays answered alike, {ledger.conflicts_refused} conflicts refused, "
          f"{len(during_outage)} requests while Redis was down "
          f"({sum(a.outcome == '202' for a in during_outage)} acknowledged)")

    assert ledger.unexpected == []
    assert len(ledger.acknowledged) == BATCHES
    assert set(outcomes) <= {"202", "409", "503"}, outcomes  # never a 500, never a hang or a dropped connection
    assert kills[0] >= load_seconds // KILL_EVERY - 1 and kills[0] >= KILLS
    # Redis down: ingestion went on (the part is in PostgreSQL before the 202), or would have said 503.
    assert sum(a.outcome == "202" for a in during_outage) >= CONCURRENCY
    assert ledger.replays == sum(r for _, r, _ in plan) and ledger.conflicts_refused == sum(c for _, _, c in plan)

    # Work left by killed workers and lost with Redis's queue: a live worker and beat's safety net (which
    # beat sends every minute; sent at once here) finish it.
    if worker[0].poll() is not None:
        worker[0] = stack.worker()
    stack.manage("shell", "-c", "from governance.tasks import compact_metering, evaluate_all_groups; "
                                "compact_metering.delay(); evaluate_all_groups.delay()")
    finished = time.monotonic()
    _wait(lambda: stack.sql("SELECT count(*) FROM governance_activitypart")[0][0] == 0, 120,
          "parts left uncompacted")
    compacted_after = time.monotonic() - finished

    # Every figure the API gives equals the exact count of acknowledged ids.
    months = sorted({day.replace(day=1) for day in days})
    checked = 0
    for scope, attribute, ids in (("products", "product", {t["product"] for t in tenants}),
                                  ("organisations", "organisation", {t["organisation"] for t in tenants}),
                                  ("groups", "group", {t["group"] for t in tenants})):
        for scope_id in ids:
            key = next(t["key"] for t in tenants if t[attribute] == scope_id)
            for day in days:
                _matches(figure(base, key, f"/api/v1/{scope}/{scope_id}/dau?day={day}"),
                         ledger.exact(attribute=attribute, value=scope_id, days={day}))
                checked += 1
            for month in months:
                in_month = {d for d in days if d.replace(day=1) == month}
                _matches(figure(base, key, f"/api/v1/{scope}/{scope_id}/mau?month={month:%Y-%m}"),
                         ledger.exact(attribute=attribute, value=scope_id, days=in_month))
                checked += 1
    ids_sent = sum(len(b.ids) for b in ledger.acknowledged.values())
    rollup = stack.sql("SELECT sum(id_batches), sum(ids_received) FROM governance_rollup WHERE scope = 'product_day'")
    assert rollup == [(BATCHES, ids_sent)]  # each acknowledged batch folded exactly once, no conflicting body
    assert stack.sql("SELECT count(*) FROM governance_idempotencyrecord") == [(BATCHES,)]

    # Every group evaluated on the final figures (the rolling 30 days), its crossing alerted and dispatched.
    groups = {t["group"] for t in tenants}

    def evaluated() -> bool:
        rows = {g: (estimate, lower, upper) for g, estimate, lower, upper in stack.sql(
            "SELECT group_id, estimate, lower, upper FROM governance_compliancestatus WHERE rule = 'projected'")}
        for group in groups:
            exact = ledger.exact(attribute="group", value=group, days=set(days))
            estimate, lower, upper = rows.get(group, (None, 0, -1))
            if not lower <= exact <= upper or (exact < EXACT_BELOW and estimate != exact):
                return False
        return True

    _wait(evaluated, 120, "groups not evaluated on the final figures")
    over = "FROM governance_alert WHERE level = 'over' AND kind = 'raised'"
    _wait(lambda: stack.sql(f"SELECT count(DISTINCT group_id) {over}") == [(len(groups),)], 60,
          "over-threshold alerts not raised")
    # A dispatch killed with its worker, or queued in the Redis that was emptied, is beat's minute sweep's
    # (alerts_undispatched): run here at once, for every alert, as it would a minute later.
    time.sleep(1)
    undispatched = stack.sql(f"SELECT count(*) {over} AND dispatched_at IS NULL")[0][0]
    stack.manage("shell", "-c", "from governance.compliance.services import alerts_undispatched; "
                                "from governance.tasks import dispatch_alert; import datetime as dt; "
                                "[dispatch_alert.delay(a) for a in alerts_undispatched(older_than=dt.timedelta(0))]")
    _wait(lambda: stack.sql(f"SELECT count(DISTINCT group_id) {over} AND dispatched_at IS NOT NULL") ==
          [(len(groups),)], 60, "over-threshold alerts not dispatched")
    print(f"{undispatched} of {len(groups)} alerts not yet dispatched when the sweep ran; "
          f"compaction and evaluation finished {compacted_after:.1f} s after the load; {checked} figures match "
          f"the exact counts (equal below {EXACT_BELOW:,}, inside the interval above); {ids_sent} ids in {BATCHES} batches")


def _matches(answer: dict, exact: int) -> None:
    assert answer["lower"] <= exact <= answer["upper"], (answer, exact)
    if exact < EXACT_BELOW:
        assert answer["estimate"] == exact, (answer, exact)
    assert answer["sources"]["pending_parts"] == 0


def _wait(condition, seconds: float, message: str) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, message
        time.sleep(0.5)

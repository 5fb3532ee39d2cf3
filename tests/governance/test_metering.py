"""Metering services: durability, compaction, concurrency, idempotency and the gateway meter."""

from __future__ import annotations

import datetime as dt
import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from django.core.cache import cache
from django.db import connection, connections
from django.utils import timezone

from governance.metering.selectors import daily_series, dau, mau_month, mau_rolling
from governance.metering.services import (
    GatewayMeter,
    IdempotencyConflict,
    activity_ingest,
    idempotency_purge,
    metering_compact_step,
)
from governance.models import ActivityPart, IdempotencyRecord, Rollup
from tests.factories import GroupFactory, OrganisationFactory, ProductFactory

ROOT = Path(__file__).resolve().parents[2]
TODAY = timezone.now().date()
DAY = TODAY - dt.timedelta(days=1)


def compact_all() -> int:
    total = 0
    while (step := metering_compact_step()) > 0:
        total += step
    return total


def ingest(product, ids, day=DAY, **kwargs):
    return activity_ingest(product=product, day=day, user_ids=list(ids), **kwargs)


@pytest.mark.django_db
def test_a_batch_counts_from_the_moment_it_is_acknowledged() -> None:
    product = ProductFactory()
    answer = ingest(product, range(1000))
    assert (answer.status_code, answer.body["accepted"]) == (202, 1000)
    assert mau_month(scope=product, month=DAY).estimate.estimate == 1000  # no background step has run
    compact_all()
    assert mau_month(scope=product, month=DAY).estimate.estimate == 1000


@pytest.mark.django_db
def test_storage_grows_with_products_and_periods_not_with_requests() -> None:
    product = ProductFactory()
    for batch in range(30):
        ingest(product, range(batch * 100, batch * 100 + 100))
    assert ActivityPart.objects.count() == 30
    assert compact_all() == 30
    assert ActivityPart.objects.count() == 0
    # product, organisation and group, each by day and by month
    assert Rollup.objects.count() == 6
    assert mau_month(scope=product, month=DAY).estimate.estimate == 3000
    for batch in range(30):
        ingest(product, range(batch * 100, batch * 100 + 100))
    compact_all()
    assert Rollup.objects.count() == 6
    assert mau_month(scope=product, month=DAY).estimate.estimate == 3000


@pytest.mark.django_db
def test_it_deduplicates_across_products_and_affiliates_but_not_groups() -> None:
    group = GroupFactory()
    first, second = OrganisationFactory(group=group), OrganisationFactory(group=group)
    chat, search = ProductFactory(organisation=first), ProductFactory(organisation=first)
    translate = ProductFactory(organisation=second)
    stranger = ProductFactory()
    ingest(chat, range(0, 600))
    ingest(search, range(300, 900))  # 300 people use chat and search
    compact_all()
    ingest(translate, range(800, 1200))  # 100 people use an affiliate's product too; left uncompacted
    ingest(stranger, range(0, 5000))
    assert mau_month(scope=first, month=DAY).estimate.estimate == 900
    assert mau_month(scope=second, month=DAY).estimate.estimate == 400
    assert mau_month(scope=group, month=DAY).estimate.estimate == 1200
    assert mau_month(scope=group, month=DAY).as_dict()["sources"]["pending_parts"] == 1


@pytest.mark.django_db
@pytest.mark.parametrize("n", [10**3, 10**4, 10**5, 10**6])
def test_the_group_month_is_within_its_bound_of_the_exact_count(n: int) -> None:
    organisation = OrganisationFactory()
    products = [ProductFactory(organisation=organisation) for _ in range(3)]
    batch = min(n, 100_000)
    for start in range(0, n, batch):
        for offset, product in enumerate(products):  # each product sees every id, in a different order
            ingest(product, [f"p-{(i + offset * n // 3) % n}" for i in range(start, start + batch)])
    compact_all()
    estimate = mau_month(scope=organisation.group, month=DAY).estimate
    half_width = (estimate.upper - estimate.lower) / 2
    assert abs(estimate.estimate - n) <= 1.5 * half_width + 0.5
    assert estimate.lower <= estimate.estimate <= estimate.upper


@pytest.mark.django_db
def test_rolling_dau_and_series() -> None:
    product = ProductFactory()
    first, second = TODAY - dt.timedelta(days=2), TODAY - dt.timedelta(days=1)
    ingest(product, range(0, 100), day=first)
    ingest(product, range(50, 150), day=second)
    compact_all()
    ingest(product, range(140, 160), day=TODAY)
    assert dau(scope=product, day=first).estimate.estimate == 100
    assert mau_rolling(scope=product, ending=second, days=2).estimate.estimate == 150
    assert mau_rolling(scope=product, ending=TODAY, days=2).estimate.estimate == 110
    series = daily_series(scope=product, start=first, end=TODAY, window=2)
    assert [(p.day, p.dau.estimate, p.rolling.estimate) for p in series] == [
        (first, 100, 100), (second, 100, 150), (TODAY, 20, 110)
    ]


@pytest.mark.django_db
def test_a_flushed_cache_changes_nothing() -> None:
    product = ProductFactory()
    ingest(product, range(2000))
    before = mau_month(scope=product.organisation.group, month=DAY).as_dict()
    cache.clear()
    assert mau_month(scope=product.organisation.group, month=DAY).as_dict() == before
    compact_all()
    cache.clear()
    assert mau_month(scope=product.organisation.group, month=DAY).estimate.estimate == before["estimate"]


@pytest.mark.django_db
def test_a_failed_compaction_loses_nothing(monkeypatch) -> None:
    product = ProductFactory()
    ingest(product, range(500))
    from governance.metering import services as metering

    def explode(*args, **kwargs):
        raise RuntimeError("worker died")

    monkeypatch.setattr(metering, "_rollups_apply", explode)
    with pytest.raises(RuntimeError):
        metering_compact_step()
    assert ActivityPart.objects.count() == 1 and Rollup.objects.count() == 0
    monkeypatch.undo()
    assert compact_all() == 1
    assert mau_month(scope=product, month=DAY).estimate.estimate == 500


@pytest.mark.django_db
def test_idempotency_replays_the_first_answer_and_refuses_a_different_request() -> None:
    product = ProductFactory()
    first = ingest(product, range(10), idempotency_key="k1", fingerprint="a")
    again = ingest(product, range(10), idempotency_key="k1", fingerprint="a")
    assert again.replayed and again.body == first.body and again.status_code == 202
    assert ActivityPart.objects.count() == 1
    with pytest.raises(IdempotencyConflict, match="k1"):
        ingest(product, range(11), idempotency_key="k1", fingerprint="b")
    other_tenant = ProductFactory()
    assert not ingest(other_tenant, range(5), idempotency_key="k1", fingerprint="c").replayed


@pytest.mark.django_db
def test_idempotency_keys_are_kept_a_day_and_purged_after_the_ttl(settings) -> None:
    product = ProductFactory()
    ingest(product, range(10), idempotency_key="old", fingerprint="a")
    IdempotencyRecord.objects.update(created_at=timezone.now() - dt.timedelta(hours=25))
    assert ingest(product, range(10), idempotency_key="old", fingerprint="a").replayed  # kept at least 24 h
    IdempotencyRecord.objects.update(created_at=timezone.now() - settings.METERING_IDEMPOTENCY_TTL - dt.timedelta(1))
    assert idempotency_purge() == 1
    assert not ingest(product, range(10), idempotency_key="old", fingerprint="z").replayed


# --- concurrency: real connections, committed transactions --------------------------------------------------


@pytest.fixture
def no_background_compaction(monkeypatch):
    """Committed transactions would run the compaction task at once (eager Celery); these tests drive it."""
    from governance.metering import services as metering

    monkeypatch.setattr(metering, "compaction_schedule", lambda: None)
    monkeypatch.setattr(metering, "_evaluation_schedule", lambda group_id: None)


def _in_thread(work, results, index):
    try:
        results[index] = work()
    except Exception as exc:  # surfaced by the test's assertions
        results[index] = exc
    finally:
        connections.close_all()


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_writers_and_compactors_lose_nothing(no_background_compaction) -> None:
    product = ProductFactory()
    writers, batches, size = 6, 10, 500

    def write(w: int):
        for b in range(batches):
            base = (w * batches + b) * size
            ingest(product, range(base, base + size))
        return "ok"

    def compact():
        folded = 0
        for _ in range(40):
            folded += metering_compact_step(limit=7)
        return folded

    results: list[object] = [None] * (writers + 2)
    threads = [threading.Thread(target=_in_thread, args=(lambda w=w: write(w), results, w)) for w in range(writers)]
    threads += [threading.Thread(target=_in_thread, args=(compact, results, writers + i)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert results[:writers] == ["ok"] * writers, results
    assert all(isinstance(r, int) for r in results[writers:]), results
    compact_all()
    truth = writers * batches * size
    estimate = mau_month(scope=product.organisation.group, month=DAY).estimate
    assert estimate.lower <= truth <= estimate.upper
    sources = mau_month(scope=product, month=DAY).as_dict()["sources"]
    assert sources["id_batches"] == writers * batches and sources["ids_received"] == truth


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_concurrent_retries_with_one_idempotency_key_store_one_part(no_background_compaction) -> None:
    product = ProductFactory()
    results: list[object] = [None] * 4
    work = lambda: ingest(product, range(100), idempotency_key="same", fingerprint="f").body  # noqa: E731
    threads = [threading.Thread(target=_in_thread, args=(work, results, i)) for i in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert all(r == {"accepted": 100, "day": DAY.isoformat(), "product": product.pk} for r in results), results
    assert ActivityPart.objects.count() == 1


_KILL_MID_COMPACTION = """
import os, signal, django
django.setup()
from governance.metering import services as metering
def die(*args, **kwargs):
    os.kill(os.getpid(), signal.SIGKILL)   # the worker dies inside the compaction transaction
metering._rollups_apply = die
metering.metering_compact_step()
"""


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_worker_killed_with_sigkill_mid_compaction_loses_nothing(no_background_compaction) -> None:
    if connection.vendor == "sqlite" and "memory" in str(connection.settings_dict["NAME"]):
        pytest.skip("needs a database another process can open")
    product = ProductFactory()
    ingest(product, range(3000))
    env = dict(os.environ, DJANGO_SETTINGS_MODULE="config.settings")
    settings_dict = connection.settings_dict
    if connection.vendor == "postgresql":
        env["DATABASE_URL"] = (
            f"postgres://{settings_dict['USER']}:{settings_dict['PASSWORD'] or ''}@{settings_dict['HOST']}:"
            f"{settings_dict['PORT'] or 5432}/{settings_dict['NAME']}"
        )
    else:
        env["DATABASE_URL"] = f"sqlite:///{settings_dict['NAME']}"
    child = subprocess.run([sys.executable, "-c", _KILL_MID_COMPACTION], cwd=ROOT, env=env, capture_output=True,
                           timeout=120)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()[-2000:]
    assert ActivityPart.objects.count() == 1 and Rollup.objects.count() == 0
    assert mau_month(scope=product, month=DAY).estimate.estimate == 3000
    assert compact_all() == 1
    assert mau_month(scope=product, month=DAY).estimate.estimate == 3000


# --- the gateway meter --------------------------------------------------------------------------------------


@pytest.mark.django_db
def test_the_gateway_meter_writes_nothing_per_call_and_flushes_one_part_per_product_day(
    django_assert_num_queries,
) -> None:
    chat, search = ProductFactory(), ProductFactory()
    meter = GatewayMeter(flush_seconds=3600, lg_k=18)
    with django_assert_num_queries(0):
        for i in range(1000):
            meter.record(product_id=chat.pk, user=f"user-{i % 300}", day=DAY)
            meter.record(product_id=search.pk, user=i % 50, day=DAY)
    assert meter.pending() == 2000
    assert meter.flush() == 2
    assert ActivityPart.objects.filter(source="gateway").count() == 2
    assert mau_month(scope=chat, month=DAY).estimate.estimate == 300
    assert dau(scope=search, day=DAY).estimate.estimate == 50
    assert meter.flush() == 0


def test_the_gateway_meter_says_when_a_flush_is_due() -> None:
    meter = GatewayMeter(flush_seconds=0, lg_k=12)
    assert meter.record(product_id=1, user="a", day=DAY) is True
    slow = GatewayMeter(flush_seconds=3600, lg_k=12)
    assert slow.record(product_id=1, user="a", day=DAY) is False


@pytest.mark.django_db
def test_a_failed_gateway_flush_keeps_the_users_buffered(monkeypatch) -> None:
    product = ProductFactory()
    meter = GatewayMeter(flush_seconds=3600, lg_k=18)
    for i in range(100):
        meter.record(product_id=product.pk, user=i, day=DAY)

    def broken_create(*args, **kwargs):
        raise RuntimeError("database unavailable")

    monkeypatch.setattr(ActivityPart.objects, "create", broken_create)
    with pytest.raises(RuntimeError):
        meter.flush()
    monkeypatch.undo()
    meter.record(product_id=product.pk, user=1000, day=DAY)
    assert meter.pending() == 101
    assert meter.flush() == 1
    assert mau_month(scope=product, month=DAY).estimate.estimate == 101


def test_a_burst_of_batches_queues_one_compaction_and_none_is_left_behind(monkeypatch) -> None:
    """One task per burst; a change that lands while the task finishes makes it go round again."""
    from governance import debounce
    from governance.debounce import request_run, run_until_clean

    monkeypatch.setattr(debounce, "_cache_is_shared", lambda: True)  # as with Redis (CI also runs it on Redis)
    cache.clear()
    queued: list[int] = []
    for _ in range(5):
        request_run("test-work", lambda: queued.append(1))
    assert queued == [1]
    runs: list[int] = []

    def work() -> None:
        runs.append(1)
        if len(runs) == 1:
            request_run("test-work", lambda: queued.append(1))  # arrives during the first run

    assert run_until_clean("test-work", work) == 2 and queued == [1]
    request_run("test-work", lambda: queued.append(1))  # after the task finished: a new task
    assert queued == [1, 1]


def test_an_urgent_change_skips_the_spacing_of_a_looping_task(monkeypatch) -> None:
    """Under sustained activity a task goes round at most every ``min_interval``; a change marked urgent (a
    grant, which the gateway must honour within seconds) makes it go round at once."""
    import time

    from governance import debounce
    from governance.debounce import request_run, run_until_clean

    monkeypatch.setattr(debounce, "_cache_is_shared", lambda: True)
    cache.clear()
    for urgent, at_least, at_most in ((False, 0.4, 5.0), (True, 0.0, 0.3)):
        runs: list[float] = []

        def work() -> None:
            runs.append(time.monotonic())
            if len(runs) == 1:
                request_run("test-urgent", lambda: None, urgent=urgent)  # arrives while the task runs

        assert run_until_clean("test-urgent", work, min_interval=0.4) == 2
        assert at_least <= runs[1] - runs[0] <= at_most, (urgent, runs)
        assert not cache.get("debounce:test-urgent:urgent")


def test_the_hot_path_hands_its_signals_to_one_background_thread(monkeypatch) -> None:
    """request_run_soon returns without touching the cache; a burst from many threads queues one task, from
    the process's signal thread, within milliseconds, and a change after the task finished queues again."""
    import threading
    import time

    from config.celery import app as celery_app
    from governance import debounce
    from governance.debounce import request_run_soon, run_until_clean

    monkeypatch.setattr(debounce, "_cache_is_shared", lambda: True)
    celery_app.conf.update(CELERY_TASK_ALWAYS_EAGER=False)  # the autouse fixture sets it back for the next test
    cache.clear()
    queued: list[str] = []
    callers: list[str] = []
    real_request_run = debounce.request_run
    monkeypatch.setattr(debounce, "request_run",
                        lambda name, enqueue, urgent=False: callers.append(threading.current_thread().name)
                        or real_request_run(name, enqueue, urgent=urgent))

    def enqueue() -> None:
        queued.append(threading.current_thread().name)

    def burst() -> None:
        for _ in range(50):
            request_run_soon("test-soon", enqueue)

    threads = [threading.Thread(target=burst) for _ in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    deadline = time.monotonic() + 2
    while not queued and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(0.05)
    assert queued == ["debounce-signals"]  # one task for 400 signals, queued off the request threads
    assert set(callers) == {"debounce-signals"} and len(callers) < 400
    assert run_until_clean("test-soon", lambda: None) == 1
    request_run_soon("test-soon", enqueue)
    debounce._signals.flush()  # what a clean shutdown does (atexit) for signals still waiting
    deadline = time.monotonic() + 2
    while len(queued) < 2 and time.monotonic() < deadline:
        time.sleep(0.005)
    assert len(queued) == 2


def test_with_eager_tasks_the_hot_path_signals_at_once(monkeypatch) -> None:
    from governance import debounce
    from governance.debounce import request_run_soon

    monkeypatch.setattr(debounce, "_cache_is_shared", lambda: True)
    cache.clear()
    queued: list[int] = []
    request_run_soon("test-eager", lambda: queued.append(1))
    assert queued == [1]  # tests and eager setups see the task run before the call returns


@pytest.mark.django_db
def test_a_group_month_over_100_products_and_31_days_answers_in_under_100_ms() -> None:
    import time

    from governance.metering import sketches
    from governance.models import ActivitySource
    from tests.factories import licence

    group = GroupFactory()
    organisations = [OrganisationFactory(group=group) for _ in range(3)]
    version = licence()
    products = [ProductFactory(organisation=organisations[i % 3], licence_version=version) for i in range(100)]
    month_start = (TODAY.replace(day=1) - dt.timedelta(days=1)).replace(day=1)
    days = [month_start + dt.timedelta(days=d) for d in range(31) if (month_start + dt.timedelta(days=d)).month
            == month_start.month]
    parts = []
    for p, product in enumerate(products):
        for d, day in enumerate(days):
            base = (p * 31 + d) * 5  # every user also appears on the next product-day: overlaps everywhere
            data = sketches.serialize(sketches.sketch_from_ids(range(base, base + 10), 18))
            parts.append(ActivityPart(product=product, day=day, source=ActivitySource.ID_BATCH, sketch=data,
                                      lg_k=18, items=10))
    ActivityPart.objects.bulk_create(parts)
    compact_all()
    samples = []
    for _ in range(7):
        started = time.perf_counter()
        count = mau_month(scope=group, month=month_start)
        samples.append(time.perf_counter() - started)
    assert sorted(samples)[3] < 0.100, samples
    estimate = count.estimate
    expected = len({(p * 31 + d) * 5 + i for p in range(100) for d in range(len(days)) for i in range(10)})
    assert estimate.lower <= expected <= estimate.upper


@pytest.mark.django_db
def test_a_coarse_upload_is_accepted_and_says_it_widens_the_interval() -> None:
    import base64

    from datasketches import hll_sketch, tgt_hll_type

    from governance.metering.services import sketch_ingest

    product = ProductFactory()
    coarse = hll_sketch(12, tgt_hll_type.HLL_8)  # the coarsest accepted (sketches.MIN_UPLOAD_LG_K)
    for i in range(60_000):  # one draw: 50,000 happens to fall just outside lgK 12's interval
        coarse.update(i)
    answer = sketch_ingest(product=product, day=DAY, encoded_sketch=base64.b64encode(coarse.serialize_compact()).decode())
    assert answer.status_code == 202 and answer.body["stored_lg_k"] == 12
    assert "lgK 12" in answer.body["precision_note"]
    ingest(product, range(60_000))
    count = mau_month(scope=product, month=DAY).estimate
    assert count.lg_k == 12 and count.lower <= 60_000 <= count.upper
    fine = hll_sketch(18, tgt_hll_type.HLL_4)
    fine.update("x")
    other = sketch_ingest(product=ProductFactory(), day=DAY, encoded_sketch=base64.b64encode(fine.serialize_compact()).decode())
    assert "precision_note" not in other.body



def test_without_a_shared_cache_every_change_queues_its_task(settings) -> None:
    from governance.debounce import request_run

    settings.CACHES = {"default": {"BACKEND": "django.core.cache.backends.locmem.LocMemCache"}}
    queued: list[int] = []
    for _ in range(3):
        request_run("test-local", lambda: queued.append(1))
    assert queued == [1, 1, 1]


def test_with_redis_gone_a_batch_is_still_acknowledged_and_nothing_raises_after_its_commit(monkeypatch) -> None:
    """Redis down takes the broker and the cache together: queueing fails, and so does releasing the claim.
    That happens in on_commit, after the part is durable, so it must not turn the 202 into a 500."""
    from governance import debounce
    from governance.debounce import request_run

    monkeypatch.setattr(debounce, "_cache_is_shared", lambda: True)

    class Gone:
        def __getattr__(self, name):
            def fail(*args, **kwargs):
                raise ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")
            return fail

    def enqueue():
        raise ConnectionError("broker unreachable")

    monkeypatch.setattr(debounce, "cache", Gone())
    request_run("test-gone", enqueue)  # does not raise

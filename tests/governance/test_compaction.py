"""Compaction: every rollup is the union of its parts, steps are bounded, settled rollups are stored compactly."""

from __future__ import annotations

import datetime as dt
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from datasketches import hll_sketch, tgt_hll_type
from django.db import connection
from django.utils import timezone

from governance.metering import services as metering
from governance.metering import sketches
from governance.metering.services import activity_ingest, metering_compact_step
from governance.models import ActivityPart, ActivitySource, Rollup
from tests.factories import GroupFactory, OrganisationFactory, ProductFactory

ROOT = Path(__file__).resolve().parents[2]
TODAY = timezone.now().date()


def _first_of_month(day: dt.date) -> dt.date:
    return day.replace(day=1)


def _ids(start: int, count: int) -> list[str]:
    return [f"person-{i}" for i in range(start, start + count)]


def _content(image: bytes) -> object:
    """What a sketch counts, without the preamble's running estimates (which depend on merge order): the
    registers of an HLL-mode image, the set of coupons of a list- or set-mode one."""
    mode = image[7] & 0b11
    if mode == 2:
        return image[40:]
    return sorted(struct.iter_unpack("<I", image[8 if mode == 0 else 12:]))


def _estimate(image: bytes) -> float:
    return sketches.estimate_of(hll_sketch.deserialize(bytes(image))).estimate


@pytest.mark.django_db
def test_every_rollup_of_one_step_is_the_union_of_its_parts(settings) -> None:
    """Two affiliates, three products, two days in two months, id batches and a coarser uploaded sketch in the
    same product-day: each of the six scopes' rollups holds exactly the registers of the union of its parts."""
    settings.METERING_SETTLE_DAYS = 10_000  # every rollup hot (HLL_8): compared register for register below
    group = GroupFactory()
    acme, globex = OrganisationFactory(group=group), OrganisationFactory(group=group)
    products = [ProductFactory(organisation=acme), ProductFactory(organisation=acme), ProductFactory(organisation=globex)]
    last_month_end = _first_of_month(TODAY) - dt.timedelta(days=1)
    days = [last_month_end - dt.timedelta(days=1), last_month_end, _first_of_month(TODAY)]
    days = [day for day in days if day < TODAY] or [TODAY - dt.timedelta(days=1)]
    images: dict[tuple[int, dt.date], list[bytes]] = {}
    for p, product in enumerate(products):
        for d, day in enumerate(days):
            for batch in range(2):  # overlapping batches: users shared across batches, products and affiliates
                start = (p * 7 + d * 3 + batch) * 4_000
                activity_ingest(product=product, day=day, user_ids=_ids(start, 9_000 if p == 0 else 1_500))
    coarse = hll_sketch(12, tgt_hll_type.HLL_4)
    for user in _ids(0, 3_000):
        coarse.update(user)
    ActivityPart.objects.create(product=products[2], day=days[0], source=ActivitySource.SKETCH,
                                sketch=bytes(coarse.serialize_compact()), lg_k=12, items=0)
    for part in ActivityPart.objects.all():
        images.setdefault((part.product_id, part.day), []).append(bytes(part.sketch))

    parts = ActivityPart.objects.count()
    assert metering_compact_step() == parts and not ActivityPart.objects.exists()  # one step folds them all

    organisation_of = {product.pk: product.organisation_id for product in products}
    expected: dict[tuple[str, int, dt.date], list[bytes]] = {}
    for (product_id, day), parts in images.items():
        month = _first_of_month(day)
        for key in [(Rollup.Grain.PRODUCT_DAY, product_id, day), (Rollup.Grain.PRODUCT_MONTH, product_id, month),
                    (Rollup.Grain.ORGANISATION_DAY, organisation_of[product_id], day),
                    (Rollup.Grain.ORGANISATION_MONTH, organisation_of[product_id], month),
                    (Rollup.Grain.GROUP_DAY, group.pk, day), (Rollup.Grain.GROUP_MONTH, group.pk, month)]:
            expected.setdefault(key, []).extend(parts)
    rollups = {(r.scope, r.scope_id, r.period): r for r in Rollup.objects.all()}
    assert set(rollups) == set(expected)
    for key, parts in expected.items():
        union = sketches.union(parts, settings.METERING_LG_K)
        rollup = rollups[key]
        assert rollup.lg_k == union.lg_config_k, key
        assert _content(bytes(rollup.sketch)) == _content(bytes(union.serialize_compact())), key
        assert _estimate(rollup.sketch) == sketches.estimate_of(union).estimate, key
        assert rollup.id_batches + rollup.sketch_uploads == len(parts), key
    # The coarse upload lowered the precision of exactly the scopes it belongs to.
    assert rollups[(Rollup.Grain.GROUP_MONTH, group.pk, _first_of_month(days[0]))].lg_k == 12
    assert rollups[(Rollup.Grain.PRODUCT_DAY, products[0].pk, days[0])].lg_k == settings.METERING_LG_K


@pytest.mark.django_db
def test_a_step_takes_at_most_its_limit_and_the_task_stops_after_a_short_step(settings, monkeypatch) -> None:
    from governance.tasks import compact_metering

    settings.METERING_COMPACT_BATCH = 3
    product = ProductFactory()
    for batch in range(7):
        activity_ingest(product=product, day=TODAY, user_ids=_ids(batch * 10, 10))
    assert metering_compact_step() == 3 and ActivityPart.objects.count() == 4
    assert compact_metering() == 4 and not ActivityPart.objects.exists()
    assert Rollup.objects.get(scope=Rollup.Grain.PRODUCT_DAY, scope_id=product.pk).id_batches == 7

    # A step that found fewer parts than its limit ends the round: the parts that arrived meanwhile wait for
    # the next one rather than each costing a rewrite of every rollup.
    steps = iter([3, 3, 1, 3])
    calls: list[int] = []
    monkeypatch.setattr("governance.metering.services.metering_compact_step", lambda: calls.append(1) or next(steps))
    assert compact_metering() == 7 and len(calls) == 3


def test_a_union_refuses_sketches_out_of_ascending_precision() -> None:
    union = sketches.Union(18)
    union.add(sketches.sketch_from_ids(["a"], 12))
    union.add(sketches.sketch_from_ids(["b"], 18))
    with pytest.raises(ValueError, match="ascending lgK"):
        union.add(sketches.sketch_from_ids(["c"], 14))


def test_a_rollup_settles_when_its_period_ended_more_than_the_settle_days_ago(settings) -> None:
    settings.METERING_SETTLE_DAYS = 2
    today = dt.date(2026, 3, 5)
    settled = Rollup.is_settled
    assert not settled(Rollup.Grain.PRODUCT_DAY, dt.date(2026, 3, 3), today=today)
    assert settled(Rollup.Grain.GROUP_DAY, dt.date(2026, 3, 2), today=today)
    # February ended on the 28th: five days before, settled; March is running.
    assert settled(Rollup.Grain.GROUP_MONTH, dt.date(2026, 2, 1), today=today)
    assert not settled(Rollup.Grain.PRODUCT_MONTH, dt.date(2026, 3, 1), today=today)
    assert not settled(Rollup.Grain.ORGANISATION_MONTH, dt.date(2026, 2, 1), today=dt.date(2026, 3, 2))
    assert settled(Rollup.Grain.ORGANISATION_MONTH, dt.date(2026, 2, 1), today=dt.date(2026, 3, 3))


@pytest.mark.django_db
def test_settled_rollups_are_stored_as_hll_4_and_count_the_same(settings) -> None:
    settings.METERING_SETTLE_DAYS = 2
    product = ProductFactory()
    yesterday, old = TODAY - dt.timedelta(days=1), TODAY - dt.timedelta(days=20)
    activity_ingest(product=product, day=yesterday, user_ids=_ids(0, 30_000))  # past coupon mode: HLL registers
    activity_ingest(product=product, day=old, user_ids=_ids(10_000, 30_000))
    activity_ingest(product=ProductFactory(), day=yesterday, user_ids=_ids(0, 50))  # stays a coupon list
    metering_compact_step()

    def tgt(scope: str, period: dt.date, scope_id: int = product.pk) -> str:
        return sketches.tgt_type_of(bytes(Rollup.objects.get(scope=scope, scope_id=scope_id, period=period).sketch))

    assert tgt(Rollup.Grain.PRODUCT_DAY, yesterday) == "HLL_8"  # still receiving activity
    assert tgt(Rollup.Grain.PRODUCT_DAY, old) == "HLL_4"  # late activity for a settled day is written compactly
    before = {r.pk: (_estimate(r.sketch), len(r.sketch)) for r in Rollup.objects.all()}

    assert metering.rollups_settle() == 0  # nothing else has settled yet
    later = TODAY + dt.timedelta(days=70)  # every period has ended
    hot_registers = [r.pk for r in Rollup.objects.all() if bytes(r.sketch)[7] == sketches.HOT_HLL_MODE_BYTE[0]]
    assert len(hot_registers) >= 4
    assert metering.rollups_settle(today=later, limit=2) == 2  # bounded rounds
    assert metering.rollups_settle(today=later) == len(hot_registers) - 2
    assert metering.rollups_settle(today=later) == 0
    for rollup in Rollup.objects.all():
        estimate, size = before[rollup.pk]
        assert _estimate(rollup.sketch) == estimate
        if rollup.pk in hot_registers:
            assert sketches.tgt_type_of(bytes(rollup.sketch)) == "HLL_4" and len(rollup.sketch) < size * 0.6
        else:  # coupon lists are the same bytes in either form: left alone
            assert len(rollup.sketch) == size

    # A late batch for a settled period still counts, and its rollup stays compact.
    activity_ingest(product=product, day=yesterday, user_ids=_ids(100_000, 5_000))
    metering_compact_step()
    day_rollup = Rollup.objects.get(scope=Rollup.Grain.PRODUCT_DAY, scope_id=product.pk, period=yesterday)
    estimate = sketches.estimate_of(hll_sketch.deserialize(bytes(day_rollup.sketch)))
    assert estimate.lower <= 35_000 <= estimate.upper


@pytest.mark.django_db
def test_the_settle_task_is_scheduled_by_beat_and_runs_rounds_until_done(settings, monkeypatch) -> None:
    from governance.tasks import settle_rollups

    assert settings.CELERY_BEAT_SCHEDULE["settle-rollups"]["task"] == "governance.tasks.settle_rollups"
    rounds = iter([1000, 1000, 17, 0])
    monkeypatch.setattr(metering, "rollups_settle", lambda limit: next(rounds))
    assert settle_rollups() == 2017


@pytest.mark.django_db
def test_the_ingestion_insert_is_prepared_once_per_connection() -> None:
    if connection.vendor != "postgresql":
        pytest.skip("prepared statements are PostgreSQL's")
    product = ProductFactory()
    for batch in range(7):
        activity_ingest(product=product, day=TODAY, user_ids=_ids(batch, 5))
    with connection.cursor() as cursor:
        cursor.execute("SELECT statement FROM pg_prepared_statements")
        statements = [row[0] for row in cursor.fetchall()]
    assert any(s.startswith('INSERT INTO "governance_activitypart"') for s in statements), statements
    assert ActivityPart.objects.count() == 7


def test_prepared_statements_can_be_turned_off_for_a_transaction_pooler() -> None:
    code = ("from django.conf import settings; "
            "print(settings.DATABASES['default']['OPTIONS'].get('prepare_threshold'))")
    base = {"DATABASE_URL": "postgres://x@127.0.0.1/x", "PATH": "/usr/bin:/bin"}
    for value, expected in ((None, "5"), ("", "None"), ("0", "0")):
        env = dict(base, **({} if value is None else {"DATABASE_PREPARE_THRESHOLD": value}))
        result = subprocess.run([sys.executable, "manage.py", "shell", "-c", code], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
        assert result.stdout.strip().splitlines()[-1:] == [expected], result.stdout + result.stderr


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_a_committed_batch_is_compacted_and_then_its_group_evaluated_once() -> None:
    """Ingestion asks for compaction only; the compaction step that folded the batch asks for the evaluation
    of each group whose figures changed, so the evaluation reads rollups rather than thousands of parts."""
    from unittest import mock

    from governance.compliance import services as evaluation
    from governance.models import ComplianceStatus

    product, other = ProductFactory(), ProductFactory()
    with mock.patch.object(evaluation, "group_evaluate", wraps=evaluation.group_evaluate) as evaluate:
        with mock.patch.object(metering, "compaction_schedule", lambda: None):
            activity_ingest(product=product, day=TODAY, user_ids=_ids(0, 500))  # committed (autocommit)
        assert ActivityPart.objects.count() == 1 and evaluate.call_count == 0  # the request evaluates nothing
        activity_ingest(product=product, day=TODAY, user_ids=_ids(500, 500))  # now compaction runs (eagerly)
        assert not ActivityPart.objects.exists()
        assert [call.kwargs["group"].pk for call in evaluate.call_args_list] == [product.organisation.group_id]
        assert metering_compact_step() == 0
        assert evaluate.call_count == 1  # a step that folded nothing evaluates nothing
    assert ComplianceStatus.objects.filter(group=product.organisation.group).exists()
    assert not ComplianceStatus.objects.filter(group=other.organisation.group).exists()

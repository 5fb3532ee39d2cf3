"""Stored sketches that cannot be read (written before uploads were checked whole, or corrupted at rest): every
read of their product and group still answers with finite figures, which name what they leave out; the
sketches are kept and flagged, compaction neither crashes on them nor folds them, the admins are alerted."""

from __future__ import annotations

import csv
import datetime as dt
import io
import math
from typing import Any

import pytest
from datasketches import hll_sketch, hll_union, tgt_hll_type
from django.test import Client
from django.utils import timezone

from access.models import AuditEvent, Membership
from governance.metering import sketches
from governance.metering.services import activity_ingest, metering_compact_step, rollups_settle
from governance.models import ActivityPart, ActivitySource, Alert, Rollup
from governance.tasks import evaluate_group
from tests.factories import MembershipFactory, ProductFactory
from tests.governance import sketch_forgeries as forgeries

pytestmark = pytest.mark.django_db

TODAY = timezone.now().date()
# Three days of last month: always in the past and within retention, and in one calendar month.
D1, D2, D3 = ((TODAY.replace(day=1) - dt.timedelta(days=1)).replace(day=day) for day in (3, 4, 5))
MONTH = D1.strftime("%Y-%m")
S = Rollup.Grain


@pytest.fixture
def acme(owner_org: Any) -> Any:
    return ProductFactory(organisation=owner_org, name="Acme Chat")


@pytest.fixture
def beta(owner_org: Any) -> Any:
    return ProductFactory(organisation=owner_org, name="Beta Search")


@pytest.fixture
def reader(owner_org: Any, client_for: Any) -> Any:
    return client_for(owner_org, ["read", "write"])


def _ingest_and_compact(product: Any, day: dt.date, ids: range) -> None:
    activity_ingest(product=product, day=day, user_ids=list(ids))
    while metering_compact_step():
        pass


def _legacy_part(product: Any, day: dt.date, image: bytes) -> ActivityPart:
    """An upload the old sandbox accepted and stored as it came."""
    return ActivityPart.objects.create(product=product, day=day, source=ActivitySource.SKETCH, sketch=image,
                                       lg_k=image[3], items=0)


def _legacy_rollups(product: Any, day: dt.date, image: bytes) -> None:
    """The six rollups of a product-day as compaction left them before the fix, after folding ``image``: copied
    into a rollup that did not exist yet, merged into one that did."""
    organisation = product.organisation
    month = day.replace(day=1)
    for scope, scope_id, period in [(S.PRODUCT_DAY, product.pk, day), (S.PRODUCT_MONTH, product.pk, month),
                                    (S.ORGANISATION_DAY, organisation.pk, day),
                                    (S.ORGANISATION_MONTH, organisation.pk, month),
                                    (S.GROUP_DAY, organisation.group_id, day), (S.GROUP_MONTH, organisation.group_id, month)]:
        row = Rollup.objects.filter(scope=scope, scope_id=scope_id, period=period).first()
        if row is None:
            Rollup.objects.create(scope=scope, scope_id=scope_id, period=period, sketch=image, lg_k=image[3],
                                  sketch_uploads=1)
            continue
        union = hll_union(18)
        union.update(hll_sketch.deserialize(bytes(row.sketch)))
        union.update(hll_sketch.deserialize(image))
        merged = union.get_result(tgt_hll_type.HLL_8)
        Rollup.objects.filter(pk=row.pk).update(sketch=bytes(merged.serialize_compact()), lg_k=merged.lg_config_k,
                                                sketch_uploads=row.sketch_uploads + 1)


def _finite(answer: dict[str, Any]) -> tuple[int, int, int]:
    figures = (answer["estimate"], answer["lower"], answer["upper"])
    assert all(isinstance(x, int) and math.isfinite(x) and 0 <= x <= sketches.WORLD_POPULATION for x in figures)
    return figures  # type: ignore[return-value]


def _every_read(client: Any, acme: Any, beta: Any) -> dict[str, dict[str, Any]]:
    """Every MAU read of the products, their organisation and their group: each a 200 with finite figures."""
    group_id, organisation_id = acme.organisation.group_id, acme.organisation_id
    answers = {}
    for kind, pk in (("products", acme.pk), ("products", beta.pk), ("organisations", organisation_id),
                     ("groups", group_id)):
        for name, query in (("month", f"mau?month={MONTH}"), ("rolling", f"mau?ending={D3}&days=30"),
                            ("dau1", f"dau?day={D1}"), ("dau2", f"dau?day={D2}"), ("dau3", f"dau?day={D3}")):
            response = client.get(f"/api/v1/{kind}/{pk}/{query}")
            assert response.status_code == 200, (kind, query, response.content)
            _finite(response.json())
            answers[f"{kind}/{pk}/{name}"] = response.json()
        series = client.get(f"/api/v1/{kind}/{pk}/mau/daily?from={D1}&to={D3}&days=7")
        assert series.status_code == 200, (kind, series.content)
        for point in series.json()["days"]:
            _finite(point["dau"]), _finite(point["rolling"])
    return answers


def test_every_read_of_a_group_holding_unreadable_sketches_answers_with_finite_figures(
    acme: Any, beta: Any, reader: Any, owner_org: Any
) -> None:
    _ingest_and_compact(acme, D1, range(1000))
    _legacy_rollups(beta, D2, forgeries.world_beater())  # folded before the fix: the rollups above count ~10^15
    pending = [_legacy_part(beta, D3, forgeries.world_beater()),
               _legacy_part(acme, D3, forgeries.overflowing_list()),  # read in-process, this aborted the worker
               _legacy_part(beta, D3, forgeries.hll(range(50_000), 14)[:900])]  # truncated at rest

    answers = _every_read(reader, acme, beta)

    group = answers[f"groups/{owner_org.group_id}/month"]
    assert _finite(group) == (1000, 1000, 1000)  # Acme's thousand people, counted exactly, nothing else
    assert group["sources"]["quarantined"] == 4
    assert {(e["kind"], e["product"], e["day"]) for e in group["excluded"]} == {
        ("rollup", beta.pk, D2.isoformat()), *(("part", p.product_id, D3.isoformat()) for p in pending)}
    assert all(e["reason"] for e in group["excluded"])
    assert _finite(answers[f"products/{beta.pk}/month"]) == (0, 0, 0)
    assert answers[f"products/{acme.pk}/month"]["sources"]["quarantined"] == 1  # the overflowing list
    # The same figures whatever is read first: the rollups above Beta's day were rebuilt without it.
    assert _finite(reader.get(f"/api/v1/groups/{owner_org.group_id}/dau?day={D2}").json()) == (0, 0, 0)
    assert Rollup.objects.filter(scope=S.GROUP_MONTH, quarantined_at__isnull=True).get().lg_k == 18


def test_the_evaluation_the_evidence_report_and_the_portal_answer_too(
    acme: Any, beta: Any, reader: Any, owner_org: Any
) -> None:
    _ingest_and_compact(acme, D1, range(1000))
    _legacy_rollups(beta, D2, forgeries.world_beater())
    _legacy_part(beta, D3, forgeries.overflowing_list())
    group_id = owner_org.group_id

    assert reader.post(f"/api/v1/groups/{group_id}/evaluate/").status_code == 200
    evaluate_group(group_id)
    report = reader.get(f"/api/v1/groups/{group_id}/evidence/?month={MONTH}")
    assert report.status_code == 200
    assert report.json()["mau"]["estimate"] == 1000
    assert [(e["product_name"], e["kind"]) for e in report.json()["excluded"]] == [("Beta Search", "rollup"),
                                                                                   ("Beta Search", "part")]
    assert report.json()["organisations"][0]["mau"]["excluded"] == 2
    rows = list(csv.reader(io.StringIO(reader.get(f"/api/v1/groups/{group_id}/evidence/?month={MONTH}&format=csv")
                                       .content.decode())))
    assert [row[2] for row in rows if row[0] == "excluded"] == ["Beta Search", "Beta Search"]
    html = reader.get(f"/api/v1/groups/{group_id}/evidence/?month={MONTH}&format=html")
    assert html.status_code == 200 and b"Stored sketches left out" in html.content

    portal = Client()
    portal.force_login(MembershipFactory(organisation=owner_org, role=Membership.Role.ADMIN).user)
    for page in ("/", f"/groups/{group_id}/", "/products/", f"/products/{acme.pk}/", f"/products/{beta.pk}/",
                 "/alerts/"):
        assert portal.get(page).status_code == 200, page


def test_every_figure_says_it_excludes_the_quarantined_sketches(acme: Any, beta: Any, reader: Any,
                                                                 owner_org: Any) -> None:
    """The audit found the compliance statuses and the portal's product and group figures silent about the
    two sketches they leave out: each now says so beside the figure."""
    _ingest_and_compact(acme, D1, range(1000))
    _legacy_rollups(beta, D2, forgeries.world_beater())
    _legacy_part(beta, D3, forgeries.overflowing_list())
    group_id = owner_org.group_id
    assert reader.post(f"/api/v1/groups/{group_id}/evaluate/").status_code == 200

    statuses = reader.get(f"/api/v1/groups/{group_id}/compliance/").json()["statuses"]
    last = next(s for s in statuses if s["rule"] == "last_month" and s["month"] == D1.replace(day=1).isoformat())
    assert last["estimate"] == 1000
    assert [(e["product_name"], e["kind"], e["day"]) for e in last["excluded"]] == [
        ("Beta Search (Owner Org)", "rollup", D2.isoformat()), ("Beta Search (Owner Org)", "part", D3.isoformat())]
    assert "excludes 2 stored sketches that could not be read" in last["explanation"]
    assert [(f["source"][:7], f["excluded"]) for f in last["figures"]] == [("metered", 2)]
    assert {b: f["excluded"] for b, f in last["bases"].items()} == {"distinct_people": 2, "sum_of_products": 2}

    portal = Client()
    portal.force_login(MembershipFactory(organisation=owner_org, role=Membership.Role.ADMIN).user)
    beta_page = portal.get(f"/products/{beta.pk}/").content.decode()
    assert "excludes 2 stored sketches that could not be read" in beta_page
    assert "could not be read" not in portal.get(f"/products/{acme.pk}/").content.decode()  # nothing left out
    group_page = portal.get(f"/groups/{group_id}/").content.decode()
    assert "This chart excludes 2 stored sketches that could not be read" in group_page
    assert group_page.count("excludes 2 stored sketches that could not be read") >= 3  # chart, table, tested month


def test_quarantined_sketches_are_kept_flagged_audited_and_announced(acme: Any, beta: Any, reader: Any,
                                                                      owner_org: Any) -> None:
    _ingest_and_compact(acme, D1, range(1000))
    _legacy_rollups(beta, D2, forgeries.world_beater())
    part = _legacy_part(beta, D3, forgeries.overflowing_list())
    reader.get(f"/api/v1/groups/{owner_org.group_id}/mau?month={MONTH}")

    part.refresh_from_db()
    assert part.quarantined_at is not None and bytes(part.sketch) == forgeries.overflowing_list()
    assert "129 coupons" in part.quarantine_reason
    kept = Rollup.objects.get(scope=S.PRODUCT_DAY, scope_id=beta.pk, quarantined_at__isnull=False)
    assert bytes(kept.sketch) == forgeries.world_beater() and "world's population" in kept.quarantine_reason
    live = Rollup.objects.get(scope=S.PRODUCT_DAY, scope_id=beta.pk, quarantined_at__isnull=True)
    assert sketches.stored_estimate(bytes(live.sketch)).estimate == 0 and live.sketch_uploads == 1
    alerts = Alert.objects.filter(group_id=owner_org.group_id, level="quarantine")
    assert any("Beta Search" in a.message and D3.isoformat() in a.message for a in alerts)
    assert any(a.figures["quarantined"]["kind"] == "rollup" for a in alerts)
    assert AuditEvent.objects.filter(action="metering.quarantined").count() == alerts.count()
    # Once quarantined, a sketch is not quarantined (nor announced) again by later reads.
    before = alerts.count()
    reader.get(f"/api/v1/groups/{owner_org.group_id}/mau?month={MONTH}")
    reader.get(f"/api/v1/products/{beta.pk}/mau?month={MONTH}")
    assert Alert.objects.filter(level="quarantine").count() == before


def test_a_sketch_whose_stored_sums_were_mutated_is_counted_from_its_registers(acme: Any, reader: Any) -> None:
    _legacy_rollups(acme, D1, forgeries.zero_harmonic_sum(users=60_000))
    _legacy_part(acme, D2, forgeries.zero_harmonic_sum(users=60_000))
    for query in (f"mau?month={MONTH}", f"dau?day={D1}", f"dau?day={D2}"):
        answer = reader.get(f"/api/v1/groups/{acme.organisation.group_id}/{query}").json()
        low, high = answer["lower"], answer["upper"]
        assert low <= 60_000 <= high and answer["sources"]["quarantined"] == 0, query
    assert not Rollup.objects.filter(quarantined_at__isnull=False).exists()


def test_compaction_quarantines_the_parts_it_cannot_read_and_folds_the_others(acme: Any, beta: Any,
                                                                             reader: Any) -> None:
    activity_ingest(product=acme, day=D1, user_ids=list(range(500)))
    bad = [_legacy_part(acme, D1, forgeries.world_beater()), _legacy_part(acme, D1, forgeries.overflowing_list()),
           _legacy_part(beta, D1, forgeries.hll(range(50_000), 14)[:900])]
    activity_ingest(product=beta, day=D1, user_ids=list(range(400, 700)))

    assert metering_compact_step() == 2
    assert metering_compact_step() == 0  # nothing left to fold: the quarantined parts stay, flagged
    assert set(ActivityPart.objects.values_list("pk", flat=True)) == {p.pk for p in bad}
    assert not ActivityPart.objects.filter(quarantined_at__isnull=True).exists()
    group = Rollup.objects.get(scope=S.GROUP_DAY, period=D1, quarantined_at__isnull=True)
    assert sketches.stored_estimate(bytes(group.sketch)).estimate == 700 and group.id_batches == 2
    assert group.sketch_uploads == 0  # the quarantined uploads are not tallied as folded
    assert _finite(reader.get(f"/api/v1/groups/{acme.organisation.group_id}/dau?day={D1}").json()) == (700,) * 3


def test_compaction_rebuilds_a_rollup_corrupted_at_rest_and_loses_nothing(acme: Any, beta: Any, reader: Any) -> None:
    _ingest_and_compact(acme, D1, range(1000))
    _ingest_and_compact(beta, D2, range(500, 1500))
    month = Rollup.objects.get(scope=S.GROUP_MONTH)
    Rollup.objects.filter(pk=month.pk).update(sketch=bytes(month.sketch)[:50])  # a torn write
    _ingest_and_compact(acme, D2, range(1500, 1600))

    live = Rollup.objects.get(scope=S.GROUP_MONTH, quarantined_at__isnull=True)
    assert live.pk == month.pk and sketches.stored_estimate(bytes(live.sketch)).estimate == 1600
    kept = Rollup.objects.get(scope=S.GROUP_MONTH, quarantined_at__isnull=False)
    assert bytes(kept.sketch) == bytes(month.sketch)[:50] and "truncated" in kept.quarantine_reason
    answer = reader.get(f"/api/v1/groups/{acme.organisation.group_id}/mau?month={MONTH}").json()
    # Rebuilt from the days below it: nothing accepted is lost, and nothing is excluded.
    assert _finite(answer) == (1600, 1600, 1600) and answer["excluded"] == []


def test_settling_rebuilds_a_rollup_it_cannot_read(acme: Any, settings: Any) -> None:
    settings.METERING_SETTLE_DAYS = 10_000  # everything stays hot (HLL_8) while it is written
    _ingest_and_compact(acme, D1, range(30_000))
    day = Rollup.objects.get(scope=S.GROUP_DAY)
    Rollup.objects.filter(pk=day.pk).update(sketch=bytes(day.sketch)[:5000])
    settings.METERING_SETTLE_DAYS = 1
    rollups_settle(today=TODAY)

    live = Rollup.objects.get(scope=S.GROUP_DAY, quarantined_at__isnull=True)
    assert sketches.tgt_type_of(bytes(live.sketch)) == "HLL_4"
    estimate = sketches.stored_estimate(bytes(live.sketch))
    assert estimate.lower <= 30_000 <= estimate.upper
    assert Rollup.objects.filter(scope=S.GROUP_DAY, quarantined_at__isnull=False).count() == 1


def test_sketches_accepted_before_the_minimum_lgk_still_count(acme: Any, reader: Any) -> None:
    """Nothing already accepted is lost: an lgK-10 upload stored before the minimum is readable, so it counts."""
    _legacy_rollups(acme, D1, forgeries.hll(range(40_000), 10))
    _legacy_part(acme, D2, forgeries.hll(range(30_000, 60_000), 10))
    answer = reader.get(f"/api/v1/groups/{acme.organisation.group_id}/mau?month={MONTH}").json()
    assert answer["lg_k"] == 10 and answer["lower"] <= 60_000 <= answer["upper"] and answer["excluded"] == []
    while metering_compact_step():
        pass
    assert not ActivityPart.objects.exists() and not Rollup.objects.filter(quarantined_at__isnull=False).exists()

"""group_evaluate, access_check and alerts, driven step by step on real metered data.

The threshold is lowered in the catalogue (LicenceVersion.mau_threshold) so that a few hundred exactly
counted users stand for 700M: "the threshold comes from the catalogue, not the code". Dates are driven with
``today=``; ingestion of old days needs a longer retention than the default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import Any

import pytest
from django.core.cache import cache
from django.db import IntegrityError, transaction
from django.utils import timezone

from access.models import AffiliateGroup, AuditEvent, Membership, Organisation
from governance.compliance.services import (
    access_check,
    alert_acknowledge,
    declared_figure_record,
    group_evaluate,
    group_policy_get,
    group_policy_update,
)
from governance.metering.services import activity_ingest, metering_compact_step
from governance.models import (
    AccessDecision,
    ActivityPart,
    Alert,
    AlertLevelState,
    ComplianceStatus,
    GroupForecast,
    GroupPolicy,
    StatusChange,
)
from licensing.models import LicenceVersion, Product
from licensing.services import grant_record, licence_accept
from tests.factories import GroupFactory, MembershipFactory, OrganisationFactory, ProductFactory, UserFactory, licence

pytestmark = pytest.mark.django_db

JUNE_2024 = dt.date(2024, 6, 1)
AUGUST_2024 = dt.date(2024, 8, 1)


@pytest.fixture(autouse=True)
def _old_days_accepted(settings: Any) -> None:
    settings.METERING_RETENTION_DAYS = 5000


@pytest.fixture(autouse=True)
def _no_stale_decisions() -> Iterable[None]:
    # Group ids repeat between tests (rolled back), and decisions are cached per group id.
    cache.clear()
    yield
    cache.clear()


def threshold(slug: str, mau: int = 1_000) -> LicenceVersion:
    LicenceVersion.objects.filter(slug=slug).update(mau_threshold=mau)
    return licence(slug)


def users(first: int, last: int) -> list[str]:
    """Ids u<first> .. u<last>, inclusive."""
    return [f"u{n}" for n in range(first, last + 1)]


def ingest(product: Product, day: dt.date, ids: list[str]) -> None:
    activity_ingest(product=product, day=day, user_ids=ids)


def accept(organisation: Organisation, version: LicenceVersion) -> None:
    licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                   aup_version=version.aup_version, accepted_by="counsel@example.com")


def status(group: AffiliateGroup, slug: str, rule: str) -> ComplianceStatus:
    return ComplianceStatus.objects.get(group=group, licence_version__slug=slug, rule=rule)


def alerts(group: AffiliateGroup) -> list[tuple[str, str, dt.date]]:
    return [(a.level, a.kind, a.month) for a in Alert.objects.filter(group=group).order_by("id")]


class Estate:
    """One affiliate group: Acme ships Chat on Llama 3.1, its affiliate Acme Labs ships Search on Llama 3.2."""

    def __init__(self) -> None:
        self.v31, self.v32 = threshold("llama-3.1"), threshold("llama-3.2")
        self.group = GroupFactory(name="Acme Group")
        self.acme = OrganisationFactory(name="Acme", group=self.group)
        self.labs = OrganisationFactory(name="Acme Labs", group=self.group)
        self.chat = ProductFactory(organisation=self.acme, name="Chat", licence_version=self.v31)
        self.search = ProductFactory(organisation=self.labs, name="Search", licence_version=self.v32)

    def evaluate(self, today: dt.date | None = None) -> Any:
        return group_evaluate(group=self.group, today=today)


@pytest.fixture
def estate() -> Estate:
    return Estate()


# --- statuses -----------------------------------------------------------------------------------------------


def test_it_stores_a_status_per_version_and_rule_with_its_figures_month_and_rule(estate: Estate) -> None:
    ingest(estate.chat, dt.date(2024, 6, 1), users(0, 599))
    ingest(estate.search, dt.date(2024, 6, 20), users(300, 899))  # 300 people use both: June is 900, not 1,200
    ingest(estate.chat, dt.date(2024, 8, 10), users(0, 1000))  # August: 1,001
    ingest(estate.search, dt.date(2024, 9, 5), users(0, 99))  # the 30 days to Sep 10: 100

    estate.evaluate(today=dt.date(2024, 9, 10))

    rows = {
        (s.licence_version.slug, s.rule): (s.state, s.level, s.month, s.source, s.estimate, s.lower, s.upper,
                                           s.threshold)
        for s in ComplianceStatus.objects.filter(group=estate.group)
    }
    assert rows == {
        # Llama 3.1 (released July 23, 2024) is tested on June 2024; Llama 3.2 (September 25) on August 2024.
        ("llama-3.1", "licence_accurate"): ("approaching", 0.9, JUNE_2024, "metered", 900, 900, 900, 1_000),
        ("llama-3.1", "last_month"): ("over", 1.0, AUGUST_2024, "metered", 1_001, 1_001, 1_001, 1_000),
        ("llama-3.1", "projected"): ("below", None, dt.date(2024, 9, 1), "metered", 100, 100, 100, 1_000),
        ("llama-3.2", "licence_accurate"): ("over", 1.0, AUGUST_2024, "metered", 1_001, 1_001, 1_001, 1_000),
        ("llama-3.2", "last_month"): ("over", 1.0, AUGUST_2024, "metered", 1_001, 1_001, 1_001, 1_000),
        ("llama-3.2", "projected"): ("below", None, dt.date(2024, 9, 1), "metered", 100, 100, 100, 1_000),
    }
    assert "June 2024" in status(estate.group, "llama-3.1", "licence_accurate").explanation


def test_it_gives_the_same_statuses_after_compaction(estate: Estate) -> None:
    ingest(estate.chat, dt.date(2024, 6, 1), users(0, 599))
    ingest(estate.search, dt.date(2024, 6, 20), users(300, 899))
    while metering_compact_step() > 0:
        pass
    assert not ActivityPart.objects.exists()

    estate.evaluate(today=dt.date(2024, 9, 10))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.state, accurate.level, accurate.source, accurate.estimate) == ("approaching", 0.9, "metered", 900)


def test_it_reads_the_threshold_from_the_catalogue(estate: Estate) -> None:
    ingest(estate.chat, JUNE_2024, users(0, 1000))
    estate.evaluate(today=dt.date(2024, 7, 10))
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "over"

    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=700_000_000)
    estate.evaluate(today=dt.date(2024, 7, 10))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.state, accurate.threshold, accurate.estimate) == ("below", 700_000_000, 1_001)


def test_it_calls_an_interval_straddling_the_threshold_uncertain_and_blocks_it(estate: Estate) -> None:
    # 40,000 ids are past the sketch's exact range: the estimate carries a 95% interval around 40,000.
    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=40_000)
    accept(estate.acme, licence("llama-3.1"))
    ingest(estate.chat, JUNE_2024, users(0, 39_999))

    estate.evaluate(today=dt.date(2024, 7, 10))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert accurate.state == "uncertain"
    assert accurate.lower <= 40_000 < accurate.upper
    decision = access_check(organisation=estate.acme, licence_version=licence("llama-3.1"))
    assert (decision.allowed, decision.reason) == (False, "uncertain_threshold")


@pytest.mark.parametrize(
    ("slug", "test_month"),
    [
        ("llama-2", dt.date(2023, 6, 1)),
        ("code-llama", dt.date(2023, 7, 1)),
        ("llama-3", dt.date(2024, 3, 1)),
        ("llama-3.1", dt.date(2024, 6, 1)),
        ("llama-3.2", dt.date(2024, 8, 1)),
        ("llama-3.3", dt.date(2024, 11, 1)),
        ("llama-4", dt.date(2025, 3, 1)),
    ],
)
def test_it_tests_each_version_on_the_month_before_its_release(slug: str, test_month: dt.date) -> None:
    version = threshold(slug)
    product = ProductFactory(licence_version=version)
    month_before = (test_month - dt.timedelta(days=1)).replace(day=1)
    month_after = (test_month + dt.timedelta(days=31)).replace(day=1)
    ingest(product, month_before, users(0, 599))
    ingest(product, test_month, users(0, 1000))
    ingest(product, month_after, users(0, 9))

    group_evaluate(group=product.organisation.group, today=month_after + dt.timedelta(days=70))

    accurate = status(product.organisation.group, slug, "licence_accurate")
    assert (accurate.state, accurate.month, accurate.estimate, accurate.source) == (
        "over", test_month, 1_001, "metered")


def test_it_flags_the_ambiguous_code_llama_month_for_counsel() -> None:
    version = threshold("code-llama")
    product = ProductFactory(licence_version=version)
    ingest(product, dt.date(2023, 7, 1), users(0, 99))

    group_evaluate(group=product.organisation.group, today=dt.date(2023, 9, 1))

    explanation = status(product.organisation.group, "code-llama", "licence_accurate").explanation
    assert "June or July 2023" in explanation


def test_it_says_unknown_not_below_when_metering_started_after_the_test_month(estate: Estate) -> None:
    ingest(estate.chat, dt.date(2024, 6, 2), users(0, 4))  # one day late: June is only partly metered

    estate.evaluate(today=dt.date(2024, 7, 10))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    # The partial month is kept as evidence, but a partial count cannot show the month was below.
    assert (accurate.state, accurate.month, accurate.source) == ("unknown", JUNE_2024, "metered (partial month)")
    assert "cannot show" in accurate.explanation


def test_it_uses_a_declared_figure_for_an_unmetered_test_month_and_labels_it(estate: Estate) -> None:
    ingest(estate.chat, dt.date(2024, 7, 10), users(0, 4))
    estate.evaluate(today=dt.date(2024, 7, 20))
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "unknown"

    declared_figure_record(group=estate.group, month=dt.date(2024, 6, 15), mau=950,
                           evidence="June 2024 analytics export", declared_by="cfo@example.com")
    estate.evaluate(today=dt.date(2024, 7, 20))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.state, accurate.level, accurate.month, accurate.source, accurate.estimate) == (
        "approaching", 0.9, JUNE_2024, "declared", 950)
    assert "declared" in accurate.explanation
    assert AuditEvent.objects.filter(action="figure.declared", group=estate.group).count() == 1


def test_it_uses_the_latest_declaration_for_a_month(estate: Estate) -> None:
    declared_figure_record(group=estate.group, month=JUNE_2024, mau=950, evidence="first", declared_by="cfo")
    declared_figure_record(group=estate.group, month=JUNE_2024, mau=1_001, evidence="corrected", declared_by="cfo")

    estate.evaluate(today=dt.date(2024, 7, 20))

    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.state, accurate.source, accurate.estimate) == ("over", "declared", 1_001)


def test_it_keeps_the_higher_of_a_fully_metered_month_and_a_declaration(estate: Estate) -> None:
    ingest(estate.chat, dt.date(2024, 5, 20), users(0, 9))
    ingest(estate.chat, dt.date(2024, 6, 10), users(0, 99))
    declared_figure_record(group=estate.group, month=JUNE_2024, mau=50, evidence="estimate", declared_by="cfo")
    estate.evaluate(today=dt.date(2024, 7, 20))
    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.state, accurate.source, accurate.estimate) == ("below", "metered", 100)

    # Affiliates' products may not all have been metered: a higher declaration wins, conservatively.
    declared_figure_record(group=estate.group, month=JUNE_2024, mau=950, evidence="audit", declared_by="cfo")
    estate.evaluate(today=dt.date(2024, 7, 21))
    accurate = status(estate.group, "llama-3.1", "licence_accurate")
    assert (accurate.source, accurate.estimate) == ("declared", 950)


# --- grants -------------------------------------------------------------------------------------------------


def test_it_grants_only_the_version_a_grant_names_and_only_from_its_valid_from_date(estate: Estate) -> None:
    for organisation, version in ((estate.acme, estate.v31), (estate.labs, estate.v32)):
        accept(organisation, version)
    ingest(estate.chat, JUNE_2024, users(0, 1000))
    ingest(estate.chat, AUGUST_2024, users(0, 1000))
    grant_record(group=estate.group, licence_versions=[estate.v31], reference="Meta-2024-117",
                 granted_on=dt.date(2024, 9, 1), valid_from=dt.date(2024, 9, 15), valid_until=dt.date(2024, 12, 31),
                 recorded_by="counsel@example.com")

    estate.evaluate(today=dt.date(2024, 9, 14))
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "over"
    assert not access_check(organisation=estate.acme, licence_version=estate.v31).allowed

    estate.evaluate(today=dt.date(2024, 9, 15))
    states = {(s.licence_version.slug, s.rule): s.state for s in ComplianceStatus.objects.filter(group=estate.group)}
    assert states == {
        ("llama-3.1", "licence_accurate"): "granted",
        ("llama-3.1", "last_month"): "granted",
        ("llama-3.1", "projected"): "granted",
        ("llama-3.2", "licence_accurate"): "over",
        ("llama-3.2", "last_month"): "over",
        ("llama-3.2", "projected"): "below",
    }
    assert access_check(organisation=estate.acme, licence_version=estate.v31).allowed
    decision = access_check(organisation=estate.labs, licence_version=estate.v32)
    assert (decision.allowed, decision.reason) == (False, "over_threshold")

    estate.evaluate(today=dt.date(2025, 1, 1))  # the grant ran until December 31
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "over"


# --- history and audit --------------------------------------------------------------------------------------


def test_it_writes_history_and_audit_only_when_a_status_changes(estate: Estate) -> None:
    ingest(estate.chat, JUNE_2024, users(0, 599))
    today = dt.date(2024, 7, 10)

    estate.evaluate(today=today)
    assert StatusChange.objects.filter(group=estate.group).count() == 6  # 2 versions x 3 rules
    assert set(StatusChange.objects.filter(group=estate.group).values_list("previous_state", flat=True)) == {""}
    assert AuditEvent.objects.filter(group=estate.group, action="status.changed").count() == 6

    estate.evaluate(today=today)
    assert ComplianceStatus.objects.filter(group=estate.group).count() == 6
    assert StatusChange.objects.filter(group=estate.group).count() == 6
    assert AuditEvent.objects.filter(group=estate.group, action="status.changed").count() == 6

    ingest(estate.chat, dt.date(2024, 6, 2), users(600, 1000))  # June becomes 1,001
    estate.evaluate(today=today)

    first_seq = AuditEvent.objects.filter(group=estate.group, action="status.changed").order_by("seq")[5].seq
    changes = {
        (c.licence_version.slug, c.rule, c.previous_state, c.state, c.month, c.estimate)
        for c in StatusChange.objects.filter(group=estate.group, previous_state__gt="")
    }
    assert changes == {
        ("llama-3.1", "licence_accurate", "approaching", "over", JUNE_2024, 1_001),
        ("llama-3.1", "last_month", "approaching", "over", JUNE_2024, 1_001),
        ("llama-3.2", "last_month", "approaching", "over", JUNE_2024, 1_001),
    }
    audited = AuditEvent.objects.filter(group=estate.group, action="status.changed", seq__gt=first_seq)
    assert sorted((e.data["licence_version"], e.data["rule"], e.data["from"], e.data["to"], e.data["estimate"])
                  for e in audited) == [
        ("llama-3.1", "last_month", "approaching", "over", 1_001),
        ("llama-3.1", "licence_accurate", "approaching", "over", 1_001),
        ("llama-3.2", "last_month", "approaching", "over", 1_001),
    ]


# --- alerts -------------------------------------------------------------------------------------------------


class Watched:
    """A group with one Llama 3.1 product and a small declared figure for its test month, so only recent
    traffic alerts (a test month without a figure raises its own "unknown" alert)."""

    def __init__(self) -> None:
        self.version = threshold("llama-3.1")
        self.product = ProductFactory(licence_version=self.version)
        self.group = self.product.organisation.group
        declared_figure_record(group=self.group, month=JUNE_2024, mau=10, evidence="June 2024 report",
                               declared_by="counsel")

    def ingest(self, day: dt.date, ids: list[str]) -> None:
        ingest(self.product, day, ids)

    def evaluate(self, today: dt.date) -> Any:
        return group_evaluate(group=self.group, today=today)

    def alerts(self) -> list[tuple[str, str, dt.date]]:
        return alerts(self.group)


@pytest.fixture
def watched() -> Watched:
    return Watched()


JAN = dt.date(2025, 1, 1)
FEB = dt.date(2025, 2, 1)


def test_it_announces_a_level_once(watched: Watched) -> None:
    day = dt.date(2025, 1, 5)
    watched.ingest(day, users(0, 599))  # 60%

    first = watched.evaluate(today=day)
    second = watched.evaluate(today=day)

    assert [(a.level, a.kind) for a in first.alerts] == [("50%", "raised")]
    assert second.alerts == []
    assert watched.alerts() == [("50%", "raised", JAN)]
    alert = Alert.objects.get(group=watched.group)
    assert alert.licence_version == watched.version
    assert (alert.figures["estimate"], alert.figures["threshold"]) == (600, 1_000)
    assert AuditEvent.objects.filter(group=watched.group, action="alert.raised").count() == 1


def test_it_announces_only_the_highest_level_crossed_at_once(watched: Watched) -> None:
    watched.ingest(dt.date(2025, 1, 5), users(0, 909))  # 91%: 50%, 75% and 90% at once

    watched.evaluate(today=dt.date(2025, 1, 5))

    assert watched.alerts() == [("90%", "raised", JAN)]
    active = set(AlertLevelState.objects.filter(group=watched.group, active=True).values_list("level", flat=True))
    assert active == {"50%", "75%", "90%"}


def test_it_escalates_to_a_higher_level_as_a_new_alert(watched: Watched) -> None:
    day = dt.date(2025, 1, 5)
    watched.ingest(day, users(0, 599))
    watched.evaluate(today=day)
    watched.ingest(day, users(600, 909))  # now 910: 75% and 90% are new

    watched.evaluate(today=day)
    watched.evaluate(today=day)

    assert watched.alerts() == [("50%", "raised", JAN), ("90%", "raised", JAN)]

    watched.ingest(day, users(910, 1000))  # 1,001: over the threshold
    watched.evaluate(today=day)
    assert watched.alerts()[-1] == ("over", "raised", JAN)
    assert len(watched.alerts()) == 3


def test_it_recovers_only_below_the_level_minus_the_hysteresis(watched: Watched) -> None:
    first = dt.date(2025, 1, 5)
    watched.ingest(first, users(0, 909))  # 910
    watched.ingest(first + dt.timedelta(days=20), users(0, 879))  # 880: exactly 90% - 2%
    watched.ingest(first + dt.timedelta(days=30), users(0, 878))  # 879
    watched.evaluate(today=first)
    assert watched.alerts() == [("90%", "raised", JAN)]

    # Jan 25 .. Feb 23: the 30-day window has dropped Jan 5 and sees 880 people: 90% holds.
    watched.evaluate(today=first + dt.timedelta(days=30))
    assert watched.alerts() == [("90%", "raised", JAN)]
    watched.evaluate(today=first + dt.timedelta(days=49))
    assert watched.alerts() == [("90%", "raised", JAN)]

    # From Feb 24 the window holds only the 879 of Feb 4: below 88%, the 90% level recovers; 75% stays.
    watched.evaluate(today=first + dt.timedelta(days=50))
    assert watched.alerts() == [("90%", "raised", JAN), ("90%", "recovered", FEB)]
    active = set(AlertLevelState.objects.filter(group=watched.group, active=True).values_list("level", flat=True))
    assert active == {"50%", "75%"}

    watched.evaluate(today=first + dt.timedelta(days=50))
    assert len(watched.alerts()) == 2


def test_it_sends_one_alert_per_level_and_month(watched: Watched) -> None:
    watched.ingest(JAN, users(0, 599))
    watched.evaluate(today=JAN)
    watched.evaluate(today=dt.date(2025, 1, 31))  # the window no longer holds January 1: back to nothing
    assert watched.alerts() == [("50%", "raised", JAN), ("50%", "recovered", JAN)]

    watched.ingest(dt.date(2025, 1, 31), users(0, 599))  # 50% again, in the same month
    watched.evaluate(today=dt.date(2025, 1, 31))

    assert watched.alerts() == [("50%", "raised", JAN), ("50%", "recovered", JAN)]
    assert AlertLevelState.objects.get(group=watched.group, level="50%").active


def test_it_refuses_a_second_alert_row_for_the_same_group_version_level_month_and_kind(watched: Watched) -> None:
    watched.ingest(JAN, users(0, 599))
    watched.evaluate(today=JAN)

    with pytest.raises(IntegrityError), transaction.atomic():
        Alert.objects.create(group=watched.group, licence_version=watched.version, level="50%", kind="raised",
                             month=JAN, message="again")


def test_it_alerts_when_the_licence_accurate_test_is_over_however_small_recent_traffic_is() -> None:
    version = threshold("llama-3.1")
    product = ProductFactory(licence_version=version)
    group = product.organisation.group
    ingest(product, JUNE_2024, users(0, 1000))

    group_evaluate(group=group, today=dt.date(2025, 1, 10))

    assert alerts(group) == [("over", "raised", JAN)]
    assert "June 2024" in Alert.objects.get(group=group).message


def test_it_raises_a_forecast_alert_for_a_group_growing_towards_the_threshold(watched: Watched) -> None:
    start = dt.date(2025, 1, 1)
    total = 0
    for day in range(20):  # the group grows about 5% a day: 300 on day 0, 758 on day 19
        target = round(300 * 1.05**day)
        watched.ingest(start + dt.timedelta(days=day), users(total, target - 1))
        total = target
    today = start + dt.timedelta(days=19)

    watched.evaluate(today=today)

    forecast = GroupForecast.objects.get(group=watched.group)
    # 758 x 1.05^t = 1,000 at t = 5.7 days
    assert forecast.crossing_date is not None and 3 <= (forecast.crossing_date - today).days <= 8
    assert forecast.earliest <= forecast.crossing_date <= forecast.latest
    assert "Theil-Sen" in forecast.method
    assert watched.alerts() == [("forecast", "raised", JAN)]
    assert "projected to pass 1,000" in Alert.objects.get(group=watched.group).message


def test_it_acknowledges_an_alert_once(watched: Watched) -> None:
    watched.ingest(JAN, users(0, 599))
    watched.evaluate(today=JAN)
    alert = Alert.objects.get(group=watched.group)

    alert_acknowledge(alert=alert, actor="alice@example.com")
    again = alert_acknowledge(alert=alert, actor="bob@example.com")

    assert again.acknowledged_by == "alice@example.com"
    assert again.acknowledged_at is not None
    assert AuditEvent.objects.filter(group=watched.group, action="alert.acknowledged").count() == 1


# --- access_check -------------------------------------------------------------------------------------------


@pytest.fixture
def over(estate: Estate) -> Estate:
    """Acme accepted Llama 3.1, and the group had 1,001 users in June 2024."""
    accept(estate.acme, estate.v31)
    ingest(estate.chat, JUNE_2024, users(0, 1000))
    return estate


def set_mode(group: AffiliateGroup, mode: str, **changes: object) -> None:
    group_policy_update(policy=group_policy_get(group=group), actor="admin", mode=mode, **changes)


def check(estate: Estate, organisation: Organisation | None = None) -> tuple[bool, str]:
    decision = access_check(organisation=organisation or estate.acme, licence_version=estate.v31)
    return decision.allowed, decision.reason


def test_it_blocks_a_group_over_the_threshold_under_enforce(over: Estate) -> None:
    over.evaluate(today=dt.date(2024, 9, 1))

    assert check(over) == (False, "over_threshold")
    row = AccessDecision.objects.get(group=over.group, licence_version=over.v31)
    assert (row.allowed, row.reason) == (False, "over_threshold")


def test_it_allows_a_group_over_the_threshold_under_monitor(over: Estate) -> None:
    set_mode(over.group, "monitor")

    over.evaluate(today=dt.date(2024, 9, 1))

    assert check(over) == (True, "monitor_only")


def test_it_allows_a_group_over_the_threshold_during_the_grace_period_then_blocks(over: Estate) -> None:
    set_mode(over.group, "grace", grace_days=30)
    today = timezone.now().date()

    over.evaluate()  # the crossing is seen today
    assert check(over) == (True, "grace_period")
    over.evaluate(today=today + dt.timedelta(days=29))
    assert check(over) == (True, "grace_period")
    over.evaluate(today=today + dt.timedelta(days=30))
    assert check(over) == (False, "over_threshold")


def test_it_counts_the_grace_period_from_the_evaluated_day_of_the_crossing(over: Estate) -> None:
    set_mode(over.group, "grace", grace_days=30)

    over.evaluate(today=dt.date(2024, 9, 1))  # the crossing is seen on September 1
    assert check(over) == (True, "grace_period")
    over.evaluate(today=dt.date(2024, 10, 15))  # 44 days later

    assert check(over) == (False, "over_threshold")


def test_it_does_not_restart_the_grace_period_when_uncertain_becomes_over(
    estate: Estate, monkeypatch: pytest.MonkeyPatch
) -> None:
    LicenceVersion.objects.filter(slug="llama-3.1").update(mau_threshold=40_000)
    accept(estate.acme, licence("llama-3.1"))
    set_mode(estate.group, "grace", grace_days=30)
    ingest(estate.chat, JUNE_2024, users(0, 39_999))

    def evaluate_on(day: dt.date) -> None:
        # The wall clock and ``today`` agree, as they do in production.
        monkeypatch.setattr(timezone, "now", lambda: dt.datetime.combine(day, dt.time(12), tzinfo=dt.UTC))
        estate.evaluate(today=day)
        cache.clear()

    crossed = dt.date(2024, 9, 1)
    evaluate_on(crossed)
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "uncertain"
    assert check(estate) == (True, "grace_period")

    ingest(estate.chat, dt.date(2024, 6, 2), users(40_000, 40_999))  # late June data: now surely over
    evaluate_on(crossed + dt.timedelta(days=20))
    assert status(estate.group, "llama-3.1", "licence_accurate").state == "over"
    assert check(estate) == (True, "grace_period")

    evaluate_on(crossed + dt.timedelta(days=35))  # 35 days after the group first crossed

    assert check(estate) == (False, "over_threshold")


def test_it_blocks_an_organisation_that_has_not_accepted_the_licence(over: Estate) -> None:
    set_mode(over.group, "monitor")
    over.evaluate(today=dt.date(2024, 9, 1))

    assert check(over, over.labs) == (False, "licence_not_accepted")
    assert check(over) == (True, "monitor_only")


def test_it_blocks_an_organisation_until_it_accepts_a_new_acceptable_use_policy(over: Estate) -> None:
    set_mode(over.group, "monitor")
    over.evaluate(today=dt.date(2024, 9, 1))
    LicenceVersion.objects.filter(pk=over.v31.pk).update(aup_version="llama-3.1-rev2")
    over.v31.refresh_from_db()

    assert check(over) == (False, "aup_not_accepted")
    accept(over.acme, over.v31)
    assert check(over) == (True, "monitor_only")


def test_it_blocks_a_suspended_organisation(over: Estate) -> None:
    set_mode(over.group, "monitor")
    over.evaluate(today=dt.date(2024, 9, 1))
    Organisation.objects.filter(pk=over.acme.pk).update(status=Organisation.Status.SUSPENDED)
    over.acme.refresh_from_db()

    assert check(over) == (False, "organisation_suspended")


def test_it_allows_a_group_never_evaluated_and_says_so(estate: Estate) -> None:
    accept(estate.acme, estate.v31)
    assert check(estate) == (True, "unknown")


def test_it_serves_a_new_decision_once_the_cached_one_expires(over: Estate) -> None:
    over.evaluate(today=dt.date(2024, 9, 1))
    assert check(over) == (False, "over_threshold")  # now cached for up to 5 seconds

    # Another process decides differently (a grant, a policy change) without touching this process's cache.
    AccessDecision.objects.filter(group=over.group, licence_version=over.v31).update(
        allowed=True, reason="monitor_only", detail="Allowed by the monitor policy.")
    assert check(over) == (False, "over_threshold")
    cache.clear()  # the 5 seconds are up

    assert check(over) == (True, "monitor_only")


def test_it_serves_a_new_decision_at_once_after_evaluating_in_the_same_process(over: Estate) -> None:
    over.evaluate(today=dt.date(2024, 9, 1))
    assert check(over) == (False, "over_threshold")
    set_mode(over.group, "monitor")

    over.evaluate(today=dt.date(2024, 9, 1))

    assert check(over) == (True, "monitor_only")


# --- policy -------------------------------------------------------------------------------------------------


def test_it_creates_the_default_policy_with_the_group_owners_and_admins() -> None:
    group = GroupFactory()
    acme, labs = OrganisationFactory(group=group), OrganisationFactory(group=group)
    owner = UserFactory(email="owner@acme.example")
    MembershipFactory(user=owner, organisation=acme, role=Membership.Role.OWNER)
    MembershipFactory(user=owner, organisation=labs, role=Membership.Role.ADMIN)
    MembershipFactory(user=UserFactory(email="admin@labs.example"), organisation=labs, role=Membership.Role.ADMIN)
    MembershipFactory(user=UserFactory(email="dev@acme.example"), organisation=acme, role=Membership.Role.MEMBER)
    MembershipFactory(user=UserFactory(email="ro@acme.example"), organisation=acme, role=Membership.Role.VIEWER)
    MembershipFactory(user=UserFactory(email=""), organisation=acme, role=Membership.Role.OWNER)
    MembershipFactory(user=UserFactory(email="else@other.example"), role=Membership.Role.OWNER)

    policy = group_policy_get(group=group)

    assert policy.levels == [0.5, 0.75, 0.9]
    assert policy.email_recipients == ["admin@labs.example", "owner@acme.example"]
    assert (policy.mode, policy.grace_days, policy.hysteresis, policy.forecast_days) == ("enforce", 30, 0.02, 90)


def test_it_creates_the_policy_on_first_evaluation_and_keeps_later_edits(watched: Watched) -> None:
    assert not GroupPolicy.objects.filter(group=watched.group).exists()
    watched.evaluate(today=JAN)
    assert GroupPolicy.objects.get(group=watched.group).levels == [0.5, 0.75, 0.9]

    set_mode(watched.group, "monitor", levels=[0.8])
    watched.evaluate(today=JAN)

    policy = GroupPolicy.objects.get(group=watched.group)
    assert (policy.mode, policy.levels) == ("monitor", [0.8])


# --- which versions a group is evaluated for ----------------------------------------------------------------


def test_it_keeps_evaluating_a_version_when_another_tenant_retires_its_product(estate: Estate) -> None:
    accept(estate.acme, estate.v31)
    ingest(estate.chat, JUNE_2024, users(0, 1000))
    ProductFactory(licence_version=estate.v31, status=Product.Status.RETIRED)  # someone else's, elsewhere

    estate.evaluate(today=dt.date(2024, 9, 1))

    assert ComplianceStatus.objects.filter(group=estate.group, licence_version=estate.v31).count() == 3
    assert check(estate) == (False, "over_threshold")


def test_it_keeps_evaluating_a_version_while_one_of_the_groups_products_on_it_is_live(estate: Estate) -> None:
    ingest(estate.chat, JUNE_2024, users(0, 1000))
    ProductFactory(organisation=estate.labs, name="Old Chat", licence_version=estate.v31,
                   status=Product.Status.RETIRED)

    estate.evaluate(today=dt.date(2024, 9, 1))

    assert status(estate.group, "llama-3.1", "licence_accurate").state == "over"


def test_it_stops_evaluating_a_version_whose_products_are_all_retired(estate: Estate) -> None:
    Product.objects.filter(pk=estate.search.pk).update(status=Product.Status.RETIRED)

    estate.evaluate(today=dt.date(2024, 9, 1))

    assert set(ComplianceStatus.objects.filter(group=estate.group).values_list("licence_version__slug", flat=True)) == {
        "llama-3.1"}

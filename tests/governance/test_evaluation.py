"""The 700M rule, the access decision, the forecast and alert levels, as pure functions (no database).

Every expected value is computed by hand from the licence's words: "greater than 700 million monthly active
users in the preceding calendar month" (section 2, ../shared/LLAMA-LICENCES.md).
"""

from __future__ import annotations

import datetime as dt
import math

import pytest

from governance.compliance.rules import (
    APPROACHING,
    BELOW,
    GRANTED,
    OVER,
    UNCERTAIN,
    UNKNOWN,
    Coverage,
    Figure,
    Forecast,
    Status,
    active_levels,
    classify,
    classify_month,
    decide_access,
    forecast_crossing,
    level_rank,
    month_figures,
    projected_within,
    sum_of_products,
    worst_of,
)
from licensing.months import previous_month

THRESHOLD = 700_000_000
JUNE_2024 = dt.date(2024, 6, 1)


def declared(mau: int, month: dt.date = JUNE_2024) -> Figure:
    return Figure(mau, mau, mau, month, "declared")


def metered(estimate: int, lower: int, upper: int, month: dt.date = JUNE_2024) -> Figure:
    return Figure(estimate, lower, upper, month, "metered")


def status_of(figure: Figure | None, *, granted: bool = False, threshold: int = THRESHOLD) -> Status:
    return classify(figure, threshold=threshold, levels=(0.5, 0.75, 0.9), granted=granted, rule="licence_accurate")


# --- classify: the decision table ---------------------------------------------------------------------------


def test_it_does_not_count_exactly_700_million_as_over() -> None:
    status = status_of(declared(700_000_000))
    assert (status.state, status.level) == (APPROACHING, 0.9)


def test_it_counts_700_million_and_one_as_over() -> None:
    status = status_of(declared(700_000_001))
    assert (status.state, status.level) == (OVER, 1.0)


def test_it_calls_an_interval_straddling_the_threshold_uncertain() -> None:
    status = status_of(metered(700_000_000, 699_000_000, 701_000_000))
    assert status.state == UNCERTAIN
    assert "699,000,000 to 701,000,000" in status.explanation


def test_it_calls_an_estimate_below_the_threshold_uncertain_when_its_upper_bound_is_above() -> None:
    # Never silently "below" or "approaching" while the interval reaches past 700M.
    assert status_of(metered(699_500_000, 698_000_000, 700_000_001)).state == UNCERTAIN


def test_it_calls_an_interval_wholly_above_the_threshold_over() -> None:
    assert status_of(metered(702_000_000, 700_000_001, 704_000_000)).state == OVER


def test_it_calls_an_interval_whose_lower_bound_is_exactly_700_million_uncertain() -> None:
    assert status_of(metered(702_000_000, 700_000_000, 704_000_000)).state == UNCERTAIN


def test_it_does_not_call_an_upper_bound_of_exactly_700_million_uncertain() -> None:
    status = status_of(metered(695_000_000, 690_000_000, 700_000_000))
    assert (status.state, status.level) == (APPROACHING, 0.9)


@pytest.mark.parametrize(
    ("mau", "state", "level"),
    [
        (350_000_000, APPROACHING, 0.5),  # exactly 50% of 700M
        (349_999_999, BELOW, None),
        (525_000_000, APPROACHING, 0.75),  # exactly 75%
        (524_999_999, APPROACHING, 0.5),
        (630_000_000, APPROACHING, 0.9),  # exactly 90%
        (629_999_999, APPROACHING, 0.75),
        (0, BELOW, None),
    ],
)
def test_it_reaches_each_level_at_exactly_its_fraction_and_not_one_user_before(
    mau: int, state: str, level: float | None
) -> None:
    status = status_of(declared(mau))
    assert (status.state, status.level) == (state, level)


def test_it_compares_the_estimate_not_the_upper_bound_with_the_levels() -> None:
    # 349,000,000 is below 50% even though its interval reaches 351,000,000.
    assert status_of(metered(349_000_000, 347_000_000, 351_000_000)).state == BELOW


def test_it_takes_the_threshold_from_its_argument() -> None:
    assert status_of(declared(1_001), threshold=1_000).state == OVER
    assert status_of(declared(1_000), threshold=1_000).state == APPROACHING
    assert status_of(declared(700_000_001), threshold=800_000_000).state == APPROACHING


def test_it_honours_custom_levels() -> None:
    status = classify(declared(420_000_000), threshold=THRESHOLD, levels=(0.6, 0.8), rule="last_month")
    assert (status.state, status.level) == (APPROACHING, 0.6)
    assert classify(declared(419_999_999), threshold=THRESHOLD, levels=(0.6, 0.8), rule="last_month").state == BELOW


@pytest.mark.parametrize(
    "figure",
    [declared(900_000_000), metered(700_000_000, 699_000_000, 701_000_000), declared(10), None],
    ids=["over", "uncertain", "below", "no-figure"],
)
def test_it_lets_a_grant_beat_every_figure(figure: Figure | None) -> None:
    assert status_of(figure, granted=True).state == GRANTED


def test_it_calls_a_missing_figure_unknown_never_below() -> None:
    status = status_of(None)
    assert status.state == UNKNOWN
    assert status.figure is None


def test_it_records_the_figure_rule_threshold_and_source_with_the_status() -> None:
    figure = declared(400_000_000)
    status = classify(figure, threshold=THRESHOLD, rule="licence_accurate")
    assert (status.figure, status.rule, status.threshold) == (figure, "licence_accurate", THRESHOLD)
    assert "declared MAU for June 2024" in status.explanation


def test_it_tests_the_calendar_month_before_the_release_date() -> None:
    # Llama 3.1 was released on July 23, 2024; the licence looks at June 2024.
    assert previous_month(dt.date(2024, 7, 23)) == JUNE_2024
    assert previous_month(dt.date(2025, 1, 1)) == dt.date(2024, 12, 1)


# --- every figure of the month, the worst kept -----------------------------------------------------------
# Section 2: the licence is needed if the users "is greater than 700 million monthly active users in the
# preceding calendar month". Each figure for the month is a reading of that number; none may hide another.


def month_status(*, metered_figure: Figure | None, declarations: list[Figure], started: dt.date | None,
                 threshold: int = THRESHOLD) -> Status:
    figures = month_figures(metered=metered_figure, declared=declarations, metering_started=started)
    return classify_month(figures, threshold=threshold, levels=(0.5, 0.75, 0.9), rule="licence_accurate",
                          month=JUNE_2024)


def test_a_declaration_never_hides_a_metered_interval_that_straddles_700_million() -> None:
    """Hand case: metered 690M with 95% interval [680M, 705M], declared 695M. The metered interval contains
    values "greater than 700 million" and values not: uncertain. The declared 695M alone is approaching (at or
    above 90% of 700M). The worst is kept: uncertain."""
    status = month_status(metered_figure=metered(690_000_000, 680_000_000, 705_000_000),
                          declarations=[declared(695_000_000)], started=dt.date(2024, 1, 1))
    assert (status.state, status.figure.source) == (UNCERTAIN, "metered")
    assert [state for _, state in status.considered] == [UNCERTAIN, APPROACHING]
    assert "declared 695,000,000: approaching" in status.explanation


def test_a_later_lower_declaration_never_lowers_the_status() -> None:
    """Declared 800M, then declared 1: "greater than 700 million" holds for the first, so the month is over;
    the later figure is kept and shown next to it."""
    status = month_status(metered_figure=None, declarations=[declared(800_000_000), declared(1)], started=None)
    assert (status.state, status.figure.estimate) == (OVER, 800_000_000)
    assert [(f.estimate, state) for f, state in status.considered] == [(800_000_000, OVER), (1, BELOW)]


def test_a_declaration_with_bounds_is_classified_by_its_interval() -> None:
    """Declared 690M with bounds [650M, 720M]: 720M is greater than 700M and 650M is not: uncertain."""
    bounded = Figure(690_000_000, 650_000_000, 720_000_000, JUNE_2024, "declared", "declared")
    assert month_status(metered_figure=None, declarations=[bounded], started=None).state == UNCERTAIN
    point = declared(690_000_000)
    assert month_status(metered_figure=None, declarations=[point], started=None).state == APPROACHING


def test_it_uses_the_metered_figure_when_metering_started_on_the_first_day_of_the_month() -> None:
    status = month_status(metered_figure=metered(500, 500, 500), declarations=[declared(300)], started=JUNE_2024,
                          threshold=1000)
    assert (status.figure.source, status.figure.estimate, status.state) == ("metered", 500, APPROACHING)


def test_a_declaration_fills_a_month_metering_started_during() -> None:
    """A partial month cannot show the month was not over; once a declaration exists it says nothing."""
    status = month_status(metered_figure=metered(500, 500, 500), declarations=[declared(300)],
                          started=dt.date(2024, 6, 2), threshold=1000)
    assert (status.figure.source, status.state) == ("declared", BELOW)
    assert [f.source for f, _ in status.considered] == ["metered (partial month)", "declared"]


def test_a_partial_month_can_prove_over_but_never_below() -> None:
    over = month_status(metered_figure=metered(890_000_000, 880_000_000, 900_000_000), declarations=[],
                        started=dt.date(2024, 6, 2))
    assert (over.state, over.figure.source) == (OVER, "metered (partial month)")
    small = month_status(metered_figure=metered(500, 500, 500), declarations=[], started=dt.date(2024, 6, 2))
    assert small.state == UNKNOWN
    with_declaration = month_status(metered_figure=metered(890_000_000, 880_000_000, 900_000_000),
                                    declarations=[declared(100)], started=dt.date(2024, 6, 2))
    assert with_declaration.state == OVER


def test_it_has_no_figure_when_nothing_was_metered_or_declared_and_names_the_month() -> None:
    status = month_status(metered_figure=None, declarations=[], started=None)
    assert status.state == UNKNOWN and "June 2024" in status.explanation


def test_a_below_without_complete_coverage_reads_partial_coverage() -> None:
    """Section 2 counts "the products or services made available by or for Licensee, or Licensee's
    affiliates": a metered below with a registered service unmetered is not a clean pass."""
    gap = Coverage(JUNE_2024, metered=("Chat",), unmetered=("Search",), attested=True)
    figures = [metered(100, 100, 100)]
    status = classify_month(figures, threshold=THRESHOLD, rule="licence_accurate", coverage=gap)
    assert (status.state, status.label) == (BELOW, "below (partial coverage)")
    assert "not metered in June 2024: Search" in gap.gap()
    unattested = Coverage(JUNE_2024, metered=("Chat",), attested=False)
    assert classify_month(figures, threshold=THRESHOLD, rule="licence_accurate", coverage=unattested).label == \
        "below (partial coverage)"
    complete = Coverage(JUNE_2024, metered=("Chat",), attested=True)
    assert classify_month(figures, threshold=THRESHOLD, rule="licence_accurate", coverage=complete).label == BELOW
    decision = decide_access(status=classify_month(figures, threshold=THRESHOLD, rule="licence_accurate",
                                                   coverage=gap), mode="enforce", grace_days=0, crossed_on=None,
                             today=JUNE_2024, licence_accepted=True, aup_accepted=True)
    assert decision.allowed and "partial coverage" in decision.detail  # it never blocks


def test_the_sum_of_products_counts_a_person_once_per_product() -> None:
    """The licence does not say how a person using two products counts; adding each product's MAU is the most
    conservative reading: 400M + 350M = 750M, greater than 700M, where distinct people might be 600M."""
    summed = sum_of_products([metered(400_000_000, 398_000_000, 402_000_000),
                              metered(350_000_000, 348_000_000, 352_000_000)], month=JUNE_2024)
    assert (summed.estimate, summed.lower, summed.upper, summed.basis) == (
        750_000_000, 746_000_000, 754_000_000, "sum_of_products")
    assert status_of(summed).state == OVER


def test_the_worst_reading_of_the_tested_month_is_kept_and_named() -> None:
    """Code Llama 70B was released on 2024-01-29: its own test month is December 2023. Below in the version's
    month, over in the model's: over, saying which reading."""
    june = status_of(declared(100))
    december = status_of(Figure(800_000_000, 800_000_000, 800_000_000, dt.date(2023, 12, 1), "declared"))
    worst = worst_of([(june, ""), (december, "CodeLlama-70b was released on 2024-01-29")])
    assert worst.state == OVER and "CodeLlama-70b" in worst.explanation and "the version date: below" in worst.explanation


def test_it_blocks_an_unknown_month_only_when_the_policy_says_so() -> None:
    unknown = status_of(None)
    common = dict(status=unknown, grace_days=0, crossed_on=None, today=JUNE_2024, licence_accepted=True,
                  aup_accepted=True)
    assert decide_access(mode="enforce", **common).allowed
    blocked = decide_access(mode="enforce", on_unknown="block", **common)
    assert (blocked.allowed, blocked.reason) == (False, "unknown_figure")
    assert decide_access(mode="monitor", on_unknown="block", **common).allowed


# --- decide_access ------------------------------------------------------------------------------------------

CROSSED = dt.date(2024, 8, 1)


def decide(state_figure: Figure | None, *, mode: str = "enforce", grace_days: int = 30,
           crossed_on: dt.date | None = CROSSED, today: dt.date = CROSSED, granted: bool = False,
           licence_accepted: bool = True, aup_accepted: bool = True, organisation_active: bool = True):
    return decide_access(
        status=status_of(state_figure, granted=granted), mode=mode, grace_days=grace_days, crossed_on=crossed_on,
        today=today, licence_accepted=licence_accepted, aup_accepted=aup_accepted,
        organisation_active=organisation_active,
    )


OVER_FIGURE = declared(700_000_001)
UNCERTAIN_FIGURE = metered(700_000_000, 699_000_000, 701_000_000)


def test_it_blocks_over_under_enforce() -> None:
    decision = decide(OVER_FIGURE)
    assert (decision.allowed, decision.reason) == (False, "over_threshold")


def test_it_blocks_uncertain_under_enforce() -> None:
    decision = decide(UNCERTAIN_FIGURE)
    assert (decision.allowed, decision.reason) == (False, "uncertain_threshold")


@pytest.mark.parametrize("figure", [declared(700_000_000), declared(100), declared(600_000_000)])
def test_it_allows_below_and_approaching_under_enforce(figure: Figure) -> None:
    decision = decide(figure)
    assert (decision.allowed, decision.reason) == (True, "ok")


@pytest.mark.parametrize("mode", ["enforce", "grace", "monitor"])
def test_it_allows_a_granted_group_that_is_over(mode: str) -> None:
    decision = decide(OVER_FIGURE, granted=True, mode=mode, today=CROSSED + dt.timedelta(days=400))
    assert (decision.allowed, decision.reason) == (True, "ok")


@pytest.mark.parametrize("figure", [OVER_FIGURE, UNCERTAIN_FIGURE], ids=["over", "uncertain"])
def test_it_allows_over_and_uncertain_during_the_grace_period(figure: Figure) -> None:
    decision = decide(figure, mode="grace", grace_days=30, today=CROSSED + dt.timedelta(days=29))
    assert (decision.allowed, decision.reason) == (True, "grace_period")
    assert "2024-08-31" in decision.detail  # the last allowed day is the 30th; the block starts on Aug 31


@pytest.mark.parametrize(("figure", "reason"), [(OVER_FIGURE, "over_threshold"),
                                                (UNCERTAIN_FIGURE, "uncertain_threshold")], ids=["over", "uncertain"])
def test_it_blocks_on_the_day_the_grace_period_ends(figure: Figure, reason: str) -> None:
    decision = decide(figure, mode="grace", grace_days=30, today=CROSSED + dt.timedelta(days=30))
    assert (decision.allowed, decision.reason) == (False, reason)


def test_it_starts_the_grace_period_today_when_the_crossing_date_is_unknown() -> None:
    decision = decide(OVER_FIGURE, mode="grace", grace_days=30, crossed_on=None, today=CROSSED)
    assert (decision.allowed, decision.reason) == (True, "grace_period")


def test_it_blocks_at_once_under_a_zero_day_grace_period() -> None:
    decision = decide(OVER_FIGURE, mode="grace", grace_days=0, today=CROSSED)
    assert (decision.allowed, decision.reason) == (False, "over_threshold")


@pytest.mark.parametrize("figure", [OVER_FIGURE, UNCERTAIN_FIGURE], ids=["over", "uncertain"])
def test_it_never_blocks_for_the_threshold_under_monitor(figure: Figure) -> None:
    decision = decide(figure, mode="monitor", today=CROSSED + dt.timedelta(days=3650))
    assert (decision.allowed, decision.reason) == (True, "monitor_only")


@pytest.mark.parametrize("mode", ["enforce", "grace", "monitor"])
def test_it_refuses_a_suspended_organisation_first(mode: str) -> None:
    decision = decide(declared(10), mode=mode, granted=True, licence_accepted=False, aup_accepted=False,
                      organisation_active=False)
    assert (decision.allowed, decision.reason) == (False, "organisation_suspended")


@pytest.mark.parametrize("mode", ["enforce", "grace", "monitor"])
def test_it_refuses_an_unaccepted_licence_before_the_threshold(mode: str) -> None:
    decision = decide(declared(10), mode=mode, granted=True, licence_accepted=False, aup_accepted=False)
    assert (decision.allowed, decision.reason) == (False, "licence_not_accepted")
    assert "licence" in decision.detail.lower()


@pytest.mark.parametrize("mode", ["enforce", "grace", "monitor"])
def test_it_refuses_an_unaccepted_acceptable_use_policy(mode: str) -> None:
    decision = decide(declared(10), mode=mode, granted=True, aup_accepted=False)
    assert (decision.allowed, decision.reason) == (False, "aup_not_accepted")
    assert "Acceptable Use Policy" in decision.detail


@pytest.mark.parametrize("mode", ["enforce", "grace", "monitor"])
def test_it_allows_an_unknown_status_and_says_so(mode: str) -> None:
    decision = decide(None, mode=mode)
    assert (decision.allowed, decision.reason) == (True, "unknown")


# --- forecast -----------------------------------------------------------------------------------------------

ORIGIN = dt.date(2025, 1, 1)


def growing(days: range, start: int = 500_000_000, rate: float = 0.01) -> list[tuple[dt.date, int]]:
    """Day k (from ORIGIN) has start * (1 + rate)^k users."""
    return [(ORIGIN + dt.timedelta(days=k), round(start * (1 + rate) ** k)) for k in days]


def test_it_forecasts_the_hand_computed_crossing_of_an_exponential_series() -> None:
    # 500M x 1.01^t = 700M at t = ln(1.4) / ln(1.01) = 33.8 days: the first day over is day 34.
    assert math.ceil(math.log(1.4) / math.log(1.01)) == 34
    series = growing(range(30))  # days 0..29, the last at 667M
    forecast = forecast_crossing(series, threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=29))
    assert forecast.crossing_date == ORIGIN + dt.timedelta(days=34)
    assert forecast.earliest is not None and forecast.latest is not None
    assert forecast.earliest <= forecast.crossing_date <= forecast.latest
    assert forecast.daily_growth == pytest.approx(0.01, rel=1e-6)
    assert forecast.points == 30


def test_it_gives_a_forecast_interval_around_a_noisy_series() -> None:
    noise = [1.02, 0.98, 1.01, 0.99, 1.03, 0.97] * 5  # +/-3% about the same 1%/day trend
    series = [(day, round(value * factor)) for (day, value), factor in zip(growing(range(30)), noise, strict=True)]
    forecast = forecast_crossing(series, threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=29))
    assert forecast.crossing_date is not None and forecast.earliest is not None and forecast.latest is not None
    assert forecast.earliest < forecast.latest
    assert forecast.earliest <= forecast.crossing_date <= forecast.latest
    assert abs((forecast.crossing_date - (ORIGIN + dt.timedelta(days=34))).days) <= 2


def test_it_forecasts_nearly_the_same_date_despite_wild_outliers() -> None:
    series = growing(range(-40, 30))  # 70 days, day 0 at 500M, so the crossing is still day 34
    for index, factor in ((5, 5.0), (25, 5.0), (45, 5.0), (15, 0.2), (55, 0.2)):
        day, value = series[index]
        series[index] = (day, round(value * factor))
    forecast = forecast_crossing(series, threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=29))
    assert forecast.crossing_date is not None
    assert abs((forecast.crossing_date - (ORIGIN + dt.timedelta(days=34))).days) <= 1


@pytest.mark.parametrize("rate", [0.0, -0.01], ids=["flat", "shrinking"])
def test_it_forecasts_no_crossing_for_a_series_that_does_not_grow(rate: float) -> None:
    forecast = forecast_crossing(growing(range(60), rate=rate), threshold=THRESHOLD,
                                 today=ORIGIN + dt.timedelta(days=59))
    assert forecast.crossing_date is None
    assert forecast.latest is None


def test_it_forecasts_nothing_from_fewer_than_14_days() -> None:
    forecast = forecast_crossing(growing(range(13)), threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=12))
    assert (forecast.crossing_date, forecast.points) == (None, 13)


def test_it_forecasts_from_exactly_14_days() -> None:
    forecast = forecast_crossing(growing(range(14)), threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=13))
    assert forecast.crossing_date == ORIGIN + dt.timedelta(days=34)


def test_it_ignores_days_without_users_when_counting_points() -> None:
    series = growing(range(14))
    series[3] = (series[3][0], 0)
    forecast = forecast_crossing(series, threshold=THRESHOLD, today=ORIGIN + dt.timedelta(days=13))
    assert (forecast.crossing_date, forecast.points) == (None, 13)


def test_it_forecasts_today_for_a_series_already_above() -> None:
    series = growing(range(40))  # day 39 is 740M
    today = ORIGIN + dt.timedelta(days=39)
    forecast = forecast_crossing(series, threshold=THRESHOLD, today=today)
    assert (forecast.crossing_date, forecast.earliest, forecast.latest) == (today, today, today)


def test_it_counts_a_forecast_within_the_horizon_inclusive() -> None:
    today = dt.date(2025, 1, 1)
    forecast = Forecast("m", 30, 0.01, today + dt.timedelta(days=90), None, None)
    assert projected_within(forecast, today=today, days=90)
    assert not projected_within(forecast, today=today, days=89)
    assert not projected_within(Forecast("m", 30, 0.0, None, None, None), today=today, days=90)


# --- active_levels: hysteresis ------------------------------------------------------------------------------

LEVELS = (0.5, 0.75, 0.9)


def step(estimate: int, previously: set[str], *, lower: int | None = None, upper: int | None = None) -> set[str]:
    return active_levels(estimate=estimate, lower=estimate if lower is None else lower,
                         upper=estimate if upper is None else upper, threshold=1_000, levels=LEVELS,
                         previously_active=previously, hysteresis=0.02)


def test_it_keeps_a_level_active_while_the_count_oscillates_around_it() -> None:
    active: set[str] = set()
    history = []
    for count in (740, 750, 740, 760, 740, 760, 740, 731, 730):
        active = step(count, active)
        history.append("75%" in active)
    assert history == [False, True, True, True, True, True, True, True, True]
    assert active == {"50%", "75%"}


def test_it_drops_a_level_once_the_count_falls_below_the_level_minus_the_hysteresis() -> None:
    active = step(750, set())
    assert active == {"50%", "75%"}
    active = step(729, active)  # below 73%
    assert active == {"50%"}
    active = step(749, active)  # must reach 75% again to come back
    assert active == {"50%"}
    assert step(750, active) == {"50%", "75%"}


def test_it_turns_on_every_level_reached_at_once() -> None:
    assert step(900, set()) == {"50%", "75%", "90%"}
    assert step(899, set()) == {"50%", "75%"}
    assert step(499, set()) == set()


def test_it_raises_uncertain_from_the_interval() -> None:
    assert step(995, set(), lower=990, upper=1_001) == {"50%", "75%", "90%", "uncertain"}
    assert step(995, set(), lower=990, upper=1_000) == {"50%", "75%", "90%"}


def test_it_raises_over_and_not_uncertain_when_the_whole_interval_is_above() -> None:
    assert step(1_005, set(), lower=1_001, upper=1_010) == {"50%", "75%", "90%", "over"}


def test_it_keeps_over_within_the_hysteresis_then_falls_back_to_uncertain() -> None:
    active = step(1_005, set(), lower=1_001, upper=1_010)
    active = step(1_000, active, lower=990, upper=1_010)  # lower 990 > 980: still over
    assert "over" in active and "uncertain" not in active
    active = step(995, active, lower=980, upper=1_010)  # lower at 98%: over ends, the interval still straddles
    assert "over" not in active and "uncertain" in active
    active = step(985, active, lower=970, upper=995)  # upper 995 > 980: uncertain held by hysteresis
    assert "uncertain" in active
    active = step(975, active, lower=960, upper=980)
    assert "uncertain" not in active and "90%" in active


def test_it_orders_levels_for_escalation() -> None:
    names = ["over", "50%", "uncertain", "90%", "forecast", "75%"]
    assert sorted(names, key=level_rank) == ["50%", "75%", "90%", "forecast", "uncertain", "over"]


def test_a_declaration_completes_the_coverage_only_where_it_decides_the_status() -> None:
    """Section 2 counts "the monthly active users of the products or services made available by or for
    Licensee, or Licensee's affiliates". By hand: Chat metered at 100, Search registered but not metered, and
    a declared 50. Each figure alone is "below" (100 and 50 are under 50% of 700M): the tie keeps the metered
    figure, which counts Chat only, so the status stays "below (partial coverage)" with Search named. A
    declared 800M is greater than 700M ("over" beats the metered "below"): the declaration decides, and as the
    declarant's count of the whole group it makes the coverage complete."""
    gap = Coverage(JUNE_2024, metered=("Chat",), unmetered=("Search",), attested=False)
    smaller = classify_month([metered(100, 100, 100), declared(50)], threshold=THRESHOLD, rule="licence_accurate",
                             coverage=gap)
    assert (smaller.state, smaller.label, smaller.figure.source) == (BELOW, "below (partial coverage)", "metered")
    assert not smaller.coverage.complete and not smaller.coverage.declared
    assert "not metered in June 2024: Search" in smaller.coverage.gap()
    assert [state for _, state in smaller.considered] == [BELOW, BELOW]  # the declaration is still shown
    larger = classify_month([metered(100, 100, 100), declared(800_000_000)], threshold=THRESHOLD,
                            rule="licence_accurate", coverage=gap)
    assert (larger.state, larger.label, larger.figure.source) == (OVER, OVER, "declared")
    assert larger.coverage.declared and larger.coverage.complete and larger.coverage.gap() == ""
    # A declaration alone decides; an attested, fully metered figure needs none.
    alone = classify_month([declared(50)], threshold=THRESHOLD, rule="licence_accurate", coverage=gap)
    assert (alone.label, alone.coverage.complete) == (BELOW, True)
    attested = Coverage(JUNE_2024, metered=("Chat", "Search"), attested=True)
    clean = classify_month([metered(100, 100, 100), declared(50)], threshold=THRESHOLD, rule="licence_accurate",
                           coverage=attested)
    assert (clean.label, clean.coverage.complete, clean.coverage.declared) == (BELOW, True, False)

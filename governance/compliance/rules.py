"""The 700M test and the decisions that follow from it, as plain functions over plain values.

Read against the licence (section 2, "Additional Commercial Terms"): the licensee needs a licence from Meta if
"the monthly active users of the products or services made available by or for Licensee, or Licensee's
affiliates, is greater than 700 million monthly active users in the preceding calendar month" on the version's
release date. The figures here are estimates with an interval, so "greater than" has three answers: surely
(the whole interval is above), surely not (the whole interval is at or below), and "uncertain".
No ORM in this module: the services feed it values and store what it returns.
"""

from __future__ import annotations

import datetime as dt
import math
from dataclasses import dataclass, field, replace
from statistics import median

BELOW, APPROACHING, UNCERTAIN, OVER, GRANTED, UNKNOWN = "below", "approaching", "uncertain", "over", "granted", "unknown"
EXEMPT = "exempt"  # clause 1.b.ii: the licensee receives Llama only inside another licensee's integrated product


DISTINCT_PEOPLE, SUM_OF_PRODUCTS = "distinct_people", "sum_of_products"
BASIS_WORDS = {
    DISTINCT_PEOPLE: "distinct people across every product and affiliate",
    SUM_OF_PRODUCTS: "each product's monthly active users added up",
}


@dataclass(frozen=True)
class Figure:
    """A group's monthly active users for a month (or window), with its 95% interval and where it comes from.

    ``basis`` says how people were counted: once across all products and affiliates (``distinct_people``), or
    once per product and added up (``sum_of_products``); a declared figure is counted by its declarant.
    """

    estimate: int
    lower: int
    upper: int
    month: dt.date
    source: str  # "metered", "metered (partial month)" or "declared"
    basis: str = DISTINCT_PEOPLE
    detail: str = ""  # who declared it and on what evidence, for a declared figure
    excluded: int = 0  # stored sketches quarantined (unreadable) that a metered figure leaves out


def excluded_words(count: int) -> str:
    """What a figure that leaves out quarantined sketches says beside it."""
    return f"excludes {count:,} stored sketch{'' if count == 1 else 'es'} that could not be read"


@dataclass(frozen=True)
class Coverage:
    """Which of a group's products and services the metered figure of a month counts.

    Section 2 counts every product or service "made available by or for Licensee, or Licensee's affiliates",
    Llama-based or not. A metered figure is complete only when every product registered for the month was
    metered in it and an officer attested that the registered list is complete. A declared figure is the
    declarant's whole-group count, so it covers the group only where it is what decides the status
    (``declared``, set by ``coverage_deciding``): a declaration that decides nothing leaves the gap named.
    """

    month: dt.date
    metered: tuple[str, ...] = ()
    unmetered: tuple[str, ...] = ()
    attested: bool = False
    declared: bool = False  # a declared figure decides the month's status

    @property
    def complete(self) -> bool:
        return self.declared or (self.attested and not self.unmetered)

    def gap(self) -> str:
        """The gap in plain words ("" when complete)."""
        if self.complete:
            return ""
        parts = []
        if self.unmetered:
            parts.append(f"not metered in {self.month:%B %Y}: {', '.join(self.unmetered)}")
        if not self.attested:
            parts.append(f"no officer has attested that the registered products and services are all of the "
                         f"group's for {self.month:%B %Y}")
        return "; ".join(parts)


@dataclass(frozen=True)
class Status:
    state: str
    level: float | None
    figure: Figure | None
    threshold: int
    rule: str
    explanation: str
    considered: tuple[tuple[Figure, str], ...] = ()  # every figure of the month with the state it alone gives
    coverage: Coverage | None = None

    @property
    def partial_coverage(self) -> bool:
        return self.state == BELOW and self.coverage is not None and not self.coverage.complete

    @property
    def label(self) -> str:
        """What a person reads: "below (partial coverage)" is never a clean pass."""
        if self.state == EXEMPT:
            return "exempt (1.b.ii)"
        return f"{self.state} (partial coverage)" if self.partial_coverage else self.state


def exempt(*, threshold: int, rule: str, suppliers: list[str]) -> Status:
    """Clause 1.b.ii: "If you receive Llama Materials, or any derivative works thereof, from a Licensee as part of
    an integrated end user product, then Section 2 of this Agreement will not apply to you." Given when every
    organisation of the group recorded that it receives Llama only that way: no 700M verdict applies."""
    return Status(EXEMPT, None, None, threshold, rule,
                  "Exempt under clause 1.b.ii: every organisation of the group receives the Llama Materials only as "
                  f"part of an integrated end user product (from {', '.join(sorted(set(suppliers)))}), so Section 2's "
                  "700M clause does not apply to it.")


def classify(
    figure: Figure | None,
    *,
    threshold: int,
    levels: tuple[float, ...] = (0.5, 0.75, 0.9),
    granted: bool = False,
    rule: str,
) -> Status:
    """The status of one figure against the threshold.

    - granted: a Meta grant covers the group and version (whatever the figure says);
    - unknown: no figure (never "below" for lack of data);
    - over: the whole interval is greater than the threshold (lower > threshold);
    - uncertain: the interval contains a value above the threshold and one at or below it;
    - approaching: the estimate is at or above a level (a fraction of the threshold);
    - below: otherwise.
    Exactly the threshold is not "greater than": a declared 700,000,000 is approaching, not over.
    """
    if granted:
        return Status(GRANTED, None, figure, threshold, rule, "A Meta grant on file covers this group and version.")
    if figure is None:
        return Status(UNKNOWN, None, None, threshold, rule, "No metered or declared figure for the month tested.")
    where = f"{figure.source} MAU for {figure.month:%B %Y}"
    if figure.source == DECLARED and figure.lower == figure.upper:
        interval = f"the declared point figure {figure.estimate:,}"
    else:
        interval = f"its whole 95% interval ({figure.lower:,} to {figure.upper:,})"
    if figure.source == PARTIAL and figure.upper <= threshold:
        return Status(UNKNOWN, None, figure, threshold, rule,
                      f"Metering started during {figure.month:%B %Y}: the {figure.upper:,} users it saw cannot show "
                      f"the month was not over {threshold:,}. Declare the month's figure with its evidence.")
    if figure.lower > threshold:
        return Status(OVER, 1.0, figure, threshold, rule,
                      f"The {where} is greater than {threshold:,} across {interval}.")
    if figure.upper > threshold:
        return Status(UNCERTAIN, 1.0, figure, threshold, rule,
                      f"The 95% interval of the {where} ({figure.lower:,} to {figure.upper:,}) contains "
                      f"{threshold:,}: it may or may not be greater.")
    reached = [level for level in sorted(levels) if figure.estimate >= level * threshold]
    if reached:
        level = reached[-1]
        return Status(APPROACHING, level, figure, threshold, rule,
                      f"The {where} ({figure.estimate:,}) is at or above {level:.0%} of {threshold:,}.")
    return Status(BELOW, None, figure, threshold, rule,
                  f"The {where} ({figure.estimate:,}, at most {figure.upper:,}) is below every alert level.")


_SEVERITY = {BELOW: 0, APPROACHING: 1, UNKNOWN: 2, UNCERTAIN: 3, OVER: 4, GRANTED: -1, EXEMPT: -2}


def severity(status: Status) -> tuple[int, float]:
    """How bad a status is, to keep the worse of two readings (over > uncertain > unknown > approaching)."""
    return _SEVERITY[status.state], status.level or 0.0


PARTIAL = "metered (partial month)"
DECLARED = "declared"


def month_figures(*, metered: Figure | None, declared: list[Figure], metering_started: dt.date | None
                  ) -> list[Figure]:
    """Every figure available for a month: the metered one (labelled a partial month when metering started
    during it) and each declaration, none replacing another."""
    figures: list[Figure] = []
    if metered is not None:
        if metering_started is not None and metering_started <= metered.month:
            figures.append(metered)
        elif metered.estimate > 0:
            figures.append(replace(metered, source=PARTIAL))
    return figures + list(declared)


def classify_month(
    figures: list[Figure],
    *,
    threshold: int,
    levels: tuple[float, ...] = (0.5, 0.75, 0.9),
    granted: bool = False,
    rule: str,
    month: dt.date | None = None,
    coverage: Coverage | None = None,
) -> Status:
    """The status of a month from every figure for it: each is classified and the worst is kept.

    No figure hides another: a declaration a little above a metered estimate cannot turn the metered
    "uncertain" (its interval straddles the threshold) into "approaching", and a later declaration never
    lowers what an earlier one, or the meter, shows. A partial month that cannot show "not over" says nothing
    once another figure exists; alone it is "unknown". The explanation names the figure the status comes from
    and lists the others with what each alone would give.
    """
    if granted:
        status = classify(None, threshold=threshold, levels=levels, granted=True, rule=rule)
        return _with(status, coverage=coverage)
    if not figures:
        when = f" ({month:%B %Y})" if month else ""
        return Status(UNKNOWN, None, None, threshold, rule,
                      f"No metered or declared figure for the month tested{when}: declare it with its evidence.",
                      coverage=coverage)
    classified = [(figure, classify(figure, threshold=threshold, levels=levels, rule=rule)) for figure in figures]
    informative = [(f, s) for f, s in classified if not (f.source == PARTIAL and s.state == UNKNOWN)]
    # On a tie the metered figure is kept: a declaration that only matches it decides nothing (coverage_deciding).
    _, worst = max(informative or classified, key=lambda pair: (severity(pair[1]), pair[0].source != DECLARED))
    coverage = coverage_deciding(coverage, kept=worst.figure)
    considered = tuple((f, s.state) for f, s in classified)
    others = [f"{_figure_words(f)}: {state}" for f, state in considered if f is not worst.figure]
    explanation = worst.explanation
    if worst.figure is not None and worst.figure.excluded:
        explanation += (f" This figure {excluded_words(worst.figure.excluded)} (quarantined; each is named in the "
                        "evidence report).")
    if others:
        explanation += " Every figure for the month counts and the worst is kept; the others: " + "; ".join(others) + "."
    return _with(worst, explanation=explanation, considered=considered, coverage=coverage)


def coverage_deciding(coverage: Coverage | None, *, kept: Figure | None) -> Coverage | None:
    """The coverage of the figure that decides a month's status.

    Section 2 counts "the monthly active users of the products or services made available by or for Licensee,
    or Licensee's affiliates": a metered figure covers only the products metered. A declared figure is the
    declarant's count of the whole group, so it makes the coverage complete when it is the figure kept (strictly
    the worst of the month: on a tie the metered figure is kept and its gap stays named). Otherwise the metered
    figure decides, and its coverage (metered, unmetered, attested) is the status's: a smaller declaration
    never turns a metered "below (partial coverage)" into a clean "below".
    """
    if coverage is None:
        return None
    return replace(coverage, declared=kept is not None and kept.source == DECLARED)


def _figure_words(figure: Figure) -> str:
    if figure.lower == figure.upper:
        words = f"{figure.source} {figure.estimate:,}"
    else:
        words = f"{figure.source} {figure.estimate:,} ({figure.lower:,} to {figure.upper:,})"
    if figure.excluded:
        words += f", which {excluded_words(figure.excluded)}"
    return f"{words}, {figure.detail}" if figure.detail else words


def _with(status: Status, **changes: object) -> Status:
    return replace(status, **changes)  # type: ignore[arg-type]


def worst_of(statuses: list[tuple[Status, str]]) -> Status:
    """The worst of several readings of one test (e.g. the month of each base model's release date), with the
    note of the reading it came from; the others are named so counsel sees what was compared."""
    status, note = max(statuses, key=lambda pair: severity(pair[0]))
    if len(statuses) == 1:
        return status if not note else _with(status, explanation=f"{status.explanation} {note}")
    compared = "; ".join(f"{other_note or 'the version date'}: {other.state}" for other, other_note in statuses)
    return _with(status, explanation=f"{status.explanation} {note} Readings compared, the worst kept: {compared}.")


def sum_of_products(figures: list[Figure], *, month: dt.date) -> Figure:
    """Each product's own figure added up: the most conservative reading of "monthly active users of the products
    or services", where one person using two products counts twice. The interval adds the bounds."""
    return Figure(sum(f.estimate for f in figures), sum(f.lower for f in figures), sum(f.upper for f in figures),
                  month, "metered", SUM_OF_PRODUCTS, excluded=sum(f.excluded for f in figures))


@dataclass(frozen=True)
class Decision:
    allowed: bool
    reason: str  # "ok", "over_threshold", "uncertain_threshold", "licence_not_accepted", "aup_not_accepted",
    #             "organisation_suspended", "grace_period", "monitor_only", "unknown"
    detail: str


def decide_access(
    *,
    status: Status,
    mode: str,
    grace_days: int,
    crossed_on: dt.date | None,
    today: dt.date,
    licence_accepted: bool,
    aup_accepted: bool,
    organisation_active: bool = True,
    on_unknown: str = "allow",
) -> Decision:
    """May the group use this version now? ``status`` is the licence-accurate one, the test the licence sets.

    Blocks (in ``enforce``, and in ``grace`` once ``grace_days`` have passed since ``crossed_on``) when the
    group is over or uncertain without a grant; always blocks a suspended organisation or an unaccepted
    licence or AUP; ``monitor`` never blocks for the threshold, only alerts. A month with no figure
    ("unknown") blocks only when the policy says so (``on_unknown="block"``, not in ``monitor``): the licence
    does not say what to do without a figure, so the reading is the group's to choose.
    """
    if not organisation_active:
        return Decision(False, "organisation_suspended", "The organisation is suspended.")
    if not licence_accepted:
        return Decision(False, "licence_not_accepted", "The licence of this version has not been accepted.")
    if not aup_accepted:
        return Decision(False, "aup_not_accepted", "The Acceptable Use Policy of this version has not been accepted.")
    if status.state == EXEMPT:
        return Decision(True, "exempt", status.explanation)
    if status.state not in (OVER, UNCERTAIN):
        if status.state == UNKNOWN:
            if on_unknown == "block" and mode != "monitor":
                return Decision(False, "unknown_figure", f"{status.explanation} The group's policy blocks a version "
                                                         "whose tested month has no figure (on_unknown: block).")
            return Decision(True, "unknown", f"Allowed (on_unknown: allow); {status.explanation}")
        if status.partial_coverage and status.coverage is not None:
            return Decision(True, "ok", f"{status.explanation} Below, with partial coverage: {status.coverage.gap()}.")
        return Decision(True, "ok", status.explanation)
    reason = "over_threshold" if status.state == OVER else "uncertain_threshold"
    detail = f"{status.explanation} No Meta grant covers this version; the licence requires one."
    if mode == "monitor":
        return Decision(True, "monitor_only", f"Allowed by the monitor policy. {detail}")
    if mode == "grace":
        started = crossed_on or today
        ends = started + dt.timedelta(days=grace_days)
        if today < ends:
            return Decision(True, "grace_period", f"Allowed until {ends.isoformat()} (grace period). {detail}")
    return Decision(False, reason, detail)


# --- forecast -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Forecast:
    method: str
    points: int
    daily_growth: float | None  # fraction per day, e.g. 0.01 = 1%/day
    crossing_date: dt.date | None
    earliest: dt.date | None
    latest: dt.date | None
    notes: list[str] = field(default_factory=list)


FORECAST_METHOD = (
    "Theil-Sen fit of log(rolling-30-day MAU) against time over the last 90 days (the median of all pairwise "
    "slopes: robust to outliers and to a few bad days); 95% interval from Sen's confidence bounds on the slope"
)


def forecast_crossing(series: list[tuple[dt.date, int]], *, threshold: int, today: dt.date,
                      max_days: int = 3650) -> Forecast:
    """When the series is projected to exceed ``threshold``, with an earliest and latest date.

    ``series`` is (day, rolling-30-day MAU) over the last 90 days. Returns no date when there are fewer than
    14 usable days, when growth is not positive, or when the crossing lies beyond ``max_days``.
    """
    points = [(day, value) for day, value in series if value > 0]
    if len(points) < 14:
        return Forecast(FORECAST_METHOD, len(points), None, None, None, None, ["fewer than 14 days with users"])
    origin = points[0][0]
    xs = [(day - origin).days for day, _ in points]
    ys = [math.log(value) for _, value in points]
    slopes = sorted(
        (ys[j] - ys[i]) / (xs[j] - xs[i]) for i in range(len(xs)) for j in range(i + 1, len(xs)) if xs[j] != xs[i]
    )
    slope = median(slopes)
    low_slope, high_slope = _sen_bounds(slopes, len(xs))
    latest_value = points[-1][1]
    if latest_value > threshold:
        return Forecast(FORECAST_METHOD, len(points), math.expm1(slope), today, today, today,
                        ["already above the threshold"])

    def crossing(b: float) -> dt.date | None:
        if b <= 0:
            return None
        a = median(y - b * x for x, y in zip(xs, ys, strict=True))
        t = (math.log(threshold) - a) / b
        if t - (today - origin).days > max_days:  # beyond the horizon: no date (and no date overflow)
            return None
        day = origin + dt.timedelta(days=math.ceil(max(t, 0)))
        if day < today:
            day = today
        return day if (day - today).days <= max_days else None

    central = crossing(slope)
    return Forecast(
        FORECAST_METHOD, len(points), math.expm1(slope), central,
        crossing(high_slope), crossing(low_slope) if low_slope > 0 else None,
        [] if central else ["not growing towards the threshold within the horizon"],
    )


def _sen_bounds(sorted_slopes: list[float], n: int, z: float = 1.96) -> tuple[float, float]:
    """Sen's (1968) distribution-free 95% confidence bounds for the Theil-Sen slope."""
    total = len(sorted_slopes)
    c = z * math.sqrt(n * (n - 1) * (2 * n + 5) / 18)
    lower_rank = max(0, int(math.floor((total - c) / 2)))
    upper_rank = min(total - 1, int(math.ceil((total + c) / 2)))
    return sorted_slopes[lower_rank], sorted_slopes[upper_rank]


def projected_within(forecast: Forecast, *, today: dt.date, days: int) -> bool:
    """The forecast alert level: the central estimate of the crossing date falls within ``days`` of today."""
    return forecast.crossing_date is not None and (forecast.crossing_date - today).days <= days


# --- alert levels with hysteresis ---------------------------------------------------------------------------


def level_name(level: float) -> str:
    return f"{round(level * 100)}%"


def active_levels(*, estimate: int, lower: int, upper: int, threshold: int, levels: tuple[float, ...],
                  previously_active: set[str], hysteresis: float) -> set[str]:
    """Which threshold levels are active now, remembering which were active before.

    A level becomes active when the estimate reaches it and stays active until the estimate falls below it by
    ``hysteresis`` (a fraction of the threshold), so a count oscillating around a level neither re-announces
    it nor sends a recovery at every evaluation. "uncertain" and "over" follow the interval rule of ``classify``.
    """
    active: set[str] = set()
    for level in levels:
        name = level_name(level)
        on_at = level * threshold
        off_below = (level - hysteresis) * threshold
        if estimate >= on_at or (name in previously_active and estimate >= off_below):
            active.add(name)
    if lower > threshold:
        active.add("over")
    elif "over" in previously_active and lower > threshold * (1 - hysteresis):
        active.add("over")
    if upper > threshold and "over" not in active:
        active.add("uncertain")
    elif "uncertain" in previously_active and upper > threshold * (1 - hysteresis) and "over" not in active:
        active.add("uncertain")
    return active


def level_rank(name: str) -> float:
    """Order levels for escalation: threshold fractions by value, then uncertain, then over."""
    if name.endswith("%"):
        return float(name[:-1]) / 100
    return {"forecast": 0.95, "uncertain": 2.0, "over": 3.0}.get(name, 0.0)

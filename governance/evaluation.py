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
from dataclasses import dataclass, field
from statistics import median

BELOW, APPROACHING, UNCERTAIN, OVER, GRANTED, UNKNOWN = "below", "approaching", "uncertain", "over", "granted", "unknown"


@dataclass(frozen=True)
class Figure:
    """A group's distinct users for a month (or window), with its 95% interval and where it comes from."""

    estimate: int
    lower: int
    upper: int
    month: dt.date
    source: str  # "metered" or "declared"


@dataclass(frozen=True)
class Status:
    state: str
    level: float | None
    figure: Figure | None
    threshold: int
    rule: str
    explanation: str


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
    if figure.source == PARTIAL and figure.upper <= threshold:
        return Status(UNKNOWN, None, figure, threshold, rule,
                      f"Metering started during {figure.month:%B %Y}: the {figure.upper:,} users it saw cannot show "
                      f"the month was not over {threshold:,}. Declare the month's figure with its evidence.")
    if figure.lower > threshold:
        return Status(OVER, 1.0, figure, threshold, rule,
                      f"The {where} is greater than {threshold:,} across its whole 95% interval "
                      f"({figure.lower:,} to {figure.upper:,}).")
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


_SEVERITY = {BELOW: 0, APPROACHING: 1, UNKNOWN: 2, UNCERTAIN: 3, OVER: 4, GRANTED: -1}


def severity(status: Status) -> tuple[int, float]:
    """How bad a status is, to keep the worse of two readings (over > uncertain > unknown > approaching)."""
    return _SEVERITY[status.state], status.level or 0.0


def month_start(day: dt.date) -> dt.date:
    return day.replace(day=1)


def previous_month(day: dt.date) -> dt.date:
    return (month_start(day) - dt.timedelta(days=1)).replace(day=1)


PARTIAL = "metered (partial month)"


def choose_figure(*, metered: Figure | None, declared: Figure | None, metering_started: dt.date | None) -> Figure | None:
    """The figure for a month, read conservatively.

    - Metering covered the whole month: the metered figure, unless the organisation declared a higher one
      (its affiliates' products may not all have been metered yet).
    - Metering started during the month: the declared figure or the partial metered one, whichever is
      higher; a partial month alone is labelled as such (it can show the threshold was passed, never that
      it was not: see ``classify``).
    - Neither: no figure.
    """
    if metered is not None and metering_started is not None and metering_started <= metered.month:
        if declared is not None and declared.estimate > metered.estimate:
            return declared
        return metered
    partial = None
    if metered is not None and metered.estimate > 0:
        partial = Figure(metered.estimate, metered.lower, metered.upper, metered.month, PARTIAL)
    candidates = [f for f in (declared, partial) if f is not None]
    return max(candidates, key=lambda f: f.estimate) if candidates else None


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
) -> Decision:
    """May the group use this version now? ``status`` is the licence-accurate one, the test the licence sets.

    Blocks (in ``enforce``, and in ``grace`` once ``grace_days`` have passed since ``crossed_on``) when the
    group is over or uncertain without a grant; always blocks a suspended organisation or an unaccepted
    licence or AUP; ``monitor`` never blocks for the threshold, only alerts.
    """
    if not organisation_active:
        return Decision(False, "organisation_suspended", "The organisation is suspended.")
    if not licence_accepted:
        return Decision(False, "licence_not_accepted", "The licence of this version has not been accepted.")
    if not aup_accepted:
        return Decision(False, "aup_not_accepted", "The Acceptable Use Policy of this version has not been accepted.")
    if status.state not in (OVER, UNCERTAIN):
        if status.state == UNKNOWN:
            return Decision(True, "unknown", "Allowed; the licence-accurate test has no figure yet.")
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

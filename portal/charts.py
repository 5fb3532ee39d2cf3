"""Charts as server-rendered SVG: pictures a person reads at a glance, with no script and no network.

Plain functions over plain values (no ORM): each returns an SVG string whose every text is escaped, with a
title and a description for screen readers; the pages put the same figures in a table beside the chart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape

from licensing.months import months_between

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 16, 36


@dataclass(frozen=True)
class Point:
    """A figure for a day or month; ``estimate`` None is a period without data (a gap, never a zero)."""

    day: dt.date
    estimate: int | None
    lower: int | None
    upper: int | None


def _known(figure: int | None) -> int:
    """A figure of a point inside a run with data (``_segments``), where it is never None."""
    assert figure is not None
    return figure


def _segments(points: list[Point]) -> list[list[Point]]:
    """Runs of consecutive points with data: a line or band is drawn per run, so a gap stays a gap."""
    runs: list[list[Point]] = [[]]
    for p in points:
        if p.estimate is None:
            if runs[-1]:
                runs.append([])
        else:
            runs[-1].append(p)
    return [run for run in runs if run]


# --- labels that never overlap ------------------------------------------------------------------------------

CHAR_WIDTH = 0.62  # of the font size: a conservative average advance for the UI's sans-serif at 11-12px
LABEL_STEP = 4.0


@dataclass
class Label:
    """A text's anchor point and size; ``box`` is the rectangle it covers (baseline at ``y``)."""

    x: float
    y: float
    text: str
    css: str
    anchor: str = "start"
    size: float = 12.0

    def box(self) -> tuple[float, float, float, float]:
        width = len(self.text) * self.size * CHAR_WIDTH
        left = {"start": self.x, "middle": self.x - width / 2, "end": self.x - width}[self.anchor]
        return left, self.y - self.size, left + width, self.y + self.size * 0.25

    def overlaps(self, other: Label) -> bool:
        a, b = self.box(), other.box()
        return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def place_labels(labels: list[Label], *, top: float = TOP, bottom: float = HEIGHT - BOTTOM) -> list[Label]:
    """Nudge labels up or down, in the order given (first placed stays put), until none overlaps another.

    Each label tries its own position, then LABEL_STEP px further away alternately above and below, keeping
    inside the plot; a label that finds no free place within the plot is left out rather than drawn over another.
    """
    placed: list[Label] = []
    for label in labels:
        for i in range(0, int((bottom - top) / LABEL_STEP) * 2 + 1):
            offset = LABEL_STEP * ((i + 1) // 2) * (-1 if i % 2 else 1)
            candidate = Label(label.x, label.y + offset, label.text, label.css, label.anchor, label.size)
            inside = top + candidate.size <= candidate.y <= bottom
            if inside and not any(candidate.overlaps(other) for other in placed):
                placed.append(candidate)
                break
    return placed


def _label_svg(label: Label) -> str:
    return (f'<text class="{label.css}" x="{label.x:.1f}" y="{label.y:.1f}" '
            f'text-anchor="{label.anchor}">{escape(label.text)}</text>')


def compact(n: float) -> str:
    """700000000 -> "700M", 1500 -> "1.5k": axis labels that fit."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.3g}"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1
    power: int = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * power != int(step * power):
            continue
        if step * power >= value:
            return step * power
    return 10 * power


class _Frame:
    def __init__(self, start: dt.date, end: dt.date, ymax: float) -> None:
        self.start, self.end = start, max(end, start + dt.timedelta(days=1))
        # Four equal steps, each a nice whole number of people (at least 1): ticks 0, 1, 2, 3, 4 or 0, 50, 100,
        # 150, 200, never "0, 0, 1, 2, 2" or "62.5".
        self.ymax = max(_nice_ceiling(ymax / 4), 1) * 4
        self.labels: list[Label] = []
        self.span = (self.end - self.start).days

    def x(self, day: dt.date) -> float:
        return LEFT + (WIDTH - LEFT - RIGHT) * (day - self.start).days / self.span

    def y(self, value: float) -> float:
        return TOP + (HEIGHT - TOP - BOTTOM) * (1 - min(value, self.ymax * 1.02) / self.ymax)

    def axes(self, ticks: list[tuple[dt.date, str]]) -> list[str]:
        parts = []
        for i in range(5):
            value = self.ymax * i / 4
            y = self.y(value)
            parts.append(f'<line class="grid" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>')
            parts.append(f'<text class="tick" x="{LEFT - 6}" y="{y + 4:.1f}" text-anchor="end">{compact(value)}</text>')
        for day, label in ticks:
            x = self.x(day)
            parts.append(f'<text class="tick" x="{x:.1f}" y="{HEIGHT - BOTTOM + 16}" text-anchor="middle">'
                         f'{escape(label)}</text>')
        parts.append(f'<line class="axis" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{self.y(0):.1f}" y2="{self.y(0):.1f}"/>')
        return parts

    def hline(self, value: float, css: str, label: str, *, label_left: bool = False) -> list[str]:
        """The line; its label is queued for ``place_labels`` (drawn last, so nothing covers it)."""
        if value > self.ymax * 1.02:
            return []
        y = self.y(value)
        x, anchor = (LEFT + 4, "start") if label_left else (WIDTH - RIGHT - 4, "end")
        self.labels.append(Label(x, y - 4, label, f"{css}-label", anchor, 12.0 if css == "threshold" else 11.0))
        return [f'<line class="{css}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>']

    def placed_labels(self) -> list[str]:
        return [_label_svg(label) for label in place_labels(self.labels)]

    def band(self, points: list[Point], css: str) -> list[str]:
        if len(_segments(points)) > 1 or any(p.estimate is None for p in points):
            return [part for run in _segments(points) for part in self.band(run, css)]
        if not points:
            return []
        upper = [f"{self.x(p.day):.1f},{self.y(_known(p.upper)):.1f}" for p in points]
        lower = [f"{self.x(p.day):.1f},{self.y(_known(p.lower)):.1f}" for p in reversed(points)]
        if len(points) == 1:  # one month: a short vertical bar is the interval
            p = points[0]
            x = self.x(p.day)
            top, bottom = self.y(_known(p.upper)), self.y(_known(p.lower))
            return [f'<rect class="{css}" x="{x - 4:.1f}" y="{top:.1f}" width="8" '
                    f'height="{max(bottom - top, 1):.1f}"/>']
        return [f'<polygon class="{css}" points="{" ".join(upper + lower)}"/>']

    def line(self, points: list[Point], css: str, label: str, *, dots: bool) -> list[str]:
        if len(_segments(points)) > 1 or any(p.estimate is None for p in points):
            return [part for run in _segments(points) for part in self.line(run, css, label, dots=dots)]
        if not points:
            return []
        path = " ".join(f"{self.x(p.day):.1f},{self.y(_known(p.estimate)):.1f}" for p in points)
        parts = [f'<polyline class="{css}" points="{path}"/>'] if len(points) > 1 else []
        if dots:
            for p in points:
                parts.append(
                    f'<circle class="{css}-dot" cx="{self.x(p.day):.1f}" cy="{self.y(_known(p.estimate)):.1f}" r="3.5">'
                    f'<title>{escape(label)} {p.day:%b %Y}: {p.estimate:,} (95%: {p.lower:,} to {p.upper:,})</title>'
                    f'</circle>')
        return parts


def _empty(title: str, message: str, css_class: str) -> str:
    """No axis for no data: a framed message saying so."""
    parts = [f'<rect class="empty-frame" x="{LEFT}" y="{TOP}" width="{WIDTH - LEFT - RIGHT}" '
             f'height="{HEIGHT - TOP - BOTTOM}"/>',
             f'<text class="empty-message" x="{(LEFT + WIDTH - RIGHT) / 2:.1f}" y="{HEIGHT / 2:.1f}" '
             f'text-anchor="middle">{escape(message)}</text>']
    return _svg(parts, title, message, css_class)


def _svg(parts: list[str], title: str, description: str, css_class: str) -> str:
    ident = f"chart-{abs(hash((title, description))) % 10**8}"
    return (f'<svg class="chart {css_class}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMidYMid meet" '
            f'xmlns="http://www.w3.org/2000/svg"><title id="{ident}-t">{escape(title)}</title>'
            f'<desc id="{ident}-d">{escape(description)}</desc>{"".join(parts)}</svg>')


def _month_ticks(start: dt.date, end: dt.date, every: int = 1) -> list[tuple[dt.date, str]]:
    return [(month, month.strftime("%b %y")) for i, month in enumerate(months_between(start, end)) if i % every == 0]


def monthly_mau_chart(*, months: list[Point], threshold: int, levels: list[float],
                      crossing: dt.date | None = None, earliest: dt.date | None = None,
                      latest: dt.date | None = None, horizon_days: int = 730) -> str:
    """Monthly MAU with its 95% band, the threshold, the alert levels and the forecast to the crossing date.

    ``months`` are dated on the first of each month; a forecast crossing further than ``horizon_days``
    after the last month is named in the description but not drawn (it would squash the months).
    """
    data = [p for p in months if p.estimate is not None]
    if not data:
        return _empty("Monthly active users", "No users metered or declared in these months yet.", "mau-chart")
    start, end = months[0].day, months[-1].day
    draw_forecast = crossing is not None and (crossing - end).days <= horizon_days
    if draw_forecast and crossing is not None:
        end = max(end, latest or crossing, crossing)
    top = max([threshold] + [p.upper or 0 for p in data])
    frame = _Frame(start, end + dt.timedelta(days=15), top * 1.08)
    every = max(1, len(_month_ticks(start, end)) // 8)
    parts = frame.axes(_month_ticks(start, end, every))
    for level in sorted(levels):
        parts += frame.hline(level * threshold, "level", f"{level:.0%}", label_left=True)
    parts += frame.hline(threshold, "threshold", f"{compact(threshold)} limit")
    if draw_forecast and crossing is not None:
        last = data[-1]
        if earliest and latest:
            x1, x2 = frame.x(earliest), frame.x(latest)
            y = frame.y(threshold)
            parts.append(f'<rect class="forecast-span" x="{x1:.1f}" y="{y - 6:.1f}" width="{max(x2 - x1, 2):.1f}" '
                         f'height="12"><title>Forecast crossing between {earliest} and {latest}</title></rect>')
        parts.append(f'<line class="forecast" x1="{frame.x(last.day):.1f}" y1="{frame.y(_known(last.estimate)):.1f}" '
                     f'x2="{frame.x(crossing):.1f}" y2="{frame.y(threshold):.1f}"/>')
        crossing_x = frame.x(crossing)
        anchor = "end" if crossing_x > LEFT + 120 else "start"
        frame.labels.insert(0, Label(crossing_x, frame.y(threshold) + 18, f"crossing {crossing}", "forecast-label",
                                     anchor, 12.0))
    parts += frame.band(months, "band")
    parts += frame.line(months, "mau", "MAU", dots=True)
    parts += frame.placed_labels()
    latest_point = data[-1]
    description = (f"Monthly active users from {start:%B %Y} to {months[-1].day:%B %Y}; latest, {latest_point.day:%B %Y}: "
                   f"{latest_point.estimate:,} (95% interval {latest_point.lower:,} to {latest_point.upper:,}) "
                   f"against a limit of {threshold:,}.")
    if crossing:
        description += f" Forecast to cross the limit on {crossing}."
    return _svg(parts, "Monthly active users against the limit", description, "mau-chart")


def rolling_chart(*, days: list[Point], daily: list[Point], threshold: int) -> str:
    """The rolling-30-day distinct users per day with their band, DAU as bars; the limit only when in reach."""
    if not any(p.estimate for p in days) and not any(p.estimate for p in daily):
        return _empty("Rolling 30-day users", "No users metered in these days yet.", "rolling-chart")
    start, end = days[0].day, days[-1].day
    top = max(p.upper or 0 for p in days) or 1
    show_threshold = threshold <= top * 2
    frame = _Frame(start, end, max(top, threshold if show_threshold else 0) * 1.1)
    ticks = [(d.day, d.day.strftime("%d %b")) for d in days[:: max(1, len(days) // 6)]]
    parts = frame.axes(ticks)
    bar = max((WIDTH - LEFT - RIGHT) / max(len(daily), 1) - 1, 1)
    for p in daily:
        if p.estimate:
            y = frame.y(p.estimate)
            parts.append(f'<rect class="dau" x="{frame.x(p.day) - bar / 2:.1f}" y="{y:.1f}" width="{bar:.1f}" '
                         f'height="{frame.y(0) - y:.1f}"><title>{p.day}: {p.estimate:,} daily users</title></rect>')
    if show_threshold:
        parts += frame.hline(threshold, "threshold", f"{compact(threshold)} limit")
    parts += frame.band(days, "band")
    parts += frame.line(days, "rolling", "Rolling 30 days", dots=False)
    parts += frame.placed_labels()
    last = days[-1]
    description = (f"Distinct users over the 30 days ending each day from {start} to {end}; on {end}: "
                   f"{last.estimate:,} (95% interval {last.lower:,} to {last.upper:,}). Bars: daily users.")
    return _svg(parts, "Rolling 30-day users, daily", description, "rolling-chart")


def meter(*, used: int, total: int, label: str) -> str:
    """A small horizontal bar: GPUs in use of the pool, or MAU of the limit."""
    fraction = 0 if total <= 0 else min(used / total, 1)
    return (f'<svg class="meter" viewBox="0 0 100 8" preserveAspectRatio="none" role="img" '
            f'aria-label="{escape(label)}" xmlns="http://www.w3.org/2000/svg">'
            f'<rect class="meter-bg" x="0" y="0" width="100" height="8" rx="2"/>'
            f'<rect class="meter-fill" x="0" y="0" width="{fraction * 100:.2f}" height="8" rx="2"/></svg>')

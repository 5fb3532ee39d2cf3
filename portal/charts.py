"""Charts as server-rendered SVG: pictures a person reads at a glance, with no script and no network.

Plain functions over plain values (no ORM): each returns an SVG string whose every text is escaped, with a
title and a description for screen readers; the pages put the same figures in a table beside the chart.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from html import escape

WIDTH, HEIGHT = 720, 300
LEFT, RIGHT, TOP, BOTTOM = 64, 20, 16, 36


@dataclass(frozen=True)
class Point:
    day: dt.date
    estimate: int
    lower: int
    upper: int


def compact(n: float) -> str:
    """700000000 -> "700M", 1500 -> "1.5k": axis labels that fit."""
    for size, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= size:
            return f"{n / size:.3g}{suffix}"
    return f"{n:.0f}"


def _nice_ceiling(value: float) -> float:
    """The smallest 1, 2 or 5 times a power of ten at or above ``value``."""
    if value <= 0:
        return 1
    power = 10 ** (len(str(int(value))) - 1)
    for step in (1, 2, 2.5, 5, 10):
        if step * power >= value:
            return step * power
    return 10 * power


class _Frame:
    def __init__(self, start: dt.date, end: dt.date, ymax: float) -> None:
        self.start, self.end = start, max(end, start + dt.timedelta(days=1))
        self.ymax = _nice_ceiling(ymax)
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
        if value > self.ymax * 1.02:
            return []
        y = self.y(value)
        x, anchor = (LEFT + 4, "start") if label_left else (WIDTH - RIGHT - 4, "end")
        return [f'<line class="{css}" x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y:.1f}" y2="{y:.1f}"/>',
                f'<text class="{css}-label" x="{x}" y="{y - 4:.1f}" text-anchor="{anchor}">{escape(label)}</text>']

    def band(self, points: list[Point], css: str) -> list[str]:
        if not points:
            return []
        upper = [f"{self.x(p.day):.1f},{self.y(p.upper):.1f}" for p in points]
        lower = [f"{self.x(p.day):.1f},{self.y(p.lower):.1f}" for p in reversed(points)]
        if len(points) == 1:  # one month: a short vertical bar is the interval
            p = points[0]
            x = self.x(p.day)
            return [f'<rect class="{css}" x="{x - 4:.1f}" y="{self.y(p.upper):.1f}" width="8" '
                    f'height="{max(self.y(p.lower) - self.y(p.upper), 1):.1f}"/>']
        return [f'<polygon class="{css}" points="{" ".join(upper + lower)}"/>']

    def line(self, points: list[Point], css: str, label: str, *, dots: bool) -> list[str]:
        if not points:
            return []
        path = " ".join(f"{self.x(p.day):.1f},{self.y(p.estimate):.1f}" for p in points)
        parts = [f'<polyline class="{css}" points="{path}"/>']
        if dots:
            for p in points:
                parts.append(
                    f'<circle class="{css}-dot" cx="{self.x(p.day):.1f}" cy="{self.y(p.estimate):.1f}" r="3.5">'
                    f'<title>{escape(label)} {p.day:%b %Y}: {p.estimate:,} (95%: {p.lower:,} to {p.upper:,})</title>'
                    f'</circle>')
        return parts


def _svg(parts: list[str], title: str, description: str, css_class: str) -> str:
    ident = f"chart-{abs(hash((title, description))) % 10**8}"
    return (f'<svg class="chart {css_class}" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
            f'aria-labelledby="{ident}-t {ident}-d" preserveAspectRatio="xMidYMid meet" '
            f'xmlns="http://www.w3.org/2000/svg"><title id="{ident}-t">{escape(title)}</title>'
            f'<desc id="{ident}-d">{escape(description)}</desc>{"".join(parts)}</svg>')


def _month_ticks(start: dt.date, end: dt.date, every: int = 1) -> list[tuple[dt.date, str]]:
    ticks, month, i = [], start.replace(day=1), 0
    while month <= end:
        if i % every == 0:
            ticks.append((month, month.strftime("%b %y")))
        month = (month + dt.timedelta(days=32)).replace(day=1)
        i += 1
    return ticks


def monthly_mau_chart(*, months: list[Point], threshold: int, levels: list[float],
                      crossing: dt.date | None = None, earliest: dt.date | None = None,
                      latest: dt.date | None = None, horizon_days: int = 730) -> str:
    """Monthly MAU with its 95% band, the threshold, the alert levels and the forecast to the crossing date.

    ``months`` are dated on the first of each month; a forecast crossing further than ``horizon_days``
    after the last month is named in the description but not drawn (it would squash the months).
    """
    if not months:
        return _svg([], "Monthly active users", "No months to show.", "mau-chart")
    start, end = months[0].day, months[-1].day
    draw_forecast = crossing is not None and (crossing - end).days <= horizon_days
    if draw_forecast:
        end = max(end, latest or crossing, crossing)  # type: ignore[type-var]
    top = max([threshold] + [p.upper for p in months])
    frame = _Frame(start, end + dt.timedelta(days=15), top * 1.08)
    every = max(1, len(_month_ticks(start, end)) // 8)
    parts = frame.axes(_month_ticks(start, end, every))
    for level in sorted(levels):
        parts += frame.hline(level * threshold, "level", f"{level:.0%}", label_left=True)
    parts += frame.hline(threshold, "threshold", f"{compact(threshold)} limit")
    if draw_forecast:
        last = months[-1]
        if earliest and latest:
            x1, x2 = frame.x(earliest), frame.x(latest)
            y = frame.y(threshold)
            parts.append(f'<rect class="forecast-span" x="{x1:.1f}" y="{y - 6:.1f}" width="{max(x2 - x1, 2):.1f}" '
                         f'height="12"><title>Forecast crossing between {earliest} and {latest}</title></rect>')
        parts.append(f'<line class="forecast" x1="{frame.x(last.day):.1f}" y1="{frame.y(last.estimate):.1f}" '
                     f'x2="{frame.x(crossing):.1f}" y2="{frame.y(threshold):.1f}"/>')  # type: ignore[arg-type]
        parts.append(f'<text class="forecast-label" x="{frame.x(crossing):.1f}" '  # type: ignore[arg-type]
                     f'y="{frame.y(threshold) + 18:.1f}" text-anchor="end">crossing {crossing}</text>')
    parts += frame.band(months, "band")
    parts += frame.line(months, "mau", "MAU", dots=True)
    latest_point = months[-1]
    description = (f"Monthly active users from {start:%B %Y} to {months[-1].day:%B %Y}; latest "
                   f"{latest_point.estimate:,} (95% interval {latest_point.lower:,} to {latest_point.upper:,}) "
                   f"against a limit of {threshold:,}.")
    if crossing:
        description += f" Forecast to cross the limit on {crossing}."
    return _svg(parts, "Monthly active users against the limit", description, "mau-chart")


def rolling_chart(*, days: list[Point], daily: list[Point], threshold: int) -> str:
    """The rolling-30-day distinct users per day with their band, DAU as bars; the limit only when in reach."""
    if not days:
        return _svg([], "Rolling 30-day users", "No days to show.", "rolling-chart")
    start, end = days[0].day, days[-1].day
    top = max(p.upper for p in days) or 1
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

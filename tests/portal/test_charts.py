"""The SVG charts as plain functions: what they draw, where, and that no text escapes unescaped."""

from __future__ import annotations

import datetime as dt
import re
import xml.etree.ElementTree as ET

from portal.charts import Point, compact, meter, monthly_mau_chart, rolling_chart

SVG = "{http://www.w3.org/2000/svg}"


def _months(values: list[int]) -> list[Point]:
    first = dt.date(2026, 1, 1)
    return [Point((first + dt.timedelta(days=31 * i)).replace(day=1), v, int(v * 0.99), int(v * 1.01))
            for i, v in enumerate(values)]


def test_it_draws_the_limit_the_levels_the_band_and_the_forecast() -> None:
    svg = monthly_mau_chart(months=_months([100_000_000, 200_000_000, 300_000_000]), threshold=700_000_000,
                            levels=[0.5, 0.75, 0.9], crossing=dt.date(2026, 9, 1), earliest=dt.date(2026, 8, 1),
                            latest=dt.date(2026, 10, 1))
    root = ET.fromstring(svg)  # well-formed XML
    assert root.get("role") == "img"
    classes = [element.get("class") for element in root.iter()]
    assert classes.count("threshold") == 1 and classes.count("level") == 3
    assert classes.count("band") == 1 and classes.count("mau-dot") == 3
    assert "forecast" in classes and "forecast-span" in classes
    assert "700M limit" in svg and "crossing 2026-09-01" in svg
    threshold_y = float(root.find(f"{SVG}line[@class='threshold']").get("y1"))
    level_ys = sorted(float(line.get("y1")) for line in root.findall(f"{SVG}line[@class='level']"))
    assert threshold_y < level_ys[0]  # the limit is drawn above every alert level
    forecast = root.find(f"{SVG}line[@class='forecast']")
    assert float(forecast.get("y2")) == threshold_y  # the forecast ends on the limit


def test_it_names_but_does_not_draw_a_crossing_beyond_the_horizon() -> None:
    svg = monthly_mau_chart(months=_months([1000, 2000]), threshold=700_000_000, levels=[0.5],
                            crossing=dt.date(2040, 1, 1))
    assert 'class="forecast"' not in svg
    assert "Forecast to cross the limit on 2040-01-01" in svg


def test_it_escapes_every_text() -> None:
    svg = meter(used=1, total=2, label='<script>alert("x")</script>')
    assert "<script>" not in svg and "&lt;script&gt;" in svg


def test_it_shows_the_limit_on_the_rolling_chart_only_when_within_reach() -> None:
    days = [Point(dt.date(2026, 1, d), 100 * d, 99 * d, 101 * d) for d in range(1, 31)]
    far = rolling_chart(days=days, daily=days, threshold=700_000_000)
    near = rolling_chart(days=days, daily=days, threshold=5000)
    assert 'class="threshold"' not in far and 'class="threshold"' in near
    assert len(re.findall(r'class="dau"', near)) == 30


def test_it_writes_axis_numbers_compactly() -> None:
    assert [compact(n) for n in (0, 950, 1500, 700_000_000, 2_500_000_000)] == ["0", "950", "1.5k", "700M", "2.5B"]


def test_it_draws_an_empty_chart_without_failing() -> None:
    assert "No months to show." in monthly_mau_chart(months=[], threshold=1, levels=[])
    assert "No days to show." in rolling_chart(days=[], daily=[], threshold=1)

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


def test_it_draws_an_empty_series_as_a_message_without_an_axis() -> None:
    assert "No users metered or declared in these months yet." in monthly_mau_chart(months=[], threshold=1, levels=[])
    gaps = [Point(dt.date(2026, m, 1), None, None, None) for m in (1, 2, 3)]
    assert 'class="tick"' not in monthly_mau_chart(months=gaps, threshold=700_000_000, levels=[0.9])
    zeros = [Point(dt.date(2026, 1, d), 0, 0, 0) for d in range(1, 31)]
    empty = rolling_chart(days=zeros, daily=zeros, threshold=700_000_000)
    assert "No users metered in these days yet." in empty and 'class="tick"' not in empty


def test_a_small_series_has_whole_distinct_ticks() -> None:
    days = [Point(dt.date(2026, 1, d), 1, 1, 1) for d in range(1, 31)]
    ticks = re.findall(r'class="tick" x="[\d.]+" y="[\d.]+" text-anchor="end">([^<]+)<', rolling_chart(
        days=days, daily=days, threshold=700_000_000))
    assert ticks == ["0", "1", "2", "3", "4"]
    days = [Point(dt.date(2026, 1, d), 190, 180, 200) for d in range(1, 31)]
    ticks = re.findall(r'class="tick" x="[\d.]+" y="[\d.]+" text-anchor="end">([^<]+)<', rolling_chart(
        days=days, daily=days, threshold=700_000_000))
    assert ticks == ["0", "100", "200", "300", "400"]  # whole people in equal steps, never "62.5"


def test_a_month_without_data_is_a_gap_not_a_zero() -> None:
    months = _months([100_000_000, 0, 300_000_000])
    months[1] = Point(months[1].day, None, None, None)
    root = ET.fromstring(monthly_mau_chart(months=months, threshold=700_000_000, levels=[]))
    assert len(root.findall(f"{SVG}circle")) == 2  # no dot at zero for the missing month
    assert len(root.findall(f"{SVG}rect[@class='band']")) == 2  # two one-month runs, no band through it
    assert not root.findall(f"{SVG}polyline")  # no line joins across the gap


def test_labels_are_nudged_apart_and_never_overlap() -> None:
    from portal.charts import Label, place_labels

    crowded = [Label(100, 100, "crossing 2026-03-01", "forecast-label", "start"), Label(100, 100, "90%", "level-label"),
               Label(104, 98, "75%", "level-label"), Label(700, 100, "700M limit", "threshold-label", "end")]
    placed = place_labels(crowded)
    assert [p.text for p in placed] == [label.text for label in crowded]
    assert placed[0].y == 100  # the first keeps its place
    assert placed[3].y == 100  # far enough away: not moved
    assert not any(a.overlaps(b) for i, a in enumerate(placed) for b in placed[i + 1:])
    assert Label(0, 10, "abc", "x").overlaps(Label(5, 12, "d", "x"))
    assert not Label(0, 10, "abc", "x").overlaps(Label(0, 40, "abc", "x"))


def test_the_chart_s_limit_levels_and_crossing_labels_do_not_overlap() -> None:
    from portal.charts import Label

    # A crossing close to the start puts its label on the 90% level's label unless it is nudged.
    svg = monthly_mau_chart(months=_months([600_000_000, 650_000_000]), threshold=700_000_000,
                            levels=[0.5, 0.75, 0.9], crossing=dt.date(2026, 2, 20))
    root = ET.fromstring(svg)
    labels = [Label(float(t.get("x")), float(t.get("y")), t.text, t.get("class"), t.get("text-anchor"),
                    12.0 if t.get("class") in ("threshold-label", "forecast-label") else 11.0)
              for t in root.findall(f"{SVG}text") if t.get("class", "").endswith("-label")]
    assert {label.text for label in labels} == {"50%", "75%", "90%", "700M limit", "crossing 2026-02-20"}
    assert not any(a.overlaps(b) for i, a in enumerate(labels) for b in labels[i + 1:])


def test_days_before_the_first_activity_are_not_drawn_as_zeros() -> None:
    days = [Point(dt.date(2026, 1, d), None, None, None) for d in range(1, 21)]
    days += [Point(dt.date(2026, 1, d), 100, 90, 110) for d in range(21, 31)]
    root = ET.fromstring(rolling_chart(days=days, daily=days, threshold=700_000_000))
    [line] = root.findall(f"{SVG}polyline")
    assert len(line.get("points").split()) == 10  # the run with data only
    assert len(root.findall(f"{SVG}rect[@class='dau']")) == 10

import datetime as dt

import pytest

from licensing.months import month_bounds, month_end, month_start, months_between, next_month, previous_month


@pytest.mark.parametrize("day, first, last", [
    (dt.date(2024, 2, 10), dt.date(2024, 2, 1), dt.date(2024, 2, 29)),  # leap year
    (dt.date(2023, 2, 28), dt.date(2023, 2, 1), dt.date(2023, 2, 28)),
    (dt.date(2024, 12, 31), dt.date(2024, 12, 1), dt.date(2024, 12, 31)),
    (dt.date(2024, 4, 1), dt.date(2024, 4, 1), dt.date(2024, 4, 30)),
])
def test_a_month_runs_from_its_first_to_its_last_day(day, first, last) -> None:
    assert (month_start(day), month_end(day)) == month_bounds(day) == (first, last)


def test_the_months_either_side_cross_the_year_and_ignore_the_day() -> None:
    assert previous_month(dt.date(2025, 1, 31)) == dt.date(2024, 12, 1)
    assert previous_month(dt.date(2024, 3, 31)) == dt.date(2024, 2, 1)
    assert next_month(dt.date(2024, 12, 31)) == dt.date(2025, 1, 1)
    assert next_month(dt.date(2024, 1, 31)) == dt.date(2024, 2, 1)


def test_every_month_between_two_dates_is_listed_once_in_order() -> None:
    assert list(months_between(dt.date(2024, 11, 30), dt.date(2025, 2, 1))) == [
        dt.date(2024, 11, 1), dt.date(2024, 12, 1), dt.date(2025, 1, 1), dt.date(2025, 2, 1)]
    assert list(months_between(dt.date(2025, 2, 1), dt.date(2024, 11, 1))) == []
    # the licence's test month: the calendar month before a release on the first of a month
    assert previous_month(dt.date(2024, 7, 23)) == dt.date(2024, 6, 1)

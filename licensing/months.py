"""Calendar months, the licence's unit of counting ("monthly active users ... in the preceding calendar month").

A month is the date of its first day. Every module that works in months uses these functions, so there is
one way to find a month, its last day, the one before or after, and the months between two dates. Pure
functions over ``datetime.date``; no ORM, no settings, no time zone (callers pass the UTC date they mean).
"""

from __future__ import annotations

import calendar
import datetime as dt
from collections.abc import Iterator


def month_start(day: dt.date) -> dt.date:
    """The month ``day`` falls in (its first day)."""
    return day.replace(day=1)


def month_end(day: dt.date) -> dt.date:
    """The last day of the month ``day`` falls in."""
    return day.replace(day=calendar.monthrange(day.year, day.month)[1])


def month_bounds(day: dt.date) -> tuple[dt.date, dt.date]:
    """The first and last day of the month ``day`` falls in."""
    return month_start(day), month_end(day)


def next_month(day: dt.date) -> dt.date:
    """The month after the one ``day`` falls in."""
    return month_end(day) + dt.timedelta(days=1)


def previous_month(day: dt.date) -> dt.date:
    """The month before the one ``day`` falls in."""
    return month_start(month_start(day) - dt.timedelta(days=1))


def months_between(first: dt.date, last: dt.date) -> Iterator[dt.date]:
    """Every month from the one ``first`` falls in to the one ``last`` falls in, both included."""
    month, end = month_start(first), month_start(last)
    while month <= end:
        yield month
        month = next_month(month)

"""The date rule of the 700M clause: the test looks at the calendar month before the release date."""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest

from licensing.terms import LicenceTerms
# Aliased: pytest would otherwise collect a module-level name starting with test_ as a test.
from licensing.terms import test_month_for as month_tested_for

CATALOGUE_JSON = Path(__file__).resolve().parents[2] / "licensing" / "data" / "catalogue.json"


def catalogue_entry(slug: str) -> dict[str, Any]:
    entries = json.loads(CATALOGUE_JSON.read_text(encoding="utf-8"))["versions"]
    return next(entry for entry in entries if entry["slug"] == slug)


def terms_from_catalogue(slug: str) -> LicenceTerms:
    entry = catalogue_entry(slug)
    values = {field.name: entry.get(field.name) for field in fields(LicenceTerms)}
    values["version"] = entry["name"]
    values["release_date"] = dt.date.fromisoformat(entry["release_date"])
    return LicenceTerms(**values)


@pytest.mark.parametrize(
    ("release_date", "expected"),
    [
        (dt.date(2024, 4, 18), dt.date(2024, 3, 1)),
        (dt.date(2024, 4, 1), dt.date(2024, 3, 1)),
        (dt.date(2024, 4, 30), dt.date(2024, 3, 1)),
        (dt.date(2024, 1, 15), dt.date(2023, 12, 1)),
        (dt.date(2024, 1, 1), dt.date(2023, 12, 1)),
        (dt.date(2024, 3, 31), dt.date(2024, 2, 1)),
        (dt.date(2023, 3, 1), dt.date(2023, 2, 1)),
    ],
)
def test_it_returns_the_first_day_of_the_preceding_calendar_month(release_date: dt.date, expected: dt.date) -> None:
    assert month_tested_for(release_date) == expected


def test_it_gives_the_month_just_before_for_every_day_of_two_years() -> None:
    day = dt.date(2023, 1, 1)
    while day < dt.date(2025, 1, 1):
        expected = dt.date(day.year, day.month - 1, 1) if day.month > 1 else dt.date(day.year - 1, 12, 1)
        assert month_tested_for(day) == expected, day
        day += dt.timedelta(days=1)


@pytest.mark.parametrize(
    ("slug", "release_date", "test_month"),
    [
        ("llama-2", dt.date(2023, 7, 18), dt.date(2023, 6, 1)),
        ("llama-3", dt.date(2024, 4, 18), dt.date(2024, 3, 1)),
        ("llama-3.1", dt.date(2024, 7, 23), dt.date(2024, 6, 1)),
        ("llama-3.2", dt.date(2024, 9, 25), dt.date(2024, 8, 1)),
        ("llama-3.3", dt.date(2024, 12, 6), dt.date(2024, 11, 1)),
        ("llama-4", dt.date(2025, 4, 5), dt.date(2025, 3, 1)),
    ],
)
def test_it_tests_each_catalogue_version_in_the_month_before_its_release(
    slug: str, release_date: dt.date, test_month: dt.date
) -> None:
    terms = terms_from_catalogue(slug)

    assert terms.release_date == release_date
    assert terms.test_month == test_month
    assert terms.date_ambiguous is False


def test_it_flags_the_code_llama_test_month_as_ambiguous_rather_than_guessing() -> None:
    terms = terms_from_catalogue("code-llama")

    assert terms.date_ambiguous is True
    assert terms.release_date == dt.date(2023, 8, 24)
    assert "18 July 2023" in catalogue_entry("code-llama")["date_note"]


@pytest.mark.parametrize("slug", ["llama-2", "code-llama", "llama-3", "llama-3.1", "llama-3.2", "llama-3.3", "llama-4"])
def test_it_sets_the_700m_threshold_for_every_catalogue_version(slug: str) -> None:
    assert terms_from_catalogue(slug).mau_threshold == 700_000_000


def test_a_group_is_shown_and_forecast_against_the_lowest_limit_of_its_versions() -> None:
    from licensing.terms import DEFAULT_MAU_THRESHOLD, group_threshold

    assert group_threshold([700_000_000, 500_000_000]) == 500_000_000  # the first a growing group would cross
    assert group_threshold(iter([700_000_000])) == 700_000_000
    assert group_threshold([]) == DEFAULT_MAU_THRESHOLD == 700_000_000  # Section 2's "700 million"

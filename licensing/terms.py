"""Licence terms as plain values, and the date rules of the 700M clause. No ORM here."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from dataclasses import dataclass

from licensing.months import previous_month

#: Section 2: "greater than 700 million monthly active users". Every Llama licence with the clause says 700M.
DEFAULT_MAU_THRESHOLD = 700_000_000


def group_threshold(thresholds: Iterable[int]) -> int:
    """The one limit a whole group's figure is shown and forecast against, when its versions' limits could
    differ: the lowest (the first a growing group would cross), the default when it uses no version."""
    return min(thresholds, default=DEFAULT_MAU_THRESHOLD)


def test_month_for(release_date: dt.date) -> dt.date:
    """First day of the calendar month before ``release_date``.

    The clause counts users "in the preceding calendar month" as of the version's release date.
    """
    return previous_month(release_date)


@dataclass(frozen=True)
class LicenceTerms:
    version: str
    licence_name: str
    release_date: dt.date
    date_ambiguous: bool
    mau_threshold: int
    notice_line: str
    attribution_display: str
    derived_name_prefix: str
    outputs_may_improve_other_models: bool
    eu_multimodal_restriction: bool
    aup_version: str
    aup_url: str
    licence_url: str
    # Llama 3.1 and later name "any outputs or results" of the materials in the naming clause; Llama 3 does not.
    derived_name_covers_outputs: bool = False

    @property
    def test_month(self) -> dt.date:
        return test_month_for(self.release_date)

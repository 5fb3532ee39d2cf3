"""The overview: one row per group and Llama version, worst first, each with its figure, share and month."""

from __future__ import annotations

import datetime as dt
import re
from typing import Any

from governance.compliance.services import declared_figure_record, group_evaluate
from governance.metering.services import activity_ingest
from tests.factories import ProductFactory, licence


def test_it_answers_worst_first_with_the_figure_that_makes_a_version_over(tenancy: Any, login: Any) -> None:
    group = tenancy.organisation.group
    ProductFactory(organisation=tenancy.organisation, name="Acme Chat", licence_version=licence("llama-3.3"))
    recent = ProductFactory(organisation=tenancy.sibling, name="Acme Code", licence_version=licence("llama-3.1"))
    yesterday = dt.date.today() - dt.timedelta(days=1)
    activity_ingest(product=recent, day=yesterday, user_ids=[f"u{n}" for n in range(6000)])
    declared_figure_record(group=group, month=dt.date(2024, 11, 1), mau=720_000_000,
                           evidence="Finance MAU report", declared_by="cfo@acme.example")
    group_evaluate(group=group)
    page = login("viewer").get("/").content.decode()
    rows = re.findall(r"<tr>\s*<th scope=\"row\" data-label=\"Group and version\">(.*?)</tr>", page, re.S)
    assert [("Llama 3.3" in r, "Llama 3.1" in r) for r in rows] == [(True, False), (False, True)]
    over = rows[0]
    assert "state-over" in over and "720,000,000" in over and "declared" in over
    assert "102.9%" in over and "November 2024" in over
    assert "0.0% of the" not in page  # the old headline beside a red "over" is gone
    assert "What the statuses mean" in page and "partial coverage" in page
    assert "Theil-Sen" not in page.split("How this is worked out")[0]  # the method is one click away

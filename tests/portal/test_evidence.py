"""The portal's evidence report: month-true figures and statuses, and four downloads with the same figures."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

import pytest
from pypdf import PdfReader

from governance.compliance.services import declared_figure_record
from governance.metering.services import activity_ingest
from tests.factories import ProductFactory, licence

MONTH = dt.date(2024, 11, 1)


@pytest.fixture
def seeded(tenancy: Any) -> Any:
    """Acme's group in November 2024 (Llama 3.3's test month): 6,000 people metered, and a declared 720M."""
    product = ProductFactory(organisation=tenancy.organisation, name="Acme Chat", licence_version=licence("llama-3.3"))
    activity_ingest(product=product, day=dt.date(2024, 11, 5), user_ids=[f"user-{n}" for n in range(6000)])
    declared_figure_record(group=tenancy.organisation.group, month=MONTH, mau=720_000_000,
                           evidence="Finance MAU report FY24-Q4, p. 3", declared_by="cfo@acme.example")
    return tenancy.organisation.group


def _url(group: Any, kind: str = "html", month: str = "2024-11") -> str:
    return f"/groups/{group.pk}/evidence/?month={month}&format={kind}"


def test_it_reports_the_month_asked_with_its_declaration_and_the_status_of_that_month(seeded: Any, login: Any) -> None:
    page = login("viewer").get(_url(seeded)).content.decode()
    assert "November 2024" in page
    assert "720,000,000" in page and "Finance MAU report FY24-Q4, p. 3" in page and "cfo@acme.example" in page
    # Llama 3.3's licence-accurate test reads November 2024: the declared 720M is over its 700M limit.
    assert "Llama 3.3" in page and "over the limit" in page and "700,000,000" in page
    assert "computed now by the rules" in page  # never evaluated: the pure rules, and the row says so
    assert "{'" not in page and "distinct_people" not in page  # no raw dicts or slugs


def test_a_month_without_figures_is_not_today_s_status(seeded: Any, login: Any) -> None:
    page = login("viewer").get(_url(seeded, month="2024-09")).content.decode()
    assert "720,000,000" not in page and "over the limit" not in page
    assert "unknown: no figure for the month" in page


def _numbers(text: str) -> set[str]:
    import re

    return set(re.findall(r"\d{1,3}(?:,\d{3})+", text))


def test_it_downloads_html_csv_json_and_pdf_with_the_same_figures(seeded: Any, login: Any) -> None:
    client = login("viewer")
    html = client.get(_url(seeded)).content.decode()
    csv_response = client.get(_url(seeded, "csv"))
    json_response = client.get(_url(seeded, "json"))
    pdf_response = client.get(_url(seeded, "pdf"))
    assert csv_response["Content-Type"].startswith("text/csv")
    assert pdf_response["Content-Type"] == "application/pdf"
    assert pdf_response["Content-Disposition"] == f'attachment; filename="evidence-group{seeded.pk}-2024-11.pdf"'
    rows = list(csv.reader(io.StringIO(csv_response.content.decode())))
    csv_text = "\n".join(" ".join(row) for row in rows)
    report = json.loads(json_response.content)
    json_text = " ".join(str(cell) for section in report["sections"] for row in section["rows"] for cell in row)
    pdf_text = "\n".join(page.extract_text() for page in PdfReader(io.BytesIO(pdf_response.content)).pages)
    expected = _numbers(html)
    assert {"720,000,000", "700,000,000"} <= expected and any(n.startswith("6,0") or n.startswith("5,9")
                                                              for n in expected)
    assert _numbers(csv_text) == expected and _numbers(json_text) == expected
    assert expected <= _numbers(pdf_text.replace("\n", " "))
    assert report["mau"]["estimate"] == report["counting"]["bases"]["distinct_people"]["estimate"]
    assert [d["mau"] for d in report["declarations"]] == [720_000_000]


def test_the_audit_chain_it_cites_is_the_log_s_own_count(seeded: Any, login: Any) -> None:
    from access.models import AuditEvent

    report = json.loads(login("viewer").get(_url(seeded, "json")).content)
    chain = report["audit_chain"]
    assert chain["head_seq"] == chain["entries"] == chain["checked"] == AuditEvent.objects.count() > 0


def test_another_group_s_member_gets_404_and_bad_input_is_named(seeded: Any, login: Any) -> None:
    outsider = login("outsider")
    for kind in ("html", "csv", "json", "pdf"):
        assert outsider.get(_url(seeded, kind)).status_code == 404
    viewer = login("viewer")
    assert b"format" in viewer.get(_url(seeded, "docx")).content
    bad = viewer.get(_url(seeded, month="2024-13"))
    assert bad.status_code == 400 and b"YYYY-MM" in bad.content


def test_it_uses_the_stored_status_of_the_month_once_an_evaluation_recorded_it(seeded: Any, login: Any) -> None:
    from governance.compliance.services import group_evaluate

    group_evaluate(group=seeded)
    report = json.loads(login("viewer").get(_url(seeded, "json")).content)
    [row] = [s for s in report["statuses"] if s["licence_version"] == "llama-3.3"]
    assert (row["rule"], row["state"], row["source"], row["estimate"]) == ("licence_accurate", "over", "stored",
                                                                            720_000_000)
    assert row["evaluated_at"] is not None
    csv_text = login("viewer").get(_url(seeded, "csv")).content.decode()
    assert "stored by the evaluation of" in csv_text and "over the limit" in csv_text

"""The evidence report in the portal: one report, four downloads (HTML, CSV, JSON, PDF) with the same figures."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
from typing import Any

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse, HttpResponseBadRequest
from django.urls import reverse
from django.utils import timezone
from django.views.decorators.http import require_GET
from fpdf import FPDF
from fpdf.enums import XPos, YPos

from access.principals import actors_for_viewer
from governance.compliance import evidence
from licensing.months import previous_month
from portal.access import access_of

FORMATS = ("html", "csv", "json", "pdf")


def _month(value: str | None) -> dt.date:
    if not value:
        return previous_month(timezone.now().date())
    try:
        month = dt.datetime.strptime(value, "%Y-%m").date()
    except ValueError as exc:
        raise ValueError(f"month: {value!r} is not a month as YYYY-MM.") from exc
    if not dt.date(2000, 1, 1) <= month <= dt.date(2999, 12, 1):
        raise ValueError("month: must be between 2000-01 and 2999-12.")
    return month


@login_required
@require_GET
def group_evidence(request: HttpRequest, pk: int) -> HttpResponse:
    """The group's evidence report for ``?month=YYYY-MM`` as ``?format=html|csv|json|pdf`` (another group's: 404)."""
    group = access_of(request).group_or_404(pk)
    kind = request.GET.get("format", "html")
    if kind not in FORMATS:
        return HttpResponseBadRequest(f"format: {kind!r} is not one of {', '.join(FORMATS)}.")
    try:
        month = _month(request.GET.get("month"))
    except ValueError as exc:
        return HttpResponseBadRequest(str(exc))
    report = actors_for_viewer(evidence.evidence_report(group=group, month=month), access_of(request).principal)
    filename = f"evidence-group{group.pk}-{report['month']}"
    if kind == "html":
        url = reverse("portal:group-evidence", args=[group.pk])
        downloads = [{"label": k.upper(), "url": f"{url}?month={report['month']}&format={k}"} for k in FORMATS[1:]]
        return HttpResponse(evidence.evidence_html(report, downloads=downloads), content_type="text/html; charset=utf-8")
    if kind == "json":
        body = json.dumps({**report, "sections": evidence.evidence_sections(report)}, indent=2, default=str)
        response = HttpResponse(body, content_type="application/json")
    elif kind == "csv":
        response = HttpResponse(evidence_table_csv(report), content_type="text/csv; charset=utf-8")
    else:
        response = HttpResponse(bytes(evidence_pdf(report)), content_type="application/pdf")
    response["Content-Disposition"] = f'attachment; filename="{filename}.{kind}"'
    return response


def evidence_table_csv(report: dict[str, Any]) -> str:
    """Every section's rows as printed, each led by its section's title; a section's header row precedes it."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["Evidence report", report["group"]["name"], report["month"]])
    for section in evidence.evidence_sections(report):
        writer.writerow([section["title"], *section["columns"]])
        for row in section["rows"]:
            writer.writerow([section["title"], *row])
    return out.getvalue()


def _latin(text: str) -> str:
    # The PDF's core fonts are Latin-1: typographic dashes and quotes are mapped, anything else is replaced.
    text = text.replace("–", "-").replace("—", "-").replace("’", "'").replace("“", '"').replace("”", '"')
    return text.encode("latin-1", "replace").decode("latin-1")


def evidence_pdf(report: dict[str, Any]) -> bytearray:
    """The report as an A4 PDF drawn by fpdf2: the same sections and cells as the HTML and CSV."""
    pdf = FPDF(orientation="landscape", format="A4")
    pdf.set_auto_page_break(auto=True, margin=12)
    pdf.set_title(_latin(f"Evidence report: {report['group']['name']}, {report['month']}"))
    pdf.add_page()
    pdf.set_font("Helvetica", "B", 15)
    pdf.cell(0, 9, _latin(f"Evidence report: {report['group']['name']}, {report['month']}"),
             new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    pdf.set_font("Helvetica", "", 9)
    pdf.multi_cell(0, 5, _latin(f"Generated {evidence.people_time(report['generated_at'])} by Corral. Monthly active "
                                "users are estimates with a 95% interval."), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
    for section in evidence.evidence_sections(report):
        pdf.ln(3)
        pdf.set_font("Helvetica", "B", 11)
        pdf.cell(0, 7, _latin(section["title"]), new_x=XPos.LMARGIN, new_y=YPos.NEXT)
        pdf.set_font("Helvetica", "", 8)
        rows = section["rows"] or [["None for this month."] + [""] * (len(section["columns"]) - 1)]
        # Columns as wide as their longest cell (a long explanation capped), so numbers stay on one line.
        widths = tuple(min(max(len(str(cell)) for cell in column), 60) + 4
                       for column in zip(section["columns"], *rows))
        # types-fpdf2 type line_height as int; fpdf2 takes any number of user units (mm here).
        with pdf.table(text_align="LEFT", line_height=4.5, col_widths=widths) as table:  # type: ignore[arg-type]
            table.row([_latin(c) for c in section["columns"]])
            for row in rows:
                table.row([_latin(str(cell)) for cell in row])
    return pdf.output()

"""The evidence report for an affiliate group and month: what counsel files to show compliance."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from django.db.models import Q
from django.template.loader import render_to_string
from django.utils import timezone

from access.audit import audit_verify, audit_verify_cached
from access.models import AffiliateGroup, AuditEvent, Organisation
from governance.compliance import rules
from governance.compliance import services as evaluation_services
from governance.metering.selectors import mau_month, mau_month_many
from governance.models import (
    Alert,
    ComplianceStatus,
    CoverageAttestation,
    DeclaredFigure,
    EvaluationRule,
    GroupForecast,
    GroupPolicy,
    StatusChange,
)
from licensing.models import MetaGrant, Product
from licensing.months import month_end, month_start, next_month
from licensing.selectors import grants_in_force, group_exemptions


def evidence_report(*, group: AffiliateGroup, month: dt.date) -> dict[str, Any]:
    month = month_start(month)
    group_count = mau_month(scope=group, month=month).as_dict()
    # Every figure in a fixed number of queries, however many organisations and products the group has.
    orgs = list(Organisation.objects.filter(group=group).order_by("name"))
    products_of: dict[int, list[Product]] = {org.pk: [] for org in orgs}
    for product in (Product.objects.filter(organisation__group=group).select_related("licence_version")
                    .order_by("name")):
        products_of[product.organisation_id].append(product)
    all_products = [product for org in orgs for product in products_of[org.pk]]
    org_counts = mau_month_many(scopes=orgs, month=month)
    product_counts = mau_month_many(scopes=all_products, month=month)
    organisations = [
        {"id": org.pk, "name": org.name, "status": org.status, "mau": _figures(org_counts[org.pk].as_dict()),
         "products": [
             {"id": product.pk, "name": product.name,
              "licence_version": product.licence_version.slug if product.licence_version else None,
              "status": product.status, "mau": _figures(product_counts[product.pk].as_dict())}
             for product in products_of[org.pk]]}
        for org in orgs
    ]
    statuses = _month_statuses(group, month)
    following = next_month(month)
    alerts = [
        {"id": a.pk, "created_at": a.created_at.isoformat(), "licence_version": a.licence_version.slug
         if a.licence_version else None, "level": a.level, "kind": a.kind, "message": a.message,
         "rule": a.rule, "month": a.month.strftime("%Y-%m"),
         "acknowledged_at": a.acknowledged_at.isoformat() if a.acknowledged_at else None}
        for a in Alert.objects.filter(group=group).filter(
            Q(month=month) | Q(created_at__date__gte=month, created_at__date__lt=following))
        .select_related("licence_version").order_by("created_at")
    ]
    last_day = month_end(month)
    in_force = set(grants_in_force(group=group, on=last_day).values_list("pk", flat=True))
    grants = [
        {"id": g.pk, "reference": g.reference, "licence_versions": [v.slug for v in g.licence_versions.all()],
         "granted_on": g.granted_on.isoformat(), "valid_from": g.valid_from.isoformat(),
         "valid_until": g.valid_until.isoformat() if g.valid_until else None, "revoked": g.revoked,
         "supersedes": g.supersedes_id, "scope": g.scope, "recorded_by": g.recorded_by,
         "recorded_at": g.recorded_at.isoformat(), "in_force": g.pk in in_force}
        # Grants that could bear on the month: recorded by its end and valid on some day of it.
        for g in MetaGrant.objects.filter(group=group, valid_from__lte=last_day, recorded_at__date__lte=last_day)
        .filter(Q(valid_until__isnull=True) | Q(valid_until__gte=month))
        .prefetch_related("licence_versions").order_by("recorded_at")
    ]
    forecast = GroupForecast.objects.filter(group=group).first()
    head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    entries = AuditEvent.objects.count()
    chain = audit_verify_cached()
    if chain.checked != entries:  # the cached walk predates the newest entries: walk again, so the report agrees
        chain = audit_verify()
    return {
        "group": {"id": group.pk, "name": group.name},
        "month": month.strftime("%Y-%m"),
        "generated_at": timezone.now().isoformat(),
        "mau": group_count,
        "organisations": organisations,
        # Stored sketches that cannot be read: kept, quarantined, and left out of every figure above.
        "excluded": _named(group_count["excluded"], {p.pk: p.name for p in all_products}),
        "statuses": statuses,
        "forecast": {"method": forecast.method, "crossing_date": _iso(forecast.crossing_date),
                     "earliest": _iso(forecast.earliest), "latest": _iso(forecast.latest),
                     "computed_at": forecast.computed_at.isoformat()} if forecast else None,
        "alerts": alerts,
        "grants": grants,
        "counting": evaluation_services.month_counting(group=group, month=month),
        "exemptions": [{"organisation": e.organisation.name, "supplier": e.supplier, "evidence": e.evidence,
                        "recorded_by": e.recorded_by, "recorded_at": e.recorded_at.isoformat()}
                       for e in group_exemptions(group=group).values()],
        "declarations": [
            {"mau": d.mau, "lower": d.mau if d.lower is None else d.lower,
             "upper": d.mau if d.upper is None else d.upper, "evidence": d.evidence, "declared_by": d.declared_by,
             "declared_at": d.declared_at.isoformat()}
            for d in DeclaredFigure.objects.filter(group=group, month=month).order_by("declared_at", "id")],
        "attestations": [
            {"statement": a.statement, "products": [item.get("name", "") for item in a.products],
             "attested_by": a.attested_by, "attested_at": a.attested_at.isoformat()}
            for a in CoverageAttestation.objects.filter(group=group, month=month).order_by("attested_at", "id")],
        "audit_chain": {"head_seq": head.seq if head else 0, "entries": entries, "head_hash": head.hash if head else None,
                        "verified": chain.ok, "checked": chain.checked, "reason": chain.reason},
    }


def _month_statuses(group: AffiliateGroup, month: dt.date) -> list[dict[str, Any]]:
    """Each Llama version's status as evaluated for ``month``, never today's.

    The rule is the licence-accurate test where the month is one the version's test reads (the month before its
    release, or a base model's), otherwise continuous monitoring of the month as a complete month. The stored
    history is used where an evaluation recorded a state for that version, rule and month (the latest one);
    otherwise the pure rules classify the month's figures now, and the row says so.
    """
    policy = GroupPolicy.objects.filter(group=group).first()
    basis = policy.counting_basis if policy else rules.DISTINCT_PEOPLE
    levels = tuple(policy.levels) if policy and policy.levels else (0.5, 0.75, 0.9)
    known = evaluation_services.month_figures(group=group, month=month,
                                              started=evaluation_services.metering_started(group=group), basis=basis)
    last_day = month_end(month)
    rows = []
    for version in evaluation_services.group_versions(group=group):
        test_months = evaluation_services.licence_test_months(group=group, version=version)
        reading = next((note for m, note in test_months if m == month), None)
        rule = EvaluationRule.LICENCE_ACCURATE if reading is not None else EvaluationRule.LAST_MONTH
        current = ComplianceStatus.objects.filter(group=group, licence_version=version, rule=rule, month=month).first()
        stored = current or (StatusChange.objects.filter(group=group, licence_version=version, rule=rule, month=month)
                             .order_by("-changed_at", "-id").first())
        if stored is not None:
            when = stored.evaluated_at if isinstance(stored, ComplianceStatus) else stored.changed_at
            row = {"state": stored.state, "estimate": stored.estimate, "lower": stored.lower, "upper": stored.upper,
                   "explanation": stored.explanation, "source": "stored", "evaluated_at": when.isoformat()}
        else:
            granted = grants_in_force(group=group, on=last_day, licence_version=version).exists()
            status = rules.classify_month(known.figures, threshold=version.mau_threshold, levels=levels,
                                          granted=granted, rule=rule, month=month, coverage=known.coverage)
            figure = status.figure
            row = {"state": status.state, "estimate": figure.estimate if figure else None,
                   "lower": figure.lower if figure else None, "upper": figure.upper if figure else None,
                   "explanation": status.explanation, "source": "computed", "evaluated_at": None}
        rows.append({"licence_version": version.slug, "licence_version_name": version.name, "rule": rule,
                     "rule_words": EvaluationRule(rule).label, "month": month.strftime("%Y-%m"),
                     "test_months": [m.strftime("%Y-%m") for m, _ in test_months], "reading": reading or "",
                     "threshold": version.mau_threshold, **row})
    return rows


def _iso(value: dt.date | None) -> str | None:
    return value.isoformat() if value else None


def _figures(count: dict[str, Any]) -> dict[str, Any]:
    return {**{key: count[key] for key in ("estimate", "lower", "upper", "confidence", "lg_k")},
            "excluded": len(count["excluded"])}


def _named(excluded: list[dict[str, Any]], names: dict[int, str]) -> list[dict[str, Any]]:
    return [{**entry, "product_name": names.get(entry["product"], "")} for entry in excluded]


def evidence_csv(report: dict[str, Any]) -> str:
    """One row per figure: the group, each organisation and each product, then statuses, alerts and grants."""
    out = io.StringIO()
    writer = csv.writer(out)
    writer.writerow(["section", "scope", "name", "licence_version", "month", "estimate", "lower", "upper",
                     "confidence", "state_or_detail"])
    mau = report["mau"]
    writer.writerow(["mau", "group", report["group"]["name"], "", report["month"], mau["estimate"], mau["lower"],
                     mau["upper"], mau["confidence"], mau["method"]])
    for org in report["organisations"]:
        m = org["mau"]
        writer.writerow(["mau", "organisation", org["name"], "", report["month"], m["estimate"], m["lower"],
                         m["upper"], m["confidence"], org["status"]])
        for product in org["products"]:
            p = product["mau"]
            writer.writerow(["mau", "product", product["name"], product["licence_version"], report["month"],
                             p["estimate"], p["lower"], p["upper"], p["confidence"], product["status"]])
    counting = report["counting"]
    for basis, figure in counting["bases"].items():
        if figure is not None:
            used = "used by the statuses" if basis == counting["counting_basis"] else "shown beside it"
            writer.writerow(["basis", basis, report["group"]["name"], "", report["month"], figure["estimate"],
                             figure["lower"], figure["upper"], 0.95, used])
    for figure in counting["declared"]:
        writer.writerow(["declared", "group", report["group"]["name"], "", report["month"], figure["estimate"],
                         figure["lower"], figure["upper"], "", figure["detail"]])
    coverage = counting["coverage"]
    writer.writerow(["coverage", "complete" if coverage["complete"] else "partial", report["group"]["name"], "",
                     report["month"], "", "", "", "", coverage["gap"] or "every registered product metered, attested"])
    for e in report["exemptions"]:
        writer.writerow(["exemption", "1.b.ii", e["organisation"], "", e["recorded_at"], "", "", "", "",
                         f'{e["supplier"]}: {e["evidence"]}'])
    for s in report["statuses"]:
        writer.writerow(["status", s["rule"], report["group"]["name"], s["licence_version"], s["month"],
                         s["estimate"], s["lower"], s["upper"], 0.95, f'{s["state"]}: {s["explanation"]}'])
    for a in report["alerts"]:
        writer.writerow(["alert", a["kind"], a["level"], a["licence_version"], a["created_at"], "", "", "", "",
                         a["message"]])
    for e in report["excluded"]:
        writer.writerow(["excluded", e["kind"], e["product_name"], "", e["day"], "", "", "", "",
                         f'quarantined {e["quarantined_at"]}: {e["reason"]}'])
    for g in report["grants"]:
        writer.writerow(["grant", g["reference"], " ".join(g["licence_versions"]), "", g["valid_from"], "", "", "",
                         "", f'valid until {g["valid_until"] or "open"}; revoked={g["revoked"]}'])
    chain = report["audit_chain"]
    writer.writerow(["audit_chain", "head", chain["head_seq"], "", "", "", "", "", "",
                     f'{chain["head_hash"]} verified={chain["verified"]}'])
    return out.getvalue()


def evidence_html(report: dict[str, Any], *, downloads: list[dict[str, str]] | None = None) -> str:
    return render_to_string("governance/evidence.html", {
        "report": report, "sections": evidence_sections(report), "downloads": downloads or [],
        "month_words": _month_words(report["month"]), "generated_words": people_time(report["generated_at"])})


# --- the report for people: every figure formatted once, rendered the same in HTML, CSV and PDF ------------------

STATE_WORDS = {
    rules.BELOW: "below the limit", rules.APPROACHING: "approaching the limit",
    rules.UNCERTAIN: "uncertain: the interval straddles the limit", rules.OVER: "over the limit",
    rules.GRANTED: "granted: a Meta licence covers it", rules.UNKNOWN: "unknown: no figure for the month",
    rules.EXEMPT: "exempt (clause 1.b.ii)",
}


def people_number(value: int | None) -> str:
    return "–" if value is None else f"{value:,}"


def people_interval(lower: int | None, upper: int | None) -> str:
    if lower is None or upper is None:
        return "–"
    return people_number(lower) if lower == upper else f"{lower:,} to {upper:,}"


def people_time(value: str | None) -> str:
    """An ISO timestamp as ``2024-11-03 14:05 UTC``: no microseconds, no offset syntax."""
    if not value:
        return "–"
    moment = dt.datetime.fromisoformat(value)
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return f"{moment:%Y-%m-%d %H:%M} UTC"


def _month_words(value: str) -> str:
    return dt.datetime.strptime(value[:7], "%Y-%m").strftime("%B %Y")


def evidence_sections(report: dict[str, Any]) -> list[dict[str, Any]]:
    """The report as titled tables of strings for people, the one source of the HTML, CSV and PDF downloads."""
    sections = []
    mau = report["mau"]
    # Before metering began nothing was measured: a figure of 0 would read as "nobody used it".
    metered = report["counting"]["bases"].get(rules.DISTINCT_PEOPLE) is not None

    def figure(count: dict[str, Any]) -> list[str]:
        if not metered:
            return ["–", "not metered yet"]
        return [people_number(count["estimate"]), people_interval(count["lower"], count["upper"])]

    rows = [["Group", report["group"]["name"], *figure(mau)]]
    for org in report["organisations"]:
        rows.append(["Organisation", org["name"], *figure(org["mau"])])
        for product in org["products"]:
            rows.append(["Product", f'{product["name"]} ({product["licence_version"] or "not built on Llama"})',
                         *figure(product["mau"])])
    sections.append({"key": "mau", "title": "Monthly active users (distinct people)", "numeric": [2, 3],
                     "columns": ["Scope", "Name", "Estimate", "95% interval"], "rows": rows})
    counting = report["counting"]
    rows = []
    for basis, shown in counting["bases"].items():
        used = "used by the statuses" if basis == counting["counting_basis"] else "shown beside it"
        rows.append([rules.BASIS_WORDS[basis], used, people_number(shown["estimate"]) if shown else "–",
                     people_interval(shown["lower"], shown["upper"]) if shown else "no metered activity yet"])
    sections.append({"key": "bases", "title": "Both counting bases", "numeric": [2, 3],
                     "columns": ["Basis", "Use", "Estimate", "95% interval"], "rows": rows})
    sections.append({"key": "declarations", "title": "Declared figures", "numeric": [0, 1],
                     "columns": ["Figure", "Interval", "Evidence", "Declared by", "Declared at"],
                     "rows": [[people_number(d["mau"]), people_interval(d["lower"], d["upper"]), d["evidence"],
                               d["declared_by"], people_time(d["declared_at"])] for d in report["declarations"]]})
    coverage = counting["coverage"]
    if coverage.get("complete"):
        how = ("a declared figure covers the whole group" if coverage.get("declared")
               else "every registered product metered, and attested by an officer")
    else:
        how = coverage.get("gap") or ""
    rows = [["Coverage", "complete" if coverage.get("complete") else "partial", how],
            ["Metered products", str(len(coverage.get("metered", []))), ", ".join(coverage.get("metered", [])) or "none"]]
    rows += [["Attestation", f'by {a["attested_by"]}, {people_time(a["attested_at"])}',
              f'{a["statement"]} ({", ".join(a["products"]) or "no products listed"})'] for a in report["attestations"]]
    rows += [["Exemption (clause 1.b.ii)", e["organisation"],
              f'inside {e["supplier"]}\'s product: {e["evidence"]} (recorded by {e["recorded_by"]}, '
              f'{people_time(e["recorded_at"])})'] for e in report["exemptions"]]
    sections.append({"key": "coverage", "title": "Coverage and attestation",
                     "columns": ["Item", "Value", "Detail"], "rows": rows})
    sections.append({"key": "statuses", "title": "Status per Llama version for the month", "numeric": [3, 4, 5],
                     "columns": ["Version", "Rule", "State", "Figure", "Interval", "Limit", "How"],
                     "rows": [[s["licence_version_name"], s["rule_words"], STATE_WORDS.get(s["state"], s["state"]),
                               people_number(s["estimate"]), people_interval(s["lower"], s["upper"]),
                               people_number(s["threshold"]),
                               (f'stored by the evaluation of {people_time(s["evaluated_at"])}' if s["source"] == "stored"
                                else "computed now by the rules from the month's figures")
                               + f'; test month {", ".join(_month_words(m) for m in s["test_months"])}. '
                               + s["explanation"]] for s in report["statuses"]]})
    sections.append({"key": "grants", "title": "Meta grants bearing on the month",
                     "columns": ["Reference", "Versions", "Valid", "In force at month end", "Recorded"],
                     "rows": [[g["reference"], ", ".join(g["licence_versions"]),
                               f'{g["valid_from"]} to {g["valid_until"] or "open"}', "yes" if g["in_force"] else "no",
                               f'{g["recorded_by"]}, {people_time(g["recorded_at"])}'] for g in report["grants"]]})
    sections.append({"key": "excluded", "title": "Stored sketches left out of every figure (quarantined)",
                     "columns": ["Product", "Day", "Kind", "Reason", "Quarantined"],
                     "rows": [[e["product_name"], str(e["day"]), str(e["kind"]), str(e["reason"]),
                               people_time(str(e["quarantined_at"])) if e.get("quarantined_at") else "–"]
                              for e in report["excluded"]]})
    sections.append({"key": "alerts", "title": "Alerts of the month",
                     "columns": ["When", "Version", "Level", "Rule", "Message", "Acknowledged"],
                     "rows": [[people_time(a["created_at"]), a["licence_version"] or "", a["level"],
                               EvaluationRule(a["rule"]).label if a["rule"] in EvaluationRule.values else (a["rule"] or "–"),
                               a["message"], people_time(a["acknowledged_at"]) if a["acknowledged_at"] else "no"]
                              for a in report["alerts"]]})
    chain = report["audit_chain"]
    sections.append({"key": "audit", "title": "Audit chain", "numeric": [0, 1, 2],
                     "columns": ["Head entry", "Entries in the log", "Entries verified", "Result", "Head SHA-256"],
                     "rows": [[f'#{chain["head_seq"]:,}', people_number(chain["entries"]), people_number(chain["checked"]),
                               chain["reason"], chain["head_hash"] or "–"]]})
    return sections

"""The evidence report for an affiliate group and month: what counsel files to show compliance."""

from __future__ import annotations

import csv
import datetime as dt
import io
from typing import Any

from django.template.loader import render_to_string
from django.utils import timezone

from governance.audit import audit_verify_cached
from governance.models import Alert, AuditEvent, ComplianceStatus, GroupForecast
from governance.services import evaluation as evaluation_services
from governance.selectors import mau_month, mau_month_many
from licensing.selectors import group_exemptions
from licensing.models import AffiliateGroup, MetaGrant, Organisation, Product


def evidence_report(*, group: AffiliateGroup, month: dt.date) -> dict[str, Any]:
    month = month.replace(day=1)
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
    statuses = [
        {"licence_version": s.licence_version.slug, "rule": s.rule, "state": s.state,
         "month": s.month.isoformat() if s.month else None, "source": s.source, "estimate": s.estimate,
         "lower": s.lower, "upper": s.upper, "threshold": s.threshold, "explanation": s.explanation,
         "since": s.since.isoformat()}
        for s in ComplianceStatus.objects.filter(group=group).select_related("licence_version")
        .order_by("licence_version__release_date", "rule")
    ]
    next_month = (month + dt.timedelta(days=32)).replace(day=1)
    alerts = [
        {"id": a.pk, "created_at": a.created_at.isoformat(), "licence_version": a.licence_version.slug
         if a.licence_version else None, "level": a.level, "kind": a.kind, "message": a.message,
         "acknowledged_at": a.acknowledged_at.isoformat() if a.acknowledged_at else None}
        for a in Alert.objects.filter(group=group, created_at__date__gte=month, created_at__date__lt=next_month)
        .select_related("licence_version").order_by("created_at")
    ]
    grants = [
        {"id": g.pk, "reference": g.reference, "licence_versions": [v.slug for v in g.licence_versions.all()],
         "granted_on": g.granted_on.isoformat(), "valid_from": g.valid_from.isoformat(),
         "valid_until": g.valid_until.isoformat() if g.valid_until else None, "revoked": g.revoked,
         "supersedes": g.supersedes_id}
        for g in MetaGrant.objects.filter(group=group).prefetch_related("licence_versions").order_by("recorded_at")
    ]
    forecast = GroupForecast.objects.filter(group=group).first()
    head = AuditEvent.objects.order_by("-seq").only("seq", "hash").first()
    chain = audit_verify_cached()
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
        "audit_chain": {"head_seq": head.seq if head else 0, "head_hash": head.hash if head else None,
                        "verified": chain.ok, "checked": chain.checked, "reason": chain.reason},
    }


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


def evidence_html(report: dict[str, Any]) -> str:
    return render_to_string("governance/evidence.html", {"report": report})

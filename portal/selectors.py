"""What the portal's pages read, assembled from the apps' selectors in a number of queries that does not
grow with the rows shown. Each takes the groups or organisations the caller may see (portal/access.py)."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from django.db.models import Count, QuerySet
from django.utils import timezone

from access.models import AffiliateGroup, Invitation, Organisation
from governance.compliance import rules
from governance.metering.selectors import Count as MauCount
from governance.metering.selectors import daily_series, excluded_sketches, mau_month, mau_month_many
from governance.models import Alert, ComplianceStatus, EvaluationRule, GroupForecast
from inference.models import GPU, GpuAllocation, Replica, ReplicaState
from licensing.models import LicenceVersion, Product
from licensing.months import month_end, month_start, previous_month
from licensing.terms import group_threshold
from portal.charts import Point

# How bad a state is (the evaluation's own order: over > uncertain > unknown > approaching > below > granted).
_SEVERITY = {rules.BELOW: 0, rules.APPROACHING: 1, rules.UNKNOWN: 2, rules.UNCERTAIN: 3, rules.OVER: 4,
             rules.GRANTED: -1, rules.EXEMPT: -2}
LIVE_STATUSES = [Product.Status.DEVELOPMENT, Product.Status.LIVE]


@dataclass
class VersionRow:
    version: LicenceVersion
    statuses: dict[str, ComplianceStatus] = field(default_factory=dict)

    @property
    def accurate(self) -> ComplianceStatus | None:
        return self.statuses.get(EvaluationRule.LICENCE_ACCURATE)

    @property
    def last_month(self) -> ComplianceStatus | None:
        return self.statuses.get(EvaluationRule.LAST_MONTH)

    @property
    def projected(self) -> ComplianceStatus | None:
        return self.statuses.get(EvaluationRule.PROJECTED)


@dataclass
class GroupRow:
    group: AffiliateGroup
    mau: MauCount | None
    threshold: int
    versions: list[VersionRow]
    forecast: GroupForecast | None
    open_alerts: int
    gpus_in_use: int
    replicas_ready: int

    @property
    def fraction(self) -> float:
        return self.mau.estimate.estimate / self.threshold if self.mau and self.threshold else 0.0


def versions_by_group(groups: list[AffiliateGroup]) -> dict[int, list[LicenceVersion]]:
    """The licence versions each group's products (in development or live) are built on: one query."""
    by_group: dict[int, dict[int, LicenceVersion]] = defaultdict(dict)
    pairs = list(Product.objects.filter(organisation__group__in=groups, status__in=LIVE_STATUSES,
                                        licence_version__isnull=False)  # a product not built on Llama has none
                 .values_list("organisation__group_id", "licence_version_id").distinct())
    versions = {v.pk: v for v in LicenceVersion.objects.filter(pk__in={v for _, v in pairs})}
    for group_id, version_id in pairs:
        by_group[group_id][version_id] = versions[version_id]
    return {gid: sorted(vs.values(), key=lambda v: v.release_date) for gid, vs in by_group.items()}


def _version_rows(versions: list[LicenceVersion], statuses: list[ComplianceStatus]) -> list[VersionRow]:
    rows = {v.pk: VersionRow(v) for v in versions}
    for status in statuses:
        row = rows.get(status.licence_version_id)
        if row is None:  # evaluated before its last product was retired: still worth showing
            row = rows[status.licence_version_id] = VersionRow(status.licence_version)
        row.statuses[status.rule] = status
    return sorted(rows.values(), key=lambda r: r.version.release_date)


def overview_rows(*, groups: QuerySet[AffiliateGroup], today: dt.date | None = None) -> list[GroupRow]:
    today = today or timezone.now().date()
    group_list = list(groups.order_by("name"))
    last_month = previous_month(today)
    mau = mau_month_many(scopes=group_list, month=last_month)
    versions = versions_by_group(group_list)
    statuses: dict[int, list[ComplianceStatus]] = defaultdict(list)
    for status in ComplianceStatus.objects.filter(group__in=group_list).select_related("licence_version"):
        statuses[status.group_id].append(status)
    forecasts = {f.group_id: f for f in GroupForecast.objects.filter(group__in=group_list)}
    open_alerts = dict(Alert.objects.filter(group__in=group_list, kind=Alert.Kind.RAISED, acknowledged_at__isnull=True)
                       .values_list("group").annotate(n=Count("id")).values_list("group", "n"))
    gpus = dict(GpuAllocation.objects.filter(replica__deployment__organisation__group__in=group_list)
                .values_list("replica__deployment__organisation__group").annotate(n=Count("id"))
                .values_list("replica__deployment__organisation__group", "n"))
    ready = dict(Replica.objects.filter(deployment__organisation__group__in=group_list, state=ReplicaState.READY)
                 .values_list("deployment__organisation__group").annotate(n=Count("id"))
                 .values_list("deployment__organisation__group", "n"))
    rows = []
    for group in group_list:
        group_versions = versions.get(group.pk, [])
        threshold = group_threshold(v.mau_threshold for v in group_versions)
        rows.append(GroupRow(group=group, mau=mau.get(group.pk), threshold=threshold,
                             versions=_version_rows(group_versions, statuses[group.pk]),
                             forecast=forecasts.get(group.pk), open_alerts=open_alerts.get(group.pk, 0),
                             gpus_in_use=gpus.get(group.pk, 0), replicas_ready=ready.get(group.pk, 0)))
    return rows


@dataclass
class VersionAnswer:
    """One group and Llama version at a glance: its worst status of the three rules, with the figure behind it."""

    group: AffiliateGroup
    version: LicenceVersion
    status: ComplianceStatus | None

    @property
    def threshold(self) -> int:
        return self.status.threshold if self.status else self.version.mau_threshold

    @property
    def fraction(self) -> float | None:
        if self.status is None or self.status.estimate is None or not self.threshold:
            return None
        return self.status.estimate / self.threshold

    @property
    def rank(self) -> tuple[float, float]:
        if self.status is None:
            return float(_SEVERITY[rules.UNKNOWN]), 0.0
        # A below on partial coverage is never a clean pass: it sorts above every complete below.
        severity = _SEVERITY.get(self.status.state, 0) + (0.5 if self.status.partial_coverage else 0.0)
        return float(severity), self.fraction or 0.0


def version_answers(rows: list[GroupRow]) -> list[VersionAnswer]:
    """One answer per group and version, worst first: over, uncertain, unknown, approaching, partial coverage,
    below, granted, exempt; within a state, the larger share of the limit first."""
    answers = []
    for row in rows:
        for version_row in row.versions:
            statuses = [s for s in (version_row.accurate, version_row.last_month, version_row.projected) if s]
            worst = max(statuses, key=lambda s: (_SEVERITY.get(s.state, 0), s.level or 0.0), default=None)
            answers.append(VersionAnswer(row.group, version_row.version, worst))
    return sorted(answers, key=lambda a: a.rank, reverse=True)


def pool_usage() -> dict[str, int]:
    """Staff: the whole pool's GPUs and how many are allocated (unscoped by design)."""
    return {"gpus": GPU.objects.filter(node__active=True).count(), "allocated": GpuAllocation.objects.count()}


def _month_point(month: dt.date, count: MauCount) -> Point:
    """A month with nothing stored is a gap (estimate None), never a zero the chart would draw."""
    if count.estimate.estimate == 0 and not any(count.sources.values()):
        return Point(day=month, estimate=None, lower=None, upper=None)
    return _point(month, count.estimate)


def _point(day: dt.date, estimate: Any) -> Point:
    return Point(day=day, estimate=estimate.estimate, lower=estimate.lower, upper=estimate.upper)


@dataclass(frozen=True)
class TestedMonth:
    """One month the statuses read, with both counting bases, the declarations and the coverage."""

    month: dt.date
    rules: list[str]
    bases: dict[str, Any]
    figures: list[dict[str, Any]]
    coverage: dict[str, Any]
    excluded: list[dict[str, Any]] = field(default_factory=list)

    @property
    def declared(self) -> list[dict[str, Any]]:
        return [f for f in self.figures if f.get("source") == "declared"]


def tested_months(statuses: list[ComplianceStatus]) -> list[TestedMonth]:
    """The calendar months the group's statuses were decided on (licence-accurate test months, last month),
    each once: the figures of a month are the group's whatever the version."""
    by_month: dict[dt.date, TestedMonth] = {}
    for status in sorted(statuses, key=lambda s: (s.month or dt.date.min)):
        if status.rule == EvaluationRule.PROJECTED or status.month is None:
            continue
        known = by_month.get(status.month)
        if status.rule == EvaluationRule.LICENCE_ACCURATE:
            label = f"{status.licence_version.name}: the licence's test"
        else:
            label = "monitoring: the last complete month"
        if known is None:
            by_month[status.month] = TestedMonth(status.month, [label], status.bases, status.figures,
                                                 status.coverage or {}, status.excluded)
        elif label not in known.rules:
            known.rules.append(label)
    return sorted(by_month.values(), key=lambda m: m.month, reverse=True)


@dataclass
class GroupFigures:
    months: list[Point]
    rolling: list[Point]
    daily: list[Point]
    versions: list[VersionRow]
    tested: list[TestedMonth]
    threshold: int
    organisations: list[dict[str, Any]]
    last_month: dt.date
    this_month: dt.date
    #: Stored sketches that could not be read (quarantined) in the months shown, by month: the figures leave them out.
    excluded: dict[dt.date, int] = field(default_factory=dict)

    @property
    def excluded_total(self) -> int:
        return sum(self.excluded.values())

    @property
    def month_rows(self) -> list[tuple[Point, int]]:
        """Each month's point with the number of quarantined sketches its figure leaves out."""
        return [(point, self.excluded.get(point.day, 0)) for point in self.months]


def group_figures(*, group: AffiliateGroup, today: dt.date | None = None, months: int = 12,
                  days: int = 90) -> GroupFigures:
    """Everything the group page draws: monthly MAU with intervals, the rolling-30-day series, statuses per
    version, and the per-organisation and per-product figures for last month and this month to date."""
    today = today or timezone.now().date()
    this_month = month_start(today)
    month_list = [this_month]
    for _ in range(months - 1):
        month_list.insert(0, previous_month(month_list[0]))
    monthly = [_month_point(m, mau_month(scope=group, month=m)) for m in month_list]
    excluded: dict[dt.date, int] = defaultdict(int)
    excluded_by_product: dict[int, int] = defaultdict(int)  # in last month and this month, the breakdown's
    for entry in excluded_sketches(scope=group, start=month_list[0], end=month_end(this_month)):
        month = month_start(dt.date.fromisoformat(entry["day"]))
        excluded[month] += 1
        if month >= month_start(previous_month(today)):
            excluded_by_product[entry["product"]] += 1
    series = daily_series(scope=group, start=today - dt.timedelta(days=days - 1), end=today, window=30)
    first = next((i for i, p in enumerate(series) if p.rolling.estimate or p.dau.estimate), len(series))
    versions = versions_by_group([group]).get(group.pk, [])
    statuses = list(ComplianceStatus.objects.filter(group=group).select_related("licence_version"))
    threshold = group_threshold(v.mau_threshold for v in versions)
    last_month = previous_month(today)
    organisations = list(group.organisations.order_by("name"))
    products = list(Product.objects.filter(organisation__group=group).select_related("licence_version")
                    .order_by("name"))
    org_figures = {m: mau_month_many(scopes=organisations, month=m) for m in (last_month, this_month)}
    product_figures = {m: mau_month_many(scopes=products, month=m) for m in (last_month, this_month)}
    breakdown = []
    for organisation in organisations:
        breakdown.append({
            "organisation": organisation,
            "last_month": org_figures[last_month][organisation.pk].estimate,
            "this_month": org_figures[this_month][organisation.pk].estimate,
            "products": [{"product": p, "last_month": product_figures[last_month][p.pk].estimate,
                          "this_month": product_figures[this_month][p.pk].estimate,
                          "excluded": excluded_by_product[p.pk]}
                         for p in products if p.organisation_id == organisation.pk],
        })
    return GroupFigures(
        months=monthly,
        # Days before the first activity are gaps, not zeros: nothing was metered yet.
        rolling=[_point(p.day, p.rolling) if i >= first else Point(p.day, None, None, None)
                 for i, p in enumerate(series)],
        daily=[_point(p.day, p.dau) if i >= first else Point(p.day, None, None, None) for i, p in enumerate(series)],
        versions=_version_rows(versions, statuses),
        tested=tested_months(statuses),
        threshold=threshold,
        organisations=breakdown,
        last_month=last_month,
        this_month=this_month,
        excluded=dict(excluded),
    )


def pending_invitations(*, organisations: QuerySet[Organisation]) -> QuerySet[Invitation]:
    """Invitations of these organisations not yet accepted, withdrawn or expired (expired ones stay in the audit
    log). Pass only the organisations the caller manages: an invitation names an address that may be anyone's."""
    return (Invitation.objects.filter(organisation__in=organisations, accepted_at__isnull=True,
                                      revoked_at__isnull=True, expires_at__gt=timezone.now())
            .select_related("organisation").order_by("organisation__name", "email", "-created_at"))

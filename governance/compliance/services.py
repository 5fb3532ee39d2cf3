"""Evaluate an affiliate group: statuses per licence version and rule, the access decision, the forecast and
the alerts that follow. The rules themselves are pure functions in governance/compliance/rules.py; this module only
feeds them figures from the database and stores what they return.
"""

from __future__ import annotations

import datetime as dt
import functools
import logging
from dataclasses import dataclass
from dataclasses import field as dataclass_field
from typing import Any

from django.conf import settings
from django.core.cache import cache
from django.core.exceptions import ValidationError
from django.db import transaction
from django.db.models import Min, Q
from django.utils import timezone

from access.audit import audit_record
from access.models import AffiliateGroup, Membership, Organisation
from governance import queue
from governance.compliance import rules
from governance.metering.selectors import daily_series, mau_month, mau_month_many, mau_rolling
from governance.models import (
    AccessDecision,
    ActivityPart,
    Alert,
    AlertLevelState,
    ComplianceStatus,
    CoverageAttestation,
    DeclarationProposal,
    DeclaredFigure,
    EvaluationRule,
    GroupForecast,
    GroupPolicy,
    Rollup,
    StatusChange,
)
from licensing.models import BaseModel, LicenceVersion, Product
from licensing.months import month_end, month_start, previous_month
from licensing.selectors import acceptance_state, grants_in_force, group_exemptions, organisation_exemption
from licensing.terms import group_threshold

logger = logging.getLogger(__name__)


# --- policy -------------------------------------------------------------------------------------------------


def group_policy_get(*, group: AffiliateGroup) -> GroupPolicy:
    """The group's policy, created with the defaults the first time it is needed."""
    policy = GroupPolicy.objects.filter(group=group).first()
    if policy is not None:
        return policy
    recipients = sorted(
        set(
            Membership.objects.filter(
                organisation__group=group, role__in=[Membership.Role.OWNER, Membership.Role.ADMIN]
            ).exclude(user__email="").values_list("user__email", flat=True)
        )
    )
    policy, _ = GroupPolicy.objects.get_or_create(
        group=group, defaults={"levels": list(GroupPolicy.DEFAULT_LEVELS), "email_recipients": recipients}
    )
    return policy


def group_policy_update(*, policy: GroupPolicy, actor: str, **changes: object) -> GroupPolicy:
    before = {field: getattr(policy, field) for field in changes}
    for field, value in changes.items():
        setattr(policy, field, value)
    with transaction.atomic():
        policy.save()
        audit_record(action="policy.updated", actor=actor, group=policy.group, obj=policy,
                     data={"before": before, "after": changes})
        # The mode, the counting basis and on_unknown change the verdict: evaluate again at once.
        transaction.on_commit(lambda: evaluation_schedule(group_id=policy.group_id, urgent=True), robust=True)
    return policy


def _not_future(month: dt.date, *, field: str = "month") -> dt.date:
    month = month_start(month)
    this_month = month_start(timezone.now().date())
    if month > this_month:
        raise ValidationError({field: f"{month:%Y-%m} is in the future (this month is {this_month:%Y-%m})."})
    return month


def declared_figure_record(*, group: AffiliateGroup, month: dt.date, mau: int, evidence: str,
                           declared_by: str, lower: int | None = None, upper: int | None = None) -> DeclaredFigure:
    """Record a figure for a month, with its own bounds where it has them (none: a point). Every declaration
    of a month counts: a later one is shown next to the others and never lowers the status they give."""
    month = _not_future(month)
    if lower is not None and lower > mau:
        raise ValidationError({"lower": f"Must be at most the figure ({mau:,}); got {lower:,}."})
    if upper is not None and upper < mau:
        raise ValidationError({"upper": f"Must be at least the figure ({mau:,}); got {upper:,}."})
    if not evidence.strip():
        raise ValidationError({"evidence": "Say where the figure comes from."})
    with transaction.atomic():
        figure = DeclaredFigure.objects.create(group=group, month=month, mau=mau, lower=lower, upper=upper,
                                               evidence=evidence, declared_by=declared_by)
        audit_record(action="figure.declared", actor=declared_by, group=group, obj=figure,
                     data={"month": figure.month, "mau": mau, "lower": lower, "upper": upper, "evidence": evidence})
        transaction.on_commit(lambda: evaluation_schedule(group_id=group.pk, urgent=True), robust=True)
    return figure


def coverage_attest(*, group: AffiliateGroup, month: dt.date, statement: str, attested_by: str
                    ) -> CoverageAttestation:
    """An officer attests that the products and services registered for the month are all of the group's. The
    attestation names them; a product registered later for that month is not covered by it."""
    month = _not_future(month)
    if not statement.strip():
        raise ValidationError({"statement": "Say what was checked, by whom, against which list."})
    products = [{"id": p.pk, "name": p.name, "organisation": p.organisation.name}
                for p in _registered_products(group, month)]
    with transaction.atomic():
        attestation = CoverageAttestation.objects.create(group=group, month=month, statement=statement,
                                                         products=products, attested_by=attested_by)
        audit_record(action="coverage.attested", actor=attested_by, group=group, obj=attestation,
                     data={"month": month, "statement": statement, "products": products})
        transaction.on_commit(lambda: evaluation_schedule(group_id=group.pk, urgent=True), robust=True)
    return attestation


def months_to_declare(*, group: AffiliateGroup) -> list[dict[str, str]]:
    """The months a figure must be declared for: those a licence-accurate status found no figure for."""
    unknown = ComplianceStatus.objects.filter(group=group, rule=EvaluationRule.LICENCE_ACCURATE,
                                              state=rules.UNKNOWN).select_related("licence_version")
    return [{"licence_version": s.licence_version.slug, "version_name": s.licence_version.name,
             "month": s.month.strftime("%Y-%m") if s.month else ""}
            for s in unknown.order_by("licence_version__release_date")]


def declaration_propose(*, group: AffiliateGroup, organisation: Organisation, month: dt.date, mau: int,
                        evidence: str, proposed_by: str) -> DeclarationProposal:
    """An organisation of the group proposes a figure; it counts once a group admin confirms it."""
    if organisation.group_id != group.pk:
        raise ValidationError({"organisation": "Must be an organisation of this affiliate group."})
    with transaction.atomic():
        proposal = DeclarationProposal.objects.create(
            group=group, organisation=organisation, month=month_start(month), mau=mau, evidence=evidence,
            proposed_by=proposed_by)
        audit_record(action="figure.proposed", actor=proposed_by, group=group, organisation=organisation,
                     obj=proposal, data={"month": proposal.month, "mau": mau, "evidence": evidence})
    return proposal


def declaration_proposal_decide(*, proposal: DeclarationProposal, confirm: bool, actor: str, note: str = ""
                                ) -> DeclarationProposal:
    """Confirm (the figure is declared, as if the group admin had declared it) or reject a proposal, once."""
    with transaction.atomic():
        locked = DeclarationProposal.objects.select_for_update(of=("self",)).select_related("group", "organisation").get(
            pk=proposal.pk)
        if locked.status != DeclarationProposal.Status.PROPOSED:
            raise ValidationError({"status": f"This proposal was already {locked.status} by {locked.decided_by}."})
        if confirm:
            locked.declared_figure = declared_figure_record(
                group=locked.group, month=locked.month, mau=locked.mau, evidence=locked.evidence,
                declared_by=f"{actor} (proposed by {locked.proposed_by})")
        locked.status = DeclarationProposal.Status.CONFIRMED if confirm else DeclarationProposal.Status.REJECTED
        locked.decided_by, locked.decided_at, locked.decision_note = actor, timezone.now(), note
        locked.save(update_fields=["status", "decided_by", "decided_at", "decision_note", "declared_figure"])
        audit_record(action=f"figure.proposal_{locked.status}", actor=actor, group=locked.group,
                     organisation=locked.organisation, obj=locked,
                     data={"month": locked.month, "mau": locked.mau, "note": note})
    return locked


# --- figures ------------------------------------------------------------------------------------------------


def group_versions(*, group: AffiliateGroup) -> list[LicenceVersion]:
    # One filter() call, so "a product of this group that is not retired" is one join, not two conditions
    # that could be met by different products (of other tenants).
    return list(
        LicenceVersion.objects.filter(
            products__organisation__group=group,
            products__status__in=[Product.Status.DEVELOPMENT, Product.Status.LIVE],
        )
        .distinct()
        .order_by("release_date")
    )


def metering_started(*, group: AffiliateGroup) -> dt.date | None:
    """The first day the group has any metered activity."""
    first_rollup = Rollup.objects.filter(scope=Rollup.Grain.GROUP_DAY, scope_id=group.pk).aggregate(d=Min("period"))
    first_part = ActivityPart.objects.filter(product__organisation__group=group).aggregate(d=Min("day"))
    days = [d for d in (first_rollup["d"], first_part["d"]) if d is not None]
    return min(days) if days else None


def _declared(group: AffiliateGroup, month: dt.date) -> list[rules.Figure]:
    """Every declaration for the month, oldest first: a later one is shown next to the others, never instead."""
    return [
        rules.Figure(d.mau, d.mau if d.lower is None else d.lower, d.mau if d.upper is None else d.upper, month,
                     rules.DECLARED, rules.DECLARED,
                     detail=f"declared by {d.declared_by} on {d.declared_at:%Y-%m-%d}")
        for d in DeclaredFigure.objects.filter(group=group, month=month).order_by("declared_at", "id")
    ]


@dataclass(frozen=True)
class MonthFigures:
    """What is known of a group's month: the metered figure on both counting bases, the declarations, and the
    coverage of the metered figure. ``figures`` are those the policy's basis classifies."""

    month: dt.date
    distinct: rules.Figure | None
    summed: rules.Figure | None
    declared: list[rules.Figure]
    coverage: rules.Coverage
    figures: list[rules.Figure]
    basis: str
    #: Stored sketches of the month that cannot be read (quarantined): every metered figure above leaves them out.
    excluded: list[dict[str, Any]] = dataclass_field(default_factory=list)


def _registered_products(group: AffiliateGroup, month: dt.date) -> list[Product]:
    """Products and services the group should have metered in the month: live or retired ones launched by its
    end (or with no launch date: they may have had users), Llama-based or not."""
    return list(Product.objects.filter(organisation__group=group).select_related("organisation").filter(
        Q(status__in=[Product.Status.LIVE, Product.Status.RETIRED])
        & (Q(launch_date__isnull=True) | Q(launch_date__lte=month_end(month)))).order_by("organisation__name", "name"))


def _attested_product_ids(group: AffiliateGroup, month: dt.date) -> set[int] | None:
    attestation = CoverageAttestation.objects.filter(group=group, month=month).order_by("-attested_at", "-id").first()
    if attestation is None:
        return None
    return {item["id"] for item in attestation.products}


def month_figures(*, group: AffiliateGroup, month: dt.date, started: dt.date | None, basis: str) -> MonthFigures:
    declared = _declared(group, month)
    distinct = summed = None
    products = list(Product.objects.filter(organisation__group=group).select_related("organisation")
                    .order_by("organisation__name", "name"))
    per_product: dict[int, Any] = {}
    excluded: list[dict[str, Any]] = []
    names = {p.pk: f"{p.name} ({p.organisation.name})" for p in products}
    if started is not None and started <= month_end(month):
        group_count = mau_month(scope=group, month=month)
        count = group_count.estimate
        excluded = [{"kind": e["kind"], "product": e["product"], "product_name": names.get(e["product"], ""),
                     "day": e["day"], "reason": e["reason"]} for e in group_count.excluded]
        distinct = rules.Figure(count.estimate, count.lower, count.upper, month, "metered", rules.DISTINCT_PEOPLE,
                                excluded=len(excluded))
        counts = mau_month_many(scopes=products, month=month)
        per_product = {pk: c.estimate for pk, c in counts.items()}
        summed = rules.sum_of_products(
            [rules.Figure(c.estimate.estimate, c.estimate.lower, c.estimate.upper, month, "metered",
                          excluded=len(c.excluded)) for c in counts.values()], month=month)
    metered_ids = {pk for pk, estimate in per_product.items() if estimate.estimate > 0}
    expected = {p.pk: p for p in _registered_products(group, month)}
    attested_ids = _attested_product_ids(group, month)
    coverage = rules.Coverage(
        month=month,
        metered=tuple(names[pk] for pk in names if pk in metered_ids),
        unmetered=tuple(names[pk] for pk in expected if pk not in metered_ids),
        attested=attested_ids is not None and set(expected) <= attested_ids,
    )  # the metered figure's; a declaration completes it only where it decides the status (classify_month)
    chosen = summed if basis == rules.SUM_OF_PRODUCTS else distinct
    figures = rules.month_figures(metered=chosen, declared=declared, metering_started=started)
    return MonthFigures(month, distinct, summed, declared, coverage, figures, basis, excluded)


@dataclass(frozen=True)
class Verdict:
    status: rules.Status
    known: MonthFigures | None  # None for the projected rule (a rolling window, not a calendar month)


def _month_verdict(known: MonthFigures, *, policy: GroupPolicy, threshold: int, granted: bool, rule: str) -> Verdict:
    status = rules.classify_month(known.figures, threshold=threshold, levels=tuple(policy.levels), granted=granted,
                                  rule=rule, month=known.month, coverage=known.coverage)
    return Verdict(status, known)


def licence_test_months(*, group: AffiliateGroup, version: LicenceVersion) -> list[tuple[dt.date, str]]:
    """The months the licence-accurate test reads for a version, each with the reading that gives it.

    The version's own month first. Where the licence text does not fix the date (Code Llama ships under the
    Llama 2 text, which names the Llama 2 date), the month before too; and where a base model the group uses
    was released on its own date (Code Llama 70B, months after 7B-34B), that model's month.
    """
    months = [(version.test_month(), "")]
    if version.date_ambiguous:
        months.append((previous_month(version.test_month()),
                       f"The licence text may name an earlier date ({version.date_note})"))
    used = BaseModel.objects.filter(licence_version=version, release_date__isnull=False).filter(
        Q(products__organisation__group=group) | Q(deployments__organisation__group=group)).distinct()
    for base in used.order_by("release_date", "repo_id"):
        month = base.test_month()
        if month is not None and month not in {m for m, _ in months}:
            months.append((month, f"{base.repo_id} was released on {base.release_date:%Y-%m-%d}, so its own test "
                                  f"month is {month:%B %Y}{': ' + base.date_note if base.date_note else ''}"))
    return months


# --- evaluation ---------------------------------------------------------------------------------------------


@dataclass
class GroupEvaluation:
    group: AffiliateGroup
    statuses: list[ComplianceStatus]
    decisions: list[AccessDecision]
    forecast: GroupForecast | None
    alerts: list[Alert]


def group_evaluate(*, group: AffiliateGroup, today: dt.date | None = None) -> GroupEvaluation:
    """Evaluate every licence version the group uses, store statuses, decisions and forecast, raise alerts.

    Serialised per group by a lock on its policy row, so two workers evaluating the same group cannot both
    announce a level. Safe to run twice: unchanged statuses write no history and announced levels no alert.
    """
    now = timezone.now()
    today = today or now.date()
    group_policy_get(group=group)
    statuses: list[ComplianceStatus] = []
    decisions: list[AccessDecision] = []
    alerts: list[Alert] = []
    with transaction.atomic():
        # Figures are read under the group's lock, so an older concurrent evaluation cannot overwrite a newer one.
        policy = GroupPolicy.objects.select_for_update().get(group=group)
        started = metering_started(group=group)
        this_month, last_month = month_start(today), previous_month(today)
        basis = policy.counting_basis
        months: dict[dt.date, MonthFigures] = {}

        def known(month: dt.date) -> MonthFigures:
            if month not in months:
                months[month] = month_figures(group=group, month=month, started=started, basis=basis)
            return months[month]

        projected_figure = _projected(group, today, started, basis)
        forecast = _forecast(group, today, started)
        GroupForecast.objects.update_or_create(group=group, defaults={
            "method": forecast.method, "points": forecast.points, "daily_growth": forecast.daily_growth,
            "crossing_date": forecast.crossing_date, "earliest": forecast.earliest, "latest": forecast.latest,
            "computed_at": now,
        })
        levels = tuple(policy.levels)
        active = set(group.organisations.filter(status=Organisation.Status.ACTIVE).values_list("pk", flat=True))
        exemptions = group_exemptions(group=group)
        group_exempt = bool(active) and active <= set(exemptions)
        for version in group_versions(group=group):
            threshold = version.mau_threshold
            granted = grants_in_force(group=group, on=today, licence_version=version).exists()
            # The licence-accurate test: every month a reading of the licence points at, the worst kept.
            readings = [(_month_verdict(known(month), policy=policy, threshold=threshold, granted=granted,
                                        rule=EvaluationRule.LICENCE_ACCURATE), note)
                        for month, note in licence_test_months(group=group, version=version)]
            worst = rules.worst_of([(verdict.status, note) for verdict, note in readings])
            accurate = next(v for v, _ in readings if v.status.figure is worst.figure
                            and v.status.state == worst.state)
            verdicts = {
                EvaluationRule.LICENCE_ACCURATE: Verdict(worst, accurate.known),
                EvaluationRule.LAST_MONTH: _month_verdict(known(last_month), policy=policy, threshold=threshold,
                                                          granted=granted, rule=EvaluationRule.LAST_MONTH),
                EvaluationRule.PROJECTED: Verdict(rules.classify(
                    projected_figure, threshold=threshold, levels=levels, granted=granted,
                    rule=EvaluationRule.PROJECTED), None),
            }
            if group_exempt:  # clause 1.b.ii: no verdict, for every rule; the figures are still metered and shown
                suppliers = [exemptions[pk].supplier for pk in active]
                verdicts = {rule: Verdict(rules.exempt(threshold=threshold, rule=rule, suppliers=suppliers),
                                          verdict.known) for rule, verdict in verdicts.items()}
            computed = {rule: verdict.status for rule, verdict in verdicts.items()}
            accurate_month = accurate.known.month if accurate.known else version.test_month()
            month_of = {EvaluationRule.LICENCE_ACCURATE: accurate_month, EvaluationRule.LAST_MONTH: last_month,
                        EvaluationRule.PROJECTED: this_month}
            stored = {rule: _status_store(group, version, rule, verdict, now, today, month=month_of[rule], basis=basis)
                      for rule, verdict in verdicts.items()}
            statuses += stored.values()
            decisions.append(_decision_store(group, version, policy, computed[EvaluationRule.LICENCE_ACCURATE],
                                             stored[EvaluationRule.LICENCE_ACCURATE], today, now))
            alerts += _alerts_raise(group, version, policy, projected_figure, computed, forecast, today, this_month)
            if computed[EvaluationRule.LICENCE_ACCURATE].state == rules.UNKNOWN:
                # Once per version (its test month): someone must declare the month's figure.
                alert = _alert_once(group, version, "unknown", Alert.Kind.RAISED, accurate_month,
                                    _figures(None, computed, forecast, threshold),
                                    f"{group.name}, {version.name}: {computed[EvaluationRule.LICENCE_ACCURATE].explanation}",
                                    rule=EvaluationRule.LICENCE_ACCURATE)
                if alert:
                    alerts.append(alert)
        for alert in alerts:
            transaction.on_commit(functools.partial(queue.alert_dispatch_soon, alert.pk))
    cache.delete(_decision_cache_key(group.pk))
    return GroupEvaluation(group, statuses, decisions, GroupForecast.objects.filter(group=group).first(), alerts)


def _projected(group: AffiliateGroup, today: dt.date, started: dt.date | None, basis: str) -> rules.Figure | None:
    """The rolling 30 days to today: a calendar month is a 28-31-day window, so this is the month-end projection."""
    if started is None or started > today:
        return None
    this_month = month_start(today)
    if basis == rules.SUM_OF_PRODUCTS:
        counts = [mau_rolling(scope=product, ending=today, days=30).estimate
                  for product in Product.objects.filter(organisation__group=group)]
        return rules.sum_of_products([rules.Figure(c.estimate, c.lower, c.upper, this_month, "metered")
                                      for c in counts], month=this_month)
    rolling = mau_rolling(scope=group, ending=today, days=30).estimate
    return rules.Figure(rolling.estimate, rolling.lower, rolling.upper, this_month, "metered")


def _forecast(group: AffiliateGroup, today: dt.date, started: dt.date | None) -> rules.Forecast:
    if started is None:
        return rules.Forecast(rules.FORECAST_METHOD, 0, None, None, None, None, ["no metered activity"])
    start = max(started, today - dt.timedelta(days=89))
    points = daily_series(scope=group, start=start, end=today, window=30)
    series = [(p.day, p.rolling.estimate) for p in points]
    threshold = group_threshold(v.mau_threshold for v in group_versions(group=group))
    return rules.forecast_crossing(series, threshold=threshold, today=today)


_BLOCKING = (rules.OVER, rules.UNCERTAIN)


def month_counting(*, group: AffiliateGroup, month: dt.date) -> dict[str, Any]:
    """A group's month as the verdict counts it: the metered figure on both counting bases (side by side,
    whichever the policy uses), the declarations and the coverage, for the API, the evidence and the portal."""
    policy = GroupPolicy.objects.filter(group=group).first()  # a read: no policy yet means the defaults
    basis = policy.counting_basis if policy else rules.DISTINCT_PEOPLE
    known = month_figures(group=group, month=month, started=metering_started(group=group), basis=basis)
    return {
        "counting_basis": basis,
        "bases": {rules.DISTINCT_PEOPLE: _figure_json(known.distinct),
                  rules.SUM_OF_PRODUCTS: _figure_json(known.summed)},
        "declared": [_figure_json(f) for f in known.declared],
        "coverage": _coverage_json(known.coverage),
    }


def _figure_json(figure: rules.Figure | None) -> dict[str, Any] | None:
    if figure is None:
        return None
    return {"estimate": figure.estimate, "lower": figure.lower, "upper": figure.upper, "source": figure.source,
            "basis": figure.basis, "month": figure.month.isoformat(), "detail": figure.detail,
            "excluded": figure.excluded}


def _coverage_json(coverage: rules.Coverage | None) -> dict[str, Any]:
    if coverage is None:
        return {}
    return {"month": coverage.month.isoformat(), "complete": coverage.complete, "metered": list(coverage.metered),
            "unmetered": list(coverage.unmetered), "attested": coverage.attested, "declared": coverage.declared,
            "gap": coverage.gap()}


def _status_store(group: AffiliateGroup, version: LicenceVersion, rule: str, verdict: Verdict,
                  now: dt.datetime, today: dt.date, *, month: dt.date, basis: str) -> ComplianceStatus:
    """Store one status; history and audit only when the state changes.

    Dates follow the evaluated day (``today``), so a re-evaluation of the past dates its changes right, and
    ``crossed_on`` keeps the first day of a stretch over or uncertain: going from uncertain to over does not
    restart a grace period.
    """
    status = verdict.status
    figure = status.figure
    changed_at = now if today == now.date() else dt.datetime.combine(today, dt.time.min, tzinfo=dt.UTC)
    considered = [{**(_figure_json(f) or {}), "state": state} for f, state in status.considered]
    if verdict.known is not None:  # both counting bases, side by side, whichever the policy used
        bases = {"distinct_people": _figure_json(verdict.known.distinct),
                 "sum_of_products": _figure_json(verdict.known.summed)}
    else:
        bases = {basis: _figure_json(figure)}
    month_of_figure = figure.month if figure else month
    estimate, lower, upper = (figure.estimate, figure.lower, figure.upper) if figure else (None, None, None)
    values = {
        "state": status.state, "level": status.level, "month": month_of_figure,
        "source": figure.source if figure else "none", "estimate": estimate, "lower": lower, "upper": upper,
        "threshold": status.threshold, "explanation": status.explanation, "evaluated_at": now,
        "basis": figure.basis if figure else basis, "coverage": _coverage_json(status.coverage),
        "considered": {"figures": considered, "bases": bases,
                       "excluded": verdict.known.excluded if verdict.known is not None else []},
    }
    current = ComplianceStatus.objects.filter(group=group, licence_version=version, rule=rule).first()
    previous_state = current.state if current else ""
    if status.state in _BLOCKING:
        values["crossed_on"] = current.crossed_on if current and previous_state in _BLOCKING else today
    else:
        values["crossed_on"] = None
    if current is None:
        current = ComplianceStatus.objects.create(group=group, licence_version=version, rule=rule, since=changed_at,
                                                  **values)
    else:
        if previous_state != status.state:
            values["since"] = changed_at
        for field, value in values.items():
            setattr(current, field, value)
        current.save()
    if previous_state != status.state:
        StatusChange.objects.create(
            group=group, licence_version=version, rule=rule, previous_state=previous_state, state=status.state,
            month=month_of_figure, estimate=estimate, lower=lower, upper=upper,
            explanation=status.explanation, changed_at=changed_at,
        )
        audit_record(action="status.changed", actor="evaluation", group=group, obj=current, data={
            "licence_version": version.slug, "rule": rule, "from": previous_state, "to": status.state,
            "month": values["month"], "estimate": values["estimate"], "lower": values["lower"],
            "upper": values["upper"],
        })
    return current


def _decision_store(group: AffiliateGroup, version: LicenceVersion, policy: GroupPolicy, status: rules.Status,
                    stored: ComplianceStatus, today: dt.date, now: dt.datetime) -> AccessDecision:
    # The threshold part of the decision, for the group; acceptance and suspension are per organisation and
    # are checked when a caller asks (access_check).
    decision = rules.decide_access(
        status=status, mode=policy.mode, grace_days=policy.grace_days, crossed_on=stored.crossed_on, today=today,
        licence_accepted=True, aup_accepted=True, on_unknown=policy.on_unknown,
    )
    row, created = AccessDecision.objects.get_or_create(
        group=group, licence_version=version,
        defaults={"allowed": decision.allowed, "reason": decision.reason, "detail": decision.detail, "decided_at": now},
    )
    if not created and (row.allowed, row.reason, row.detail) != (decision.allowed, decision.reason, decision.detail):
        changed = row.allowed != decision.allowed
        row.allowed, row.reason, row.detail, row.decided_at = decision.allowed, decision.reason, decision.detail, now
        row.save()
        if changed:
            audit_record(action="access.changed", actor="evaluation", group=group, obj=row, data={
                "licence_version": version.slug, "allowed": decision.allowed, "reason": decision.reason})
    return row


# --- alerts -------------------------------------------------------------------------------------------------


def _alerts_raise(group: AffiliateGroup, version: LicenceVersion, policy: GroupPolicy,
                  figure: rules.Figure | None, statuses: dict[EvaluationRule, rules.Status],
                  forecast: rules.Forecast, today: dt.date, month: dt.date) -> list[Alert]:
    """Announce levels newly crossed (the highest of them), and recoveries, once per level and month."""
    states = {s.level: s for s in AlertLevelState.objects.filter(group=group, licence_version=version)}
    previously = {name for name, s in states.items() if s.active}
    threshold = version.mau_threshold
    if figure is not None:
        active = rules.active_levels(
            estimate=figure.estimate, lower=figure.lower, upper=figure.upper, threshold=threshold,
            levels=tuple(policy.levels), previously_active=previously, hysteresis=policy.hysteresis,
        )
    else:
        active = set()
    accurate = statuses[EvaluationRule.LICENCE_ACCURATE]
    if accurate.state in (rules.OVER, rules.UNCERTAIN):
        active.add(accurate.state)  # the licence-accurate test failing is always an alert
    if rules.projected_within(forecast, today=today, days=policy.forecast_days):
        active.add("forecast")
    if any(s.state == rules.GRANTED for s in statuses.values()):
        active -= {"over", "uncertain"}  # a grant covers it: nothing to escalate
    if accurate.state == rules.EXEMPT:
        active = set()  # clause 1.b.ii: the 700M clause does not apply, so its levels announce nothing
    now = timezone.now()
    for name in active ^ previously:
        AlertLevelState.objects.update_or_create(group=group, licence_version=version, level=name,
                                                 defaults={"active": name in active, "changed_at": now})
    created: list[Alert] = []
    figures = _figures(figure, statuses, forecast, threshold)
    recovered = previously - active
    if "over" in active:
        recovered.discard("uncertain")  # uncertain -> over got worse: an escalation, not a recovery
    for kind, levels in ((Alert.Kind.RAISED, active - previously), (Alert.Kind.RECOVERED, recovered)):
        if not levels:
            continue
        top = max(levels, key=rules.level_rank)
        message = _message(group, version, top, figure, forecast, statuses, raised=kind == Alert.Kind.RAISED)
        alert = _alert_once(group, version, top, kind, month, figures, message)
        if alert:
            created.append(alert)
    return created


def _alert_once(group: AffiliateGroup, version: LicenceVersion, level: str, kind: str, month: dt.date,
                figures: dict, message: str, *, rule: str = EvaluationRule.PROJECTED) -> Alert | None:
    if Alert.objects.filter(group=group, licence_version=version, level=level, month=month, kind=kind).exists():
        return None
    alert = Alert.objects.create(group=group, licence_version=version, level=level, kind=kind, month=month,
                                 rule=rule, figures=figures, message=message)
    audit_record(action=f"alert.{kind}", actor="evaluation", group=group, obj=alert,
                 data={"licence_version": version.slug, "level": level, "month": month, "figures": figures})
    return alert


def _figures(figure: rules.Figure | None, statuses: dict[EvaluationRule, rules.Status], forecast: rules.Forecast,
             threshold: int) -> dict:
    return {
        "threshold": threshold,
        "month": figure.month.isoformat() if figure else None,
        "estimate": figure.estimate if figure else None,
        "lower": figure.lower if figure else None,
        "upper": figure.upper if figure else None,
        "confidence": 0.95,
        "statuses": {rule: status.state for rule, status in statuses.items()},
        "forecast_crossing": forecast.crossing_date.isoformat() if forecast.crossing_date else None,
        "forecast_interval": [d.isoformat() if d else None for d in (forecast.earliest, forecast.latest)],
    }


def _message(group: AffiliateGroup, version: LicenceVersion, level: str, figure: rules.Figure | None,
             forecast: rules.Forecast, statuses: dict[EvaluationRule, rules.Status], *, raised: bool) -> str:
    subject = f"{group.name}, {version.name}"
    if level == "forecast":
        what = (f"projected to pass {version.mau_threshold:,} monthly active users on "
                f"{forecast.crossing_date} (between {forecast.earliest} and {forecast.latest})")
    elif level in ("over", "uncertain"):
        accurate = statuses[EvaluationRule.LICENCE_ACCURATE]
        what = accurate.explanation if accurate.state == level else statuses[EvaluationRule.PROJECTED].explanation
    else:
        what = f"at or above {level} of the {version.mau_threshold:,} limit"
    figures = (f" Month to date projected: {figure.estimate:,} (95% interval {figure.lower:,} to {figure.upper:,})."
               if figure else "")
    if raised:
        return f"{subject}: {what}.{figures}"
    return f"{subject}: back below the '{level}' level.{figures}"


def alert_deliver(*, alert: Alert) -> int:
    """Queue a webhook delivery per active endpoint, then email the policy's recipients; mark it dispatched.

    Webhooks first (they only insert rows, and are retried from the database), then email. Safe to run again
    after a failure: deliveries are unique per alert and endpoint, and email is skipped once sent. A beat
    sweep re-dispatches alerts left undispatched (a broker or SMTP outage), so none is lost.
    """
    from django.core.mail import send_mail

    from governance.webhooks.services import webhook_event_for_alert

    policy = group_policy_get(group=alert.group)
    deliveries = webhook_event_for_alert(alert=alert) if policy.webhooks_enabled else []
    if policy.email_enabled and policy.email_recipients and alert.emailed_at is None:
        subject = f"[Corral] {alert.get_kind_display()}: {alert.message[:150]}"
        send_mail(subject, f"{alert.message}\n\n{settings.SITE_URL}/admin/governance/alert/{alert.pk}/change/",
                  settings.ALERT_FROM_EMAIL, policy.email_recipients)
        Alert.objects.filter(pk=alert.pk, emailed_at__isnull=True).update(emailed_at=timezone.now())
    Alert.objects.filter(pk=alert.pk, dispatched_at__isnull=True).update(dispatched_at=timezone.now())
    return len(deliveries)


def alerts_undispatched(*, older_than: dt.timedelta = dt.timedelta(seconds=60)) -> list[int]:
    """Alerts whose dispatch never completed (the broker was down, SMTP failed), for the beat sweep."""
    cutoff = timezone.now() - older_than
    return list(Alert.objects.filter(dispatched_at__isnull=True, created_at__lt=cutoff)
                .exclude(kind=Alert.Kind.TEST).values_list("pk", flat=True)[:100])


def alert_acknowledge(*, alert: Alert, actor: str, note: str = "") -> Alert:
    """Acknowledge an open alert once, with an optional note (kept on the alert and in the audit log)."""
    note = note.strip()
    if len(note) > 2000:
        raise ValidationError({"note": f"At most 2,000 characters; got {len(note):,}."})
    with transaction.atomic():
        changed = Alert.objects.filter(pk=alert.pk, acknowledged_at__isnull=True).update(
            acknowledged_at=timezone.now(), acknowledged_by=actor, acknowledgement_note=note)
        if changed:
            audit_record(action="alert.acknowledged", actor=actor, group=alert.group, obj=alert,
                         data={"note": note} if note else {})
    alert.refresh_from_db()
    return alert


# --- the gate -----------------------------------------------------------------------------------------------

_DECISION_CACHE_SECONDS = 5


def _decision_cache_key(group_id: int) -> str:
    return f"access:group:{group_id}"


def access_check(*, organisation: Organisation, licence_version: LicenceVersion, fresh: bool = False
                 ) -> rules.Decision:
    """May keys of ``organisation`` use ``licence_version`` now? What the gateway and provisioner ask.

    Combines the organisation's own state (suspension, acceptances) with the group's stored decision; the
    group part is cached for at most 5 seconds, so a new decision takes effect within that time. ``fresh``
    reads it from the database (the gateway caches the whole answer itself).
    """
    if organisation.status != Organisation.Status.ACTIVE:
        return rules.Decision(False, "organisation_suspended", "The organisation is suspended.")
    state = acceptance_state(organisation=organisation, licence_version=licence_version)
    if not state.licence_accepted:
        return rules.Decision(False, "licence_not_accepted",
                              f"{organisation.name} has not accepted the {licence_version.name} licence"
                              f"{' (text ' + state.licence_required + ')' if state.licence_required else ''}.")
    if not state.aup_accepted:
        return rules.Decision(False, "aup_not_accepted",
                              f"{organisation.name} has not accepted the {licence_version.name} Acceptable Use Policy"
                              f"{' (text ' + state.aup_required + ')' if state.aup_required else ''}.")
    key = _decision_cache_key(organisation.group_id)
    decisions = None if fresh else cache.get(key)
    if decisions is None:
        decisions = {d.licence_version_id: (d.allowed, d.reason, d.detail)
                     for d in AccessDecision.objects.filter(group_id=organisation.group_id)}
        cache.set(key, decisions, timeout=_DECISION_CACHE_SECONDS)
    found = decisions.get(licence_version.pk)
    if found is None:
        return rules.Decision(True, "unknown", "Allowed; this group and version have not been evaluated yet.")
    if not found[0]:
        # Clause 1.b.ii: an organisation that receives Llama only inside another licensee's integrated product is
        # outside Section 2, whatever its group's figure (read only when the group's decision blocks).
        exemption = organisation_exemption(organisation=organisation)
        if exemption is not None:
            return rules.Decision(True, "exempt", f"Exempt under clause 1.b.ii ({exemption.supplier}): Section 2's "
                                                  f"700M clause does not apply to {organisation.name}.")
    return rules.Decision(*found)


# --- scheduling ---------------------------------------------------------------------------------------------

def evaluation_schedule(*, group_id: int, urgent: bool = False) -> None:
    """Evaluate a group soon after new activity: one task for a burst (see governance/debounce.py).

    ``urgent`` for a change that is not activity (a grant): an evaluation already looping under sustained
    activity goes round again at once instead of after its 5-second spacing."""
    queue.evaluation_soon(group_id, urgent=urgent)

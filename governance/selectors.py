"""Reads of metering: distinct users of a product, an organisation or an affiliate group, with error bounds.

Every figure is the union of the scope's rollups for the period and of the parts not yet compacted, so a
batch counts from the moment it was acknowledged, whatever the workers are doing.
"""

from __future__ import annotations

import calendar
import datetime as dt
from dataclasses import dataclass, field
from typing import Any

from django.conf import settings
from django.db.models import QuerySet

from governance import sketches
from governance.models import ActivityPart, ActivitySource, Rollup
from licensing.models import AffiliateGroup, Organisation, Product

_DAY_SCOPE = {Product: Rollup.Scope.PRODUCT_DAY, Organisation: Rollup.Scope.ORGANISATION_DAY,
              AffiliateGroup: Rollup.Scope.GROUP_DAY}
_MONTH_SCOPE = {Product: Rollup.Scope.PRODUCT_MONTH, Organisation: Rollup.Scope.ORGANISATION_MONTH,
                AffiliateGroup: Rollup.Scope.GROUP_MONTH}
_SOURCE_TALLY = {ActivitySource.ID_BATCH: "id_batches", ActivitySource.SKETCH: "sketch_uploads",
                 ActivitySource.GATEWAY: "gateway_flushes"}

Scope = Product | Organisation | AffiliateGroup


def month_bounds(month: dt.date) -> tuple[dt.date, dt.date]:
    first = month.replace(day=1)
    return first, first.replace(day=calendar.monthrange(first.year, first.month)[1])


def _pending_parts(scope: Scope, start: dt.date, end: dt.date) -> QuerySet[ActivityPart]:
    parts = ActivityPart.objects.filter(day__gte=start, day__lte=end)
    if isinstance(scope, Product):
        return parts.filter(product=scope)
    if isinstance(scope, Organisation):
        return parts.filter(product__organisation=scope)
    return parts.filter(product__organisation__group=scope)


@dataclass
class Count:
    """A distinct count over a period, with the sources that fed it."""

    period: dict[str, Any]
    estimate: sketches.Estimate
    sources: dict[str, int] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        e = self.estimate
        return {
            **self.period,
            "estimate": e.estimate,
            "lower": e.lower,
            "upper": e.upper,
            "confidence": e.confidence,
            "method": (
                f"Apache DataSketches HLL union, lgK {e.lg_k}; interval at {sketches.NUM_STD_DEV} standard "
                "deviations of DataSketches' bound for merged sketches"
            ),
            "lg_k": e.lg_k,
            "sources": self.sources,
        }


def _tally(rollups: list[Rollup], parts: list[dict[str, Any]]) -> dict[str, int]:
    totals = {"id_batches": 0, "sketch_uploads": 0, "gateway_flushes": 0, "ids_received": 0,
              "pending_parts": len(parts)}
    for rollup in rollups:
        for name in ("id_batches", "sketch_uploads", "gateway_flushes", "ids_received"):
            totals[name] += getattr(rollup, name)
    for part in parts:
        totals[_SOURCE_TALLY[part["source"]]] += 1
        totals["ids_received"] += part["items"]
    return totals


def _union_count(scope: Scope, rollups: QuerySet[Rollup], start: dt.date, end: dt.date
                 ) -> tuple[sketches.Estimate, dict[str, int]]:
    # Parts first, rollups second: compaction folding parts in between makes them appear in both, which a
    # distinct count does not mind; read the other way round they could appear in neither.
    parts = list(_pending_parts(scope, start, end).values("sketch", "source", "items"))
    rollups = list(rollups)
    lg_k = settings.METERING_LG_K
    merged = sketches.union([bytes(r.sketch) for r in rollups] + [bytes(p["sketch"]) for p in parts], lg_k)
    return sketches.estimate_of(merged), _tally(rollups, parts)


def mau_month(*, scope: Scope, month: dt.date) -> Count:
    """Distinct users of the scope in a calendar month (a person on two products or affiliates counts once)."""
    start, end = month_bounds(month)
    rollups = Rollup.objects.filter(scope=_MONTH_SCOPE[type(scope)], scope_id=scope.pk, period=start)
    estimate, sources = _union_count(scope, rollups, start, end)
    return Count({"month": start.strftime("%Y-%m")}, estimate, sources)


def mau_rolling(*, scope: Scope, ending: dt.date, days: int = 30) -> Count:
    """Distinct users of the scope over the ``days`` days ending on ``ending`` (inclusive)."""
    start = ending - dt.timedelta(days=days - 1)
    rollups = Rollup.objects.filter(scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period__gte=start,
                                    period__lte=ending)
    estimate, sources = _union_count(scope, rollups, start, ending)
    return Count({"from": start.isoformat(), "to": ending.isoformat(), "days": days}, estimate, sources)


def dau(*, scope: Scope, day: dt.date) -> Count:
    rollups = Rollup.objects.filter(scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period=day)
    estimate, sources = _union_count(scope, rollups, day, day)
    return Count({"day": day.isoformat()}, estimate, sources)


@dataclass(frozen=True)
class SeriesPoint:
    day: dt.date
    dau: sketches.Estimate
    rolling: sketches.Estimate


def daily_series(*, scope: Scope, start: dt.date, end: dt.date, window: int = 30) -> list[SeriesPoint]:
    """DAU and rolling-``window``-day distinct users for every day from ``start`` to ``end``."""
    first = start - dt.timedelta(days=window - 1)
    lg_k = settings.METERING_LG_K
    per_day: dict[dt.date, list[bytes]] = {}
    pending = list(_pending_parts(scope, first, end).values("day", "sketch"))  # before the rollups: see above
    for rollup in Rollup.objects.filter(
        scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period__gte=first, period__lte=end
    ).only("period", "sketch"):
        per_day.setdefault(rollup.period, []).append(bytes(rollup.sketch))
    for part in pending:
        per_day.setdefault(part["day"], []).append(bytes(part["sketch"]))
    days = [first + dt.timedelta(days=i) for i in range((end - first).days + 1)]
    day_sketches = [sketches.union(per_day.get(day, []), lg_k) for day in days]
    windows = sketches.sliding_unions(day_sketches, window, lg_k)
    offset = window - 1
    return [
        SeriesPoint(day=days[i], dau=sketches.estimate_of(day_sketches[i]), rolling=sketches.estimate_of(windows[i]))
        for i in range(offset, len(days))
    ]


def mau_month_many(*, scopes: list[Scope], month: dt.date) -> dict[int, Count]:
    """``mau_month`` of several scopes of one type (products, organisations or groups), by primary key, in two
    queries whatever their number: what a page listing every product's or group's figure reads."""
    if not scopes:
        return {}
    kinds = {type(scope) for scope in scopes}
    if len(kinds) != 1:
        raise ValueError("mau_month_many takes scopes of one type")
    kind = kinds.pop()
    start, end = month_bounds(month)
    ids = [scope.pk for scope in scopes]
    owner = {Product: "product_id", Organisation: "product__organisation_id",
             AffiliateGroup: "product__organisation__group_id"}[kind]
    parts_by_scope: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
    # Parts before rollups, as in _union_count.
    for part in ActivityPart.objects.filter(day__gte=start, day__lte=end, **{f"{owner}__in": ids}).values(
            "sketch", "source", "items", owner):
        parts_by_scope[part[owner]].append(part)
    rollups_by_scope: dict[int, list[Rollup]] = {pk: [] for pk in ids}
    for rollup in Rollup.objects.filter(scope=_MONTH_SCOPE[kind], scope_id__in=ids, period=start):
        rollups_by_scope[rollup.scope_id].append(rollup)
    lg_k = settings.METERING_LG_K
    counts = {}
    for pk in ids:
        rollups, parts = rollups_by_scope[pk], parts_by_scope[pk]
        merged = sketches.union([bytes(r.sketch) for r in rollups] + [bytes(p["sketch"]) for p in parts], lg_k)
        counts[pk] = Count({"month": start.strftime("%Y-%m")}, sketches.estimate_of(merged), _tally(rollups, parts))
    return counts

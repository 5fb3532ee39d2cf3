"""Reads of the governance app: metering (distinct users of a product, an organisation or an affiliate group,
with error bounds), then the compliance records the pages list (statuses, alerts, declarations, webhooks).

Every figure is the union of the scope's rollups for the period and of the parts not yet compacted, so a
batch counts from the moment it was acknowledged, whatever the workers are doing.

A stored sketch that cannot be read never takes a figure down: the read that meets it quarantines it
(governance/metering/quarantine.py), reads the rows again, and the figure names what it leaves out
(``Count.excluded``). So a read may write, once per unreadable sketch.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from datasketches import hll_sketch
from django.conf import settings
from django.db.models import QuerySet

from access.models import AffiliateGroup, Organisation
from governance.metering import sketches
from governance.models import (
    ActivityPart,
    ActivitySource,
    ProductMeteringPolicy,
    Rollup,
)
from licensing.models import Product
from licensing.months import month_bounds

_DAY_SCOPE = {Product: Rollup.Grain.PRODUCT_DAY, Organisation: Rollup.Grain.ORGANISATION_DAY,
              AffiliateGroup: Rollup.Grain.GROUP_DAY}
_MONTH_SCOPE = {Product: Rollup.Grain.PRODUCT_MONTH, Organisation: Rollup.Grain.ORGANISATION_MONTH,
                AffiliateGroup: Rollup.Grain.GROUP_MONTH}
_SOURCE_TALLY = {ActivitySource.ID_BATCH: "id_batches", ActivitySource.SKETCH: "sketch_uploads",
                 ActivitySource.GATEWAY: "gateway_flushes"}

# What is metered: a product, an organisation (its products) or an affiliate group (its organisations'). Not to
# be confused with an API key's scope (governance.models.Scope) or a rollup's grain (Rollup.Grain).
Metered = Product | Organisation | AffiliateGroup



def _pending_parts(scope: Metered, start: dt.date, end: dt.date) -> QuerySet[ActivityPart]:
    parts = ActivityPart.objects.filter(day__gte=start, day__lte=end, quarantined_at__isnull=True)
    if isinstance(scope, Product):
        return parts.filter(product=scope)
    if isinstance(scope, Organisation):
        return parts.filter(product__organisation=scope)
    return parts.filter(product__organisation__group=scope)


def _live_rollups(**lookups: Any) -> QuerySet[Rollup]:
    return Rollup.objects.filter(quarantined_at__isnull=True, **lookups)


# --- reading stored sketches --------------------------------------------------------------------------------


class _Quarantined(Exception):
    """Stored sketches were quarantined during a read: the rows it read have changed, read them again."""


@dataclass(frozen=True)
class _Stored:
    kind: str  # "part" or "rollup"
    pk: int
    data: bytes = field(repr=False, compare=False)


_ATTEMPTS = 3


def _merge(items: list[_Stored], *, quarantine: bool) -> tuple[hll_sketch, sketches.Estimate]:
    """The union of stored sketches and its estimate (``sketches.sound_union``). Sketches that cannot be read
    are quarantined, and _Quarantined raised so the caller reads the rows again; with ``quarantine`` off they
    are only left out."""
    merged, estimate, unreadable = sketches.sound_union({(i.kind, i.pk): i.data for i in items},
                                                        settings.METERING_LG_K)
    if unreadable and quarantine:
        from governance.metering.quarantine import sketches_quarantine

        sketches_quarantine(parts={pk: why for (kind, pk), why in unreadable.items() if kind == "part"},
                            rollups={pk: why for (kind, pk), why in unreadable.items() if kind == "rollup"})
        raise _Quarantined
    return merged, estimate


def _reading(read: Any) -> Any:
    """``read(quarantine=...)``, again after each quarantine; the last attempt only leaves sketches out."""
    for attempt in range(_ATTEMPTS):
        try:
            return read(quarantine=attempt < _ATTEMPTS - 1)
        except _Quarantined:
            continue
    raise AssertionError("unreachable: the last attempt does not quarantine")


def _excluded(product_ids: Any, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """The quarantined parts and product-day rollups of these products in the period: what figures leave out.

    (A quarantined rollup above a product-day was rebuilt from the days or products below it: its data is
    still counted, so it is not listed.)"""
    parts = ActivityPart.objects.filter(product_id__in=product_ids, day__gte=start, day__lte=end,
                                        quarantined_at__isnull=False)
    rollups = Rollup.objects.filter(scope=Rollup.Grain.PRODUCT_DAY, scope_id__in=product_ids, period__gte=start,
                                    period__lte=end, quarantined_at__isnull=False)
    return sorted(
        [{"kind": "part", "id": pk, "product": product, "day": day.isoformat(), "reason": reason,
          "quarantined_at": at.isoformat()}
         for pk, product, day, reason, at in parts.values_list("pk", "product_id", "day", "quarantine_reason",
                                                               "quarantined_at")
         if at is not None]  # never None (the filter above); the check narrows the type
        + [{"kind": "rollup", "id": pk, "product": product, "day": day.isoformat(), "reason": reason,
            "quarantined_at": at.isoformat()}
           for pk, product, day, reason, at in rollups.values_list("pk", "scope_id", "period", "quarantine_reason",
                                                                   "quarantined_at")
           if at is not None],
        key=lambda e: (e["day"], e["product"], e["kind"], e["id"]))


def _product_ids(scope: Metered) -> Any:
    if isinstance(scope, Product):
        return [scope.pk]
    if isinstance(scope, Organisation):
        return Product.objects.filter(organisation=scope).values("pk")
    return Product.objects.filter(organisation__group=scope).values("pk")


def excluded_sketches(*, scope: Metered, start: dt.date, end: dt.date) -> list[dict[str, Any]]:
    """What the scope's figures for days ``start`` to ``end`` leave out: quarantined sketches, with why."""
    return _excluded(_product_ids(scope), start, end)


@dataclass
class Count:
    """A distinct count over a period, with the sources that fed it and the quarantined sketches it leaves out
    (read when first asked for: pages that show only the estimate do not pay for the query)."""

    period: dict[str, Any]
    estimate: sketches.Estimate
    sources: dict[str, int] = field(default_factory=dict)
    read_excluded: Callable[[], list[dict[str, Any]]] = field(default=list, repr=False)

    @functools.cached_property
    def excluded(self) -> list[dict[str, Any]]:
        return self.read_excluded()

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
            "sources": {**self.sources, "quarantined": len(self.excluded)},
            "excluded": self.excluded,
        }


def _tally(rollups: list[Rollup], parts: Sequence[Mapping[str, Any]]) -> dict[str, int]:
    totals = {"id_batches": 0, "sketch_uploads": 0, "gateway_flushes": 0, "ids_received": 0,
              "pending_parts": len(parts)}
    for rollup in rollups:
        for name in ("id_batches", "sketch_uploads", "gateway_flushes", "ids_received"):
            totals[name] += getattr(rollup, name)
    for part in parts:
        totals[_SOURCE_TALLY[part["source"]]] += 1
        totals["ids_received"] += part["items"]
    return totals


def _union_count(scope: Metered, rollups: QuerySet[Rollup], start: dt.date, end: dt.date
                 ) -> tuple[sketches.Estimate, dict[str, int]]:
    def read(*, quarantine: bool) -> tuple[sketches.Estimate, dict[str, int]]:
        # Parts first, rollups second: compaction folding parts in between makes them appear in both, which a
        # distinct count does not mind; read the other way round they could appear in neither.
        parts = list(_pending_parts(scope, start, end).values("pk", "sketch", "source", "items"))
        rows = list(rollups.all())
        items = ([_Stored("rollup", r.pk, bytes(r.sketch)) for r in rows]
                 + [_Stored("part", p["pk"], bytes(p["sketch"])) for p in parts])
        _merged, estimate = _merge(items, quarantine=quarantine)
        return estimate, _tally(rows, parts)

    return _reading(read)


def _count(scope: Metered, period: dict[str, Any], rollups: QuerySet[Rollup], start: dt.date, end: dt.date) -> Count:
    estimate, sources = _union_count(scope, rollups, start, end)
    return Count(period, estimate, sources, lambda: excluded_sketches(scope=scope, start=start, end=end))


def mau_month(*, scope: Metered, month: dt.date) -> Count:
    """Distinct users of the scope in a calendar month (a person on two products or affiliates counts once)."""
    start, end = month_bounds(month)
    rollups = _live_rollups(scope=_MONTH_SCOPE[type(scope)], scope_id=scope.pk, period=start)
    return _count(scope, {"month": start.strftime("%Y-%m")}, rollups, start, end)


def mau_rolling(*, scope: Metered, ending: dt.date, days: int = 30) -> Count:
    """Distinct users of the scope over the ``days`` days ending on ``ending`` (inclusive)."""
    start = ending - dt.timedelta(days=days - 1)
    rollups = _live_rollups(scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period__gte=start, period__lte=ending)
    return _count(scope, {"from": start.isoformat(), "to": ending.isoformat(), "days": days}, rollups, start, ending)


def dau(*, scope: Metered, day: dt.date) -> Count:
    rollups = _live_rollups(scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period=day)
    return _count(scope, {"day": day.isoformat()}, rollups, day, day)


def product_day_sketch(*, product: Product, day: dt.date) -> bytes | None:
    """The union of what is stored for a product and day (HLL_8 image), or None when nothing is: what a new
    upload is checked against."""
    def read(*, quarantine: bool) -> bytes | None:
        parts = _pending_parts(product, day, day).values_list("pk", "sketch")
        rows = _live_rollups(scope=Rollup.Grain.PRODUCT_DAY, scope_id=product.pk, period=day).values_list(
            "pk", "sketch")
        items = [_Stored("part", pk, bytes(image)) for pk, image in parts] + [
            _Stored("rollup", pk, bytes(image)) for pk, image in rows]
        if not items:
            return None
        merged, _estimate = _merge(items, quarantine=quarantine)
        return sketches.serialize(merged)

    return _reading(read)


def product_metering_policy(*, product: Product) -> ProductMeteringPolicy:
    """The product's metering policy; an unsaved one (no ceiling) until its organisation sets one."""
    return ProductMeteringPolicy.objects.filter(product=product).first() or ProductMeteringPolicy(product=product)


@dataclass(frozen=True)
class SeriesPoint:
    day: dt.date
    dau: sketches.Estimate
    rolling: sketches.Estimate


def daily_series(*, scope: Metered, start: dt.date, end: dt.date, window: int = 30) -> list[SeriesPoint]:
    """DAU and rolling-``window``-day distinct users for every day from ``start`` to ``end``."""
    first = start - dt.timedelta(days=window - 1)
    lg_k = settings.METERING_LG_K

    def read(*, quarantine: bool) -> list[SeriesPoint]:
        per_day: dict[dt.date, list[_Stored]] = {}
        pending = list(_pending_parts(scope, first, end).values_list("day", "pk", "sketch"))  # before the rollups
        for period, pk, image in _live_rollups(
            scope=_DAY_SCOPE[type(scope)], scope_id=scope.pk, period__gte=first, period__lte=end
        ).values_list("period", "pk", "sketch"):
            per_day.setdefault(period, []).append(_Stored("rollup", pk, bytes(image)))
        for day, pk, image in pending:
            per_day.setdefault(day, []).append(_Stored("part", pk, bytes(image)))
        days = [first + dt.timedelta(days=i) for i in range((end - first).days + 1)]
        merged = [_merge(per_day[day], quarantine=quarantine) if day in per_day else None for day in days]
        day_sketches = [m[0] if m else sketches.empty(lg_k) for m in merged]
        windows = sketches.sliding_unions(day_sketches, window, lg_k)
        zero = sketches.Estimate(0, 0, 0, lg_k)
        return [
            SeriesPoint(day=days[i], dau=merged[i][1] if merged[i] else zero,  # type: ignore[index]
                        rolling=sketches.estimate_of(windows[i]))
            for i in range(window - 1, len(days))
        ]

    return _reading(read)


def mau_month_many(*, scopes: Sequence[Metered], month: dt.date) -> dict[int, Count]:
    """``mau_month`` of several scopes of one type (products, organisations or groups), by primary key, in a
    fixed number of queries whatever their number: what a page listing every product's or group's figure reads."""
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

    def read(*, quarantine: bool) -> dict[int, Count]:
        parts_by_scope: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
        # Parts before rollups, as in _union_count.
        for part in ActivityPart.objects.filter(day__gte=start, day__lte=end, quarantined_at__isnull=True,
                                                **{f"{owner}__in": ids}).values("pk", "sketch", "source", "items",
                                                                                owner):
            parts_by_scope[part[owner]].append(part)
        rollups_by_scope: dict[int, list[Rollup]] = {pk: [] for pk in ids}
        for rollup in _live_rollups(scope=_MONTH_SCOPE[kind], scope_id__in=ids, period=start):
            rollups_by_scope[rollup.scope_id].append(rollup)
        excluded = functools.cache(lambda: _excluded_by_scope(kind, ids, start, end))  # once, for all of them
        counts = {}
        for pk in ids:
            rollups, parts = rollups_by_scope[pk], parts_by_scope[pk]
            items = ([_Stored("rollup", r.pk, bytes(r.sketch)) for r in rollups]
                     + [_Stored("part", p["pk"], bytes(p["sketch"])) for p in parts])
            _merged, estimate = _merge(items, quarantine=quarantine)
            counts[pk] = Count({"month": start.strftime("%Y-%m")}, estimate, _tally(rollups, parts),
                               functools.partial(lambda pk: excluded()[pk], pk))
        return counts

    return _reading(read)


def _excluded_by_scope(kind: type[Metered], ids: list[int], start: dt.date, end: dt.date
                       ) -> dict[int, list[dict[str, Any]]]:
    owner = {Product: "pk", Organisation: "organisation_id", AffiliateGroup: "organisation__group_id"}[kind]
    scope_of = dict(Product.objects.filter(**{f"{owner}__in": ids}).values_list("pk", owner))
    by_scope: dict[int, list[dict[str, Any]]] = {pk: [] for pk in ids}
    for entry in _excluded(list(scope_of), start, end):
        by_scope[scope_of[entry["product"]]].append(entry)
    return by_scope

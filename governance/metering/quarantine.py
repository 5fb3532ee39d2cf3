"""Stored sketches that cannot be read are quarantined, so that no figure depends on them (docs/metering.md,
"Quarantine").

A part is flagged where it lies: compaction and every read skip it. A rollup is copied into a flagged row that
keeps its bytes, and the live row is rebuilt from the rollups below it (a product-day, the finest, is emptied);
then every rollup above it is rebuilt as well, so the product's, the organisation's and the group's figures all
leave out the same data. Each quarantine is audited and raised as an alert to the group's admins (the group
policy's email recipients, its webhooks, the portal's alert list).

Reads and compaction call this when a sketch fails ``sketches.stored_estimate``: it does not deserialize, gives
no finite count, or counts more people than there are.
"""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

from django.conf import settings
from django.db import transaction
from django.db.models import Q
from django.utils import timezone

from access.audit import audit_record
from access.models import AffiliateGroup, Organisation
from governance import queue
from governance.metering import sketches
from governance.models import ActivityPart, Alert, Rollup
from licensing.models import Product
from licensing.months import month_end, month_start

logger = logging.getLogger(__name__)

QUARANTINE_LEVEL = "quarantine"  # Alert.level of the alerts raised here
_TALLIES = ("id_batches", "sketch_uploads", "gateway_flushes", "ids_received")
S = Rollup.Grain


def sketches_quarantine(*, parts: dict[int, str], rollups: dict[int, str]) -> int:
    """Quarantine parts and rollups (by id, with the reason each cannot be read). Returns how many this call
    quarantined; one already quarantined by someone else is skipped."""
    done = sum(part_quarantine(part_id=pk, reason=reason) for pk, reason in parts.items())
    return done + sum(rollup_quarantine(rollup_id=pk, reason=reason) for pk, reason in rollups.items())


def part_quarantine(*, part_id: int, reason: str) -> bool:
    """Flag a part: it stays stored, compaction never folds it and no figure includes it."""
    with transaction.atomic():
        # Waits for a compaction that holds the part; if it folded and deleted it meanwhile, nothing is left to do.
        flagged = ActivityPart.objects.filter(pk=part_id, quarantined_at__isnull=True).update(
            quarantined_at=timezone.now(), quarantine_reason=reason[:300])
        if flagged != 1:
            return False
        part = ActivityPart.objects.select_related("product__organisation__group").get(pk=part_id)
        product = part.product
        _announce(
            organisation=product.organisation, period=part.day, obj=part,
            detail={"kind": "part", "id": part.pk, "product": product.pk, "day": part.day.isoformat(),
                    "source": part.source, "reason": reason},
            message=(f"{product.name} ({product.organisation.name}), {part.day.isoformat()}: a stored "
                     f"{part.get_source_display().lower()} cannot be read ({reason}). It is kept, flagged and left "
                     "out of every figure; send that day's activity again to count those users."),
        )
    return True


def rollup_quarantine(*, rollup_id: int, reason: str) -> bool:
    """Keep an unreadable rollup in a flagged copy, rebuild its live row and every rollup above it without it.

    The rows written are locked first, in one statement and in the order compaction locks them, so the two
    cannot deadlock; a compaction waiting on them then merges its parts into the rebuilt rows. A rollup below
    found unreadable while rebuilding is left out, then quarantined in turn (its own transaction).
    """
    row = Rollup.objects.filter(pk=rollup_id, quarantined_at__isnull=True).first()
    if row is None:
        return False
    key = (row.scope, row.scope_id, row.period)
    owner = _owner(row.scope, row.scope_id)
    above = _above(key, owner)
    unreadable_below: dict[int, str] = {}
    with transaction.atomic():
        locked = _lock([key, *above])
        live = locked.get(key)
        if live is None or live.pk != rollup_id or _readable(live):
            return False  # quarantined, or rebuilt as a rollup above another one, by a concurrent reader
        _keep_copy(live, reason)
        if row.scope == S.PRODUCT_DAY:
            _write(live, sketches.empty(settings.METERING_LG_K))
        else:
            unreadable_below |= _rebuild(live, kept=True)
        for ancestor in above:
            if ancestor in locked:
                unreadable_below |= _rebuild(locked[ancestor])
        _announce(
            organisation=owner["organisation"], group_id=owner["group_id"], period=row.period, obj=live,
            detail={"kind": "rollup", "id": live.pk, "scope": row.scope, "scope_id": row.scope_id,
                    "period": row.period.isoformat(), "reason": reason},
            message=_rollup_message(row, owner, reason),
        )
    for pk, why in unreadable_below.items():
        rollup_quarantine(rollup_id=pk, reason=why)
    return True


def _rollup_message(row: Rollup, owner: dict[str, Any], reason: str) -> str:
    if row.scope == S.PRODUCT_DAY:
        product = owner["product"]
        return (f"{product.name} ({product.organisation.name}), {row.period.isoformat()}: the stored total of the "
                f"day cannot be read ({reason}). It is kept, flagged and left out of every figure, and the totals "
                "above it were rebuilt without it; send that day's activity again to count those users.")
    return (f"The stored {row.scope.replace('_', ' ')} total of {owner['name']} for "
            f"{row.period.isoformat()} cannot be read ({reason}). It is kept and flagged; the total was rebuilt "
            "from the daily or per-organisation totals below it.")


def _owner(scope: str, scope_id: int) -> dict[str, Any]:
    """The product, organisation and group a rollup belongs to (as far as its scope goes) and its name."""
    if scope in (S.PRODUCT_DAY, S.PRODUCT_MONTH):
        product = Product.objects.select_related("organisation__group").get(pk=scope_id)
        return {"product": product, "organisation": product.organisation,
                "group_id": product.organisation.group_id, "name": product.name}
    if scope in (S.ORGANISATION_DAY, S.ORGANISATION_MONTH):
        organisation = Organisation.objects.select_related("group").get(pk=scope_id)
        return {"organisation": organisation, "group_id": organisation.group_id, "name": organisation.name}
    group = AffiliateGroup.objects.get(pk=scope_id)
    return {"organisation": None, "group_id": group.pk, "name": group.name}


def _above(key: tuple[str, int, dt.date], owner: dict[str, Any]) -> list[tuple[str, int, dt.date]]:
    """The rollups that sum this one, bottom-up (each is rebuilt from the ones before it)."""
    scope, scope_id, period = key
    month, group_id = month_start(period), owner["group_id"]
    if scope == S.PRODUCT_DAY:
        organisation_id = owner["organisation"].pk
        return [(S.PRODUCT_MONTH, scope_id, month), (S.ORGANISATION_DAY, organisation_id, period),
                (S.ORGANISATION_MONTH, organisation_id, month), (S.GROUP_DAY, group_id, period),
                (S.GROUP_MONTH, group_id, month)]
    if scope == S.ORGANISATION_DAY:
        return [(S.ORGANISATION_MONTH, scope_id, month), (S.GROUP_DAY, group_id, period),
                (S.GROUP_MONTH, group_id, month)]
    if scope == S.GROUP_DAY:
        return [(S.GROUP_MONTH, scope_id, month)]
    return []


def _lock(keys: list[tuple[str, int, dt.date]]) -> dict[tuple[str, int, dt.date], Rollup]:
    matching = Q()
    for scope, scope_id, period in keys:
        matching |= Q(scope=scope, scope_id=scope_id, period=period)
    rows = (Rollup.objects.select_for_update().filter(matching, quarantined_at__isnull=True)
            .order_by("scope", "scope_id", "period"))
    return {(r.scope, r.scope_id, r.period): r for r in rows}


def _below(row: Rollup) -> Any:
    """The live rollups a rollup is the union of: its days, or its products' or organisations' same day."""
    live = Rollup.objects.filter(quarantined_at__isnull=True)
    days = {"period__gte": row.period, "period__lte": month_end(row.period)}
    if row.scope == S.PRODUCT_MONTH:
        return live.filter(scope=S.PRODUCT_DAY, scope_id=row.scope_id, **days)
    if row.scope == S.ORGANISATION_DAY:
        products = Product.objects.filter(organisation_id=row.scope_id).values("pk")
        return live.filter(scope=S.PRODUCT_DAY, scope_id__in=products, period=row.period)
    if row.scope == S.ORGANISATION_MONTH:
        return live.filter(scope=S.ORGANISATION_DAY, scope_id=row.scope_id, **days)
    if row.scope == S.GROUP_DAY:
        organisations = Organisation.objects.filter(group_id=row.scope_id).values("pk")
        return live.filter(scope=S.ORGANISATION_DAY, scope_id__in=organisations, period=row.period)
    return live.filter(scope=S.GROUP_DAY, scope_id=row.scope_id, **days)


def _rebuild(row: Rollup, *, kept: bool = False) -> dict[int, str]:
    """Write into ``row`` the union of the readable rollups below it. Returns those that could not be read.

    A row whose own bytes cannot be read either is kept in a flagged copy before it is overwritten (unless
    ``kept``: the caller just did)."""
    images, unreadable = [], {}
    for pk, image in _below(row).values_list("pk", "sketch"):
        try:
            sketches.stored_estimate(bytes(image))
        except sketches.InvalidSketch as exc:
            unreadable[pk] = str(exc)
        else:
            images.append(bytes(image))
    if not kept:
        try:
            sketches.stored_estimate(bytes(row.sketch))
        except sketches.InvalidSketch as exc:
            _keep_copy(row, f"{exc}; rebuilt from the rollups below it")
    _write(row, sketches.union(images, settings.METERING_LG_K))
    return unreadable


def _readable(row: Rollup) -> bool:
    try:
        sketches.stored_estimate(bytes(row.sketch))
    except sketches.InvalidSketch:
        return False
    return True


def _keep_copy(row: Rollup, reason: str) -> None:
    Rollup.objects.create(
        scope=row.scope, scope_id=row.scope_id, period=row.period, sketch=bytes(row.sketch), lg_k=row.lg_k,
        quarantined_at=timezone.now(), quarantine_reason=reason[:300],
        **{name: getattr(row, name) for name in _TALLIES},
    )


def _write(row: Rollup, sketch: Any) -> None:
    row.sketch = sketches.serialize(sketch, cold=Rollup.is_settled(row.scope, row.period))
    row.lg_k = sketch.lg_config_k
    row.save(update_fields=["sketch", "lg_k", "updated_at"])


def _announce(*, organisation: Organisation | None, period: dt.date, obj: Any, detail: dict[str, Any],
              message: str, group_id: int | None = None) -> None:
    """An alert to the group's admins and an audit event, in the quarantine's transaction."""
    group_id = group_id if group_id is not None else organisation.group_id  # type: ignore[union-attr]
    alert = Alert.objects.create(group_id=group_id, licence_version=None, level=QUARANTINE_LEVEL,
                                 kind=Alert.Kind.RAISED, month=month_start(period), figures={"quarantined": detail},
                                 message=message)
    audit_record(action="metering.quarantined", actor="metering", organisation=organisation,
                 group=alert.group if organisation is None else None, obj=obj, data=detail)
    logger.warning("metering: quarantined %s %s: %s", detail["kind"], detail["id"], detail["reason"])
    transaction.on_commit(lambda: queue.alert_dispatch_soon(alert.pk), robust=True)

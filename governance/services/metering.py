"""Writes of metering: accept activity durably, fold it into rollups, meter the gateway's own traffic.

The design (docs/metering.md): every accepted request becomes one append-only ``ActivityPart`` (a sketch,
never ids) committed before the 2xx; compaction folds parts into per-day and per-month ``Rollup`` rows of the
product, its organisation and its affiliate group, and deletes them in the same transaction. Distinct-count
union is idempotent, so folding a part twice changes nothing, and concurrent writers never lose one.
"""

from __future__ import annotations

import atexit
import datetime as dt
import hashlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.utils import timezone

from governance import sketches
from governance.models import ActivityPart, ActivitySource, IdempotencyRecord, Rollup
from governance.sketch_sandbox import SketchRejected, parse_in_sandbox
from licensing.models import Product

logger = logging.getLogger(__name__)


# --- validation ---------------------------------------------------------------------------------------------


def day_validate(day: dt.date, *, today: dt.date | None = None) -> dt.date:
    """A UTC day activity may be recorded for: not in the future, not older than the retention."""
    today = today or timezone.now().date()
    if day > today:
        raise ValidationError({"day": f"{day.isoformat()} is in the future (today is {today.isoformat()} UTC)."})
    oldest = today - dt.timedelta(days=settings.METERING_RETENTION_DAYS)
    if day < oldest:
        raise ValidationError(
            {"day": f"{day.isoformat()} is older than the retention of {settings.METERING_RETENTION_DAYS} days."}
        )
    return day


# --- idempotency --------------------------------------------------------------------------------------------


IDEMPOTENCY_KEY = re.compile(r"^[\x21-\x7e]{1,255}$")
IDEMPOTENCY_KEY_RULE = "Must be 1 to 255 printable ASCII characters without spaces."


class IdempotencyConflict(Exception):
    """The key was used before with a different request."""


def request_fingerprint(method: str, path: str, body: bytes) -> str:
    digest = hashlib.sha256()
    for part in (method.encode(), b"\0", path.encode(), b"\0", body):
        digest.update(part)
    return digest.hexdigest()


@dataclass(frozen=True)
class Answer:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def _idempotent(
    *, organisation_id: int, key: str | None, fingerprint: str, produce: Callable[[], Answer]
) -> Answer:
    """Run ``produce`` once per (organisation, key); a retry gets the first answer, a different request a 409.

    The record is written in the same transaction as the work, so an answer is stored if and only if the
    work committed. A concurrent twin loses on the unique constraint, rolls back, and replays the winner's.
    """
    if key is None:
        # ``produce`` writes one row: in autocommit that INSERT is its own transaction, one round trip
        # instead of three (BEGIN, INSERT, COMMIT), and its on_commit hooks run once it is durable.
        return produce()
    fresh_after = timezone.now() - settings.METERING_IDEMPOTENCY_TTL
    for _attempt in range(2):
        existing = IdempotencyRecord.objects.filter(
            organisation_id=organisation_id, key=key, created_at__gte=fresh_after
        ).first()
        if existing is not None:
            if existing.fingerprint != fingerprint:
                raise IdempotencyConflict(
                    f"Idempotency-Key {key!r} was already used with a different request "
                    f"(first used {existing.created_at.isoformat()}); use a new key for a new request."
                )
            return Answer(existing.status_code, existing.response, replayed=True)
        try:
            with transaction.atomic():
                # An expired record with this key is replaced: its 24 hours and more are over.
                IdempotencyRecord.objects.filter(
                    organisation_id=organisation_id, key=key, created_at__lt=fresh_after
                ).delete()
                answer = produce()
                IdempotencyRecord.objects.create(
                    organisation_id=organisation_id, key=key, fingerprint=fingerprint,
                    status_code=answer.status_code, response=answer.body,
                )
                return answer
        except IntegrityError:
            continue  # a concurrent request with the same key committed first: replay (or refuse) its answer
    raise IdempotencyConflict(f"Idempotency-Key {key!r} is in use by a concurrent request; retry shortly.")


def idempotency_purge(*, older_than: dt.timedelta | None = None) -> int:
    cutoff = timezone.now() - (older_than or settings.METERING_IDEMPOTENCY_TTL)
    deleted, _ = IdempotencyRecord.objects.filter(created_at__lt=cutoff).delete()
    return deleted


# --- ingestion ----------------------------------------------------------------------------------------------


def _part_create(*, product: Product, day: dt.date, source: str, data: bytes, lg_k: int, items: int) -> None:
    part = ActivityPart(product=product, day=day, source=source, sketch=data, lg_k=lg_k, items=items)
    if connection.vendor == "postgresql":
        _insert_binary(part)
    else:
        part.save(force_insert=True)
    # Robust: the part is committed when these run, so a failure to schedule must not fail the request.
    transaction.on_commit(compaction_schedule, robust=True)
    group_id = product.organisation.group_id
    transaction.on_commit(lambda: _evaluation_schedule(group_id), robust=True)


def _insert_binary(obj: models.Model) -> None:
    """Insert ``obj`` with its parameters sent in binary, bound on the server (the ORM's SQL, not hand-written).

    Django binds parameters on the client, so a sketch of tens of kilobytes travelled as a hex literal twice
    its size that PostgreSQL then parsed: a third of an ingestion request's time (bench/mau.py, py-spy).
    """
    import psycopg
    from django.db.models.sql import InsertQuery

    model = type(obj)
    fields = [f for f in model._meta.local_concrete_fields if not f.primary_key]
    query = InsertQuery(model)  # its compiler runs each field's pre_save (auto_now_add and friends)
    query.insert_values(fields, [obj])
    compiler = query.get_compiler(connection=connection)
    compiler.returning_fields = [model._meta.pk]
    [(sql, params)] = compiler.as_sql()
    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)  # server-side binding; bytes go in binary format
    # Django's own cursor wrapper around it: error translation, execute wrappers, query logging.
    with (connection.make_debug_cursor(raw) if connection.queries_logged else connection.make_cursor(raw)) as cursor:
        cursor.execute(sql, params)
        obj.pk = cursor.fetchone()[0]


def _evaluation_schedule(group_id: int) -> None:
    # Queries include parts not yet compacted, so the group can be evaluated at once: an alert for a crossing
    # goes out seconds after the request that caused it, not after compaction or beat.
    from governance.services.evaluation import evaluation_schedule

    evaluation_schedule(group_id=group_id)


def activity_ingest(
    *,
    product: Product,
    day: dt.date,
    user_ids: object,
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Answer:
    """Accept a batch of user ids for a product and UTC day; durable when this returns."""
    day_validate(day)
    try:
        ids = sketches.validate_user_ids(user_ids, max_items=settings.METERING_MAX_IDS_PER_REQUEST)
    except sketches.InvalidIds as exc:
        raise ValidationError({"user_ids": str(exc)}) from exc
    # Hash before the transaction: the CPU work holds no lock.
    try:
        sketch = sketches.sketch_from_ids(ids, settings.METERING_LG_K)
    except TypeError as exc:  # a string DataSketches cannot encode as UTF-8 (an unpaired surrogate)
        bad = next(i for i, v in enumerate(ids) if isinstance(v, str) and not _utf8_encodable(v))
        raise ValidationError({"user_ids": f"[{bad}] is not valid Unicode (unpaired surrogate)"}) from exc
    data = sketches.serialize(sketch)

    def produce() -> Answer:
        _part_create(product=product, day=day, source=ActivitySource.ID_BATCH, data=data,
                     lg_k=settings.METERING_LG_K, items=len(ids))
        return Answer(202, {"accepted": len(ids), "day": day.isoformat(), "product": product.pk})

    return _idempotent(
        organisation_id=product.organisation_id, key=idempotency_key, fingerprint=fingerprint, produce=produce
    )


def _utf8_encodable(value: str) -> bool:
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def sketch_ingest(
    *,
    product: Product,
    day: dt.date,
    encoded_sketch: str,
    sketch_format: str = "hll",
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Answer:
    """Accept a DataSketches HLL sketch a tenant built of a product's users on a UTC day."""
    day_validate(day)
    if sketch_format != "hll":
        raise ValidationError({"format": f"{sketch_format!r} is not supported; use \"hll\" (DataSketches HLL)."})
    try:
        raw = sketches.decode_sketch(encoded_sketch)
        header = sketches.read_header(raw)
        parsed = parse_in_sandbox(raw, settings.METERING_LG_K)
    except (sketches.InvalidSketch, SketchRejected) as exc:
        raise ValidationError({"sketch": f"The sketch {exc}."}) from exc

    body: dict[str, Any] = {
        "accepted": 1, "day": day.isoformat(), "product": product.pk, "lg_k": header.lg_k,
        "stored_lg_k": parsed.lg_k, "estimate": round(parsed.estimate),
    }
    if parsed.lg_k < settings.METERING_LG_K:
        body["precision_note"] = (
            f"This sketch's lgK {parsed.lg_k} is coarser than Corral's {settings.METERING_LG_K}: every figure "
            f"that includes this product and day is now computed at lgK {parsed.lg_k}, with a wider interval."
        )

    def produce() -> Answer:
        _part_create(product=product, day=day, source=ActivitySource.SKETCH, data=parsed.data, lg_k=parsed.lg_k,
                     items=0)
        return Answer(202, body)

    return _idempotent(
        organisation_id=product.organisation_id, key=idempotency_key, fingerprint=fingerprint, produce=produce
    )


# --- compaction ---------------------------------------------------------------------------------------------



def compaction_schedule() -> None:
    """Ask a worker to compact soon (see governance/debounce.py): one task for a burst of batches."""
    from governance.debounce import request_run_soon
    from governance.tasks import compact_metering

    request_run_soon("compaction", compact_metering.delay)


def _month(day: dt.date) -> dt.date:
    return day.replace(day=1)


RollupKey = tuple[str, int, dt.date]


def metering_compact_step(*, limit: int | None = None) -> int:
    """Fold up to ``limit`` parts into their rollups and delete them. Returns the number folded (0: no work).

    Safe to run concurrently and twice: parts are claimed with SKIP LOCKED, rollup rows are locked in one
    order, and folding a part twice would not change a distinct count anyway.
    """
    limit = limit or settings.METERING_COMPACT_BATCH
    with transaction.atomic():
        claim = ActivityPart.objects.order_by("id")
        if connection.features.has_select_for_update_skip_locked:
            claim = claim.select_for_update(skip_locked=True)
        parts = list(claim.values("id", "product_id", "day", "source", "sketch", "items")[:limit])
        if not parts:
            return 0
        owners = {
            row["id"]: (row["organisation_id"], row["organisation__group_id"])
            for row in Product.objects.filter(pk__in={p["product_id"] for p in parts}).values(
                "id", "organisation_id", "organisation__group_id"
            )
        }
        # Merge each (product, day)'s parts once: their coupons are inserted a single time, and the six
        # rollups they feed then take one (register-wise) merge each instead of one per part.
        by_product_day: dict[tuple[int, dt.date], list[bytes]] = defaultdict(list)
        tallies: dict[RollupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        keys_of: dict[tuple[int, dt.date], list[RollupKey]] = {}
        for part in parts:
            organisation_id, group_id = owners[part["product_id"]]
            product_day = (part["product_id"], part["day"])
            by_product_day[product_day].append(bytes(part["sketch"]))
            day, month = part["day"], _month(part["day"])
            keys = keys_of.setdefault(product_day, [
                (Rollup.Scope.PRODUCT_DAY, part["product_id"], day),
                (Rollup.Scope.PRODUCT_MONTH, part["product_id"], month),
                (Rollup.Scope.ORGANISATION_DAY, organisation_id, day),
                (Rollup.Scope.ORGANISATION_MONTH, organisation_id, month),
                (Rollup.Scope.GROUP_DAY, group_id, day),
                (Rollup.Scope.GROUP_MONTH, group_id, month),
            ])
            tally_field = {
                ActivitySource.ID_BATCH: "id_batches",
                ActivitySource.SKETCH: "sketch_uploads",
                ActivitySource.GATEWAY: "gateway_flushes",
            }[part["source"]]
            for key in keys:
                tallies[key][tally_field] += 1
                tallies[key]["ids_received"] += part["items"]
        deltas: dict[RollupKey, list[Any]] = defaultdict(list)
        for product_day, images in by_product_day.items():
            merged = sketches.union(images, settings.METERING_LG_K)
            for key in keys_of[product_day]:
                deltas[key].append(merged)
        _rollups_apply(deltas, tallies)
        ActivityPart.objects.filter(pk__in=[p["id"] for p in parts]).delete()
    return len(parts)


def _rollups_apply(deltas: dict[RollupKey, list[Any]], tallies: dict[RollupKey, dict[str, int]]) -> None:
    keys = sorted(deltas, key=lambda k: (k[0], k[1], k[2]))
    lg_k = settings.METERING_LG_K
    Rollup.objects.bulk_create(
        [Rollup(scope=s, scope_id=i, period=p, sketch=sketches.serialize(sketches.empty(lg_k)), lg_k=lg_k)
         for s, i, p in keys],
        ignore_conflicts=True,
    )
    matching = Q()
    for scope, scope_id, period in keys:
        matching |= Q(scope=scope, scope_id=scope_id, period=period)
    # Lock in one fixed order so concurrent compactions cannot deadlock.
    existing = {
        (r.scope, r.scope_id, r.period): r
        for r in Rollup.objects.select_for_update().filter(matching).order_by("scope", "scope_id", "period")
    }
    changed = []
    for key in keys:
        rollup = existing[key]
        merged = sketches.union([bytes(rollup.sketch), *deltas[key]], lg_k)
        rollup.sketch = sketches.serialize(merged)
        rollup.lg_k = merged.lg_config_k
        for field, amount in tallies[key].items():
            setattr(rollup, field, getattr(rollup, field) + amount)
        rollup.updated_at = timezone.now()
        changed.append(rollup)
    Rollup.objects.bulk_update(
        changed, ["sketch", "lg_k", "id_batches", "sketch_uploads", "gateway_flushes", "ids_received", "updated_at"]
    )


# --- the gateway's own traffic ------------------------------------------------------------------------------


class GatewayMeter:
    """Meter (product, day, user) in the request path without a database write per call.

    ``record`` updates an in-memory sketch per product and day (microseconds, no I/O); ``flush`` writes each
    as one ActivityPart. A flush happens when ``flush_seconds`` have passed since the last one (checked on
    record, and by the caller's own timer), and at interpreter exit. What a crash of the process can lose is
    at most the last ``flush_seconds`` of gateway users; batches and sketches sent to the API are never at risk.
    """

    def __init__(self, *, flush_seconds: float | None = None, lg_k: int | None = None) -> None:
        self.flush_seconds = flush_seconds if flush_seconds is not None else settings.METERING_GATEWAY_FLUSH_SECONDS
        self.lg_k = lg_k or settings.METERING_LG_K
        self._lock = threading.Lock()
        self._buffer: dict[tuple[int, dt.date], tuple[Any, int]] = {}
        self._last_flush = time.monotonic()

    def record(self, *, product_id: int, user: str | int, day: dt.date | None = None) -> bool:
        """Count ``user`` for the product today (UTC). Returns True when a flush is due."""
        key = (product_id, day or timezone.now().date())
        with self._lock:
            sketch, count = self._buffer.get(key) or (sketches.empty(self.lg_k), 0)
            sketch.update(user)
            self._buffer[key] = (sketch, count + 1)
            return time.monotonic() - self._last_flush >= self.flush_seconds

    def pending(self) -> int:
        with self._lock:
            return sum(count for _, count in self._buffer.values())

    def flush(self) -> int:
        """Write the buffered sketches; returns the number of parts written. On failure they stay buffered."""
        with self._lock:
            buffered, self._buffer = self._buffer, {}
            self._last_flush = time.monotonic()
        if not buffered:
            return 0
        try:
            # A product deleted while its users were buffered would fail the whole batch on its foreign key
            # (at commit, as the constraint is deferred) and keep every other product's users buffered forever.
            known = set(Product.objects.filter(pk__in={pid for pid, _ in buffered}).values_list("pk", flat=True))
            for key in [key for key in buffered if key[0] not in known]:
                logger.warning("gateway metering: product %s no longer exists; dropping its buffered users", key[0])
                del buffered[key]
            with transaction.atomic():
                for (product_id, day), (sketch, count) in buffered.items():
                    ActivityPart.objects.create(
                        product_id=product_id, day=day, source=ActivitySource.GATEWAY,
                        sketch=sketches.serialize(sketch), lg_k=self.lg_k, items=count,
                    )
                transaction.on_commit(compaction_schedule)
        except Exception:
            with self._lock:  # put them back, merged with anything recorded meanwhile
                for key, (sketch, count) in buffered.items():
                    current = self._buffer.get(key)
                    if current is not None:
                        sketch = sketches.union([sketch, current[0]], self.lg_k)
                        count += current[1]
                    self._buffer[key] = (sketch, count)
            raise
        return len(buffered)

    def close(self) -> None:
        try:
            self.flush()
        except Exception:
            logger.exception("gateway metering: could not flush at exit; %d uses not recorded", self.pending())


_gateway_meter: GatewayMeter | None = None


def gateway_meter() -> GatewayMeter:
    """This process's gateway meter, created on first use and flushed at exit."""
    global _gateway_meter
    if _gateway_meter is None:
        _gateway_meter = GatewayMeter()
        atexit.register(_gateway_meter.close)
    return _gateway_meter

"""Writes of metering: accept activity durably, fold it into rollups, meter the gateway's own traffic.

The design (docs/metering.md): every accepted request becomes one append-only ``ActivityPart`` (a sketch,
never ids) committed before the 2xx; compaction folds parts into per-day and per-month ``Rollup`` rows of the
product, its organisation and its affiliate group, and deletes them in the same transaction. Distinct-count
union is idempotent, so folding a part twice changes nothing, and concurrent writers never lose one.
"""

from __future__ import annotations

import atexit
import contextlib
import datetime as dt
import hashlib
import logging
import re
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, cast

from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, connection, models, transaction
from django.db.models import Q
from django.db.models.functions import Substr
from django.utils import timezone

from governance import queue
from governance.metering import sketches
from governance.metering.sandbox import SketchRejected, UploadRules, check_in_sandbox
from governance.metering.selectors import product_day_sketch
from governance.models import ActivityPart, ActivitySource, IdempotencyRecord, ProductMeteringPolicy, Rollup
from licensing.models import Product
from licensing.months import month_start

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
    # Robust: the part is committed when this runs, so a failure to schedule must not fail the request. The
    # group is evaluated once compaction has folded the part (metering_compact_step).
    transaction.on_commit(compaction_schedule, robust=True)


# The INSERT the ORM's compiler writes for a model, compiled once per process: compiling it again for every
# batch cost about 0.3 ms of CPU (bench/mau.py). The values are still prepared by each field, as save() does.
_insert_sql: dict[tuple[type[models.Model], str], tuple[str, list[models.Field]]] = {}


def _insert_binary(obj: models.Model) -> None:
    """Insert ``obj`` with its parameters sent in binary, bound on the server (the ORM's SQL, not hand-written).

    Django binds parameters on the client, so a sketch of tens of kilobytes travelled as a hex literal twice
    its size that PostgreSQL then parsed: a third of an ingestion request's time (bench/mau.py, py-spy).
    """
    from django.db.models.sql import InsertQuery

    model = type(obj)
    compiled = _insert_sql.get((model, connection.vendor))
    if compiled is None:
        fields = [f for f in model._meta.local_concrete_fields if not f.primary_key]
        if any(f.db_default is not models.NOT_PROVIDED for f in fields):
            raise TypeError(f"{model.__name__} has a database default: its INSERT is not the same for every row")
        query = InsertQuery(model)
        query.insert_values(fields, [model()])
        compiler = query.get_compiler(connection=connection)
        compiler.returning_fields = [model._meta.pk]
        [(sql, _params)] = compiler.as_sql()
        compiled = _insert_sql[(model, connection.vendor)] = (sql, fields)
    sql, fields = compiled
    # What the insert compiler does for each value: pre_save (auto_now_add and friends), then the field's
    # database preparation.
    params = [field.get_db_prep_save(field.pre_save(obj, True), connection=connection) for field in fields]
    with _binary_cursor() as cursor:
        cursor.execute(sql, params)
        obj.pk = cursor.fetchone()[0]


@contextlib.contextmanager
def _binary_cursor(*, binary_results: bool = False) -> Iterator[Any]:
    """A server-side-binding psycopg cursor (parameters go in binary; results too if asked) inside Django's own
    cursor wrapper: error translation, execute wrappers, query logging. Its statements are prepared once per
    pooled connection after DATABASE_PREPARE_THRESHOLD runs (config/settings.py)."""
    import psycopg

    connection.ensure_connection()
    raw = psycopg.Cursor(connection.connection)
    if binary_results:
        raw.format = psycopg.pq.Format.BINARY
    # django-stubs type make_cursor's argument as the CursorWrapper it returns; Django wraps the driver's cursor.
    with (connection.make_debug_cursor(raw) if connection.queries_logged  # type: ignore[arg-type]
          else connection.make_cursor(raw)) as cursor:  # type: ignore[arg-type]
        yield cursor


def _rows_binary(queryset: models.QuerySet) -> list[tuple[Any, ...]]:
    """The rows of a ``values_list`` queryset, read in binary on PostgreSQL: a sketch then arrives as its bytes
    rather than as hex text that the server must write and the client decode (a third of the time)."""
    if connection.vendor != "postgresql":
        return list(queryset)
    sql, params = queryset.query.sql_with_params()
    with _binary_cursor(binary_results=True) as cursor:
        cursor.execute(sql, params)
        return cursor.fetchall()


def _evaluation_schedule(group_id: int) -> None:
    # Called when a compaction step that changed the group's rollups has committed. Every query would also
    # count parts not yet compacted, but an evaluation reads the group's figures several times (months,
    # rolling window, forecast series): run against thousands of waiting parts, each read merged them all
    # again, and under sustained ingestion that cost the worker more than compaction itself (bench/mau.py).
    queue.evaluation_soon(group_id)


def activity_ingest(
    *,
    product: Product,
    day: dt.date,
    user_ids: object,
    idempotency_key: str | None = None,
    fingerprint: str = "",
    elements_checked: bool = False,
) -> Answer:
    """Accept a batch of user ids for a product and UTC day; durable when this returns.

    ``elements_checked``: the caller's typed decoder already proved every element a non-empty string or an
    integer within 64 bits (governance/metering/fastpath.py); the list's type and length are still checked here.
    """
    day_validate(day)
    try:
        ids = sketches.validate_user_ids(user_ids, max_items=settings.METERING_MAX_IDS_PER_REQUEST,
                                         elements_checked=elements_checked)
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


def product_metering_policy_update(*, policy: ProductMeteringPolicy, actor: str,
                                   **changes: object) -> ProductMeteringPolicy:
    from access.audit import audit_record

    with transaction.atomic():
        policy, _ = ProductMeteringPolicy.objects.update_or_create(product=policy.product, defaults=changes)
        audit_record(action="product.metering_policy_changed", actor=actor, organisation=policy.product.organisation,
                     obj=policy, data={"product": policy.product_id, **changes})
    return policy


def upload_rules(*, product: Product) -> UploadRules:
    """What an upload for ``product`` must satisfy (docs/metering.md, "Bad input"): the minimum lgK, and the
    most distinct users a product-day may have, the world's population or the product's own ceiling."""
    limits = [(sketches.WORLD_POPULATION, "the world's population")]
    ceiling = ProductMeteringPolicy.objects.filter(product=product).values_list("max_daily_users", flat=True).first()
    if ceiling is not None:
        limits.insert(0, (ceiling, "this product's ceiling, max_daily_users"))
    return UploadRules(lg_max_k=settings.METERING_LG_K, min_lg_k=sketches.MIN_UPLOAD_LG_K,
                       limits=tuple(sorted(limits)))


def sketch_ingest(
    *,
    product: Product,
    day: dt.date,
    encoded_sketch: str,
    sketch_format: str = "hll",
    idempotency_key: str | None = None,
    fingerprint: str = "",
) -> Answer:
    """Accept a DataSketches HLL sketch a tenant built of a product's users on a UTC day.

    Every check of the bytes runs in the sandbox (governance/metering/sandbox.py), with what the product-day
    already holds: the sketch alone and the product-day with it must read finite and plausible.
    """
    day_validate(day)
    if sketch_format != "hll":
        raise ValidationError({"format": f"{sketch_format!r} is not supported; use \"hll\" (DataSketches HLL)."})
    try:
        raw = sketches.decode_sketch(encoded_sketch)
        parsed = check_in_sandbox(raw, stored=product_day_sketch(product=product, day=day),
                                  rules=upload_rules(product=product))
    except (sketches.InvalidSketch, SketchRejected) as exc:
        raise ValidationError({"sketch": f"The sketch {exc}."}) from exc

    body: dict[str, Any] = {
        "accepted": 1, "day": day.isoformat(), "product": product.pk, "lg_k": parsed.source_lg_k,
        "stored_lg_k": parsed.lg_k, "estimate": parsed.estimate,
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
    queue.compaction_soon()



RollupKey = tuple[str, int, dt.date]


_TALLY_FIELDS: dict[str, str] = {
    ActivitySource.ID_BATCH: "id_batches",
    ActivitySource.SKETCH: "sketch_uploads",
    ActivitySource.GATEWAY: "gateway_flushes",
}
# Sketch bytes are read this many parts at a time, so a step's memory does not grow with its size.
_FETCH_CHUNK = 200




class _UnreadableRollups(Exception):
    """Rollups a compaction step would merge into cannot be read: the step rolls back, they are quarantined
    (rebuilt from the rollups below them), and the step runs again."""

    def __init__(self, rollups: dict[int, str]) -> None:
        super().__init__(f"unreadable rollups: {sorted(rollups)}")
        self.rollups = rollups


_COMPACT_ATTEMPTS = 3


def metering_compact_step(*, limit: int | None = None) -> int:
    """Fold up to ``limit`` parts into their rollups and delete them. Returns the number folded (0: no work).

    Safe to run concurrently and twice: parts are claimed with SKIP LOCKED, rollup rows are locked in one
    order, and folding a part twice would not change a distinct count anyway.

    A part that cannot be read is quarantined, not folded (governance/metering/quarantine.py); a rollup that
    cannot be read is quarantined and rebuilt before the step is run again.

    Cost is what matters here (it shares the machine with ingestion): each part is deserialized and merged
    once into its product-day's union; each rollup then takes exactly one merge. The organisation's delta
    is the union of its products' deltas and the group's the union of its organisations', so a step merges
    about (product-days + organisation-days + group-days) x 2 register arrays, whatever its number of parts.
    """
    from governance.metering.quarantine import sketches_quarantine

    for attempt in range(_COMPACT_ATTEMPTS):
        try:
            return _compact_step(limit or settings.METERING_COMPACT_BATCH)
        except _UnreadableRollups as exc:
            if attempt == _COMPACT_ATTEMPTS - 1:
                raise
            sketches_quarantine(parts={}, rollups=exc.rollups)
    return 0


def _compact_step(limit: int) -> int:
    from governance.metering.quarantine import part_quarantine

    with transaction.atomic():
        # Ascending lgK within every product-day, as sketches.Union requires; the sketch bytes come later.
        claim = ActivityPart.objects.filter(quarantined_at__isnull=True).order_by("lg_k", "id")
        if connection.features.has_select_for_update_skip_locked:
            claim = claim.select_for_update(skip_locked=True)
        parts = list(claim.values_list("id", "product_id", "day", "source", "items")[:limit])
        if not parts:
            return 0
        owners = {
            pk: (organisation_id, group_id)
            for pk, organisation_id, group_id in Product.objects.filter(pk__in={p[1] for p in parts}).values_list(
                "id", "organisation_id", "organisation__group_id")
        }
        product_day_of = {pk: (product_id, day) for pk, product_id, day, _source, _items in parts}
        unions: dict[tuple[int, dt.date], sketches.Union] = {}
        broken: set[tuple[int, dt.date]] = set()  # a part failed mid-merge: the union is read again without it
        ids = [p[0] for p in parts]
        for offset in range(0, len(ids), _FETCH_CHUNK):
            chunk = ActivityPart.objects.filter(pk__in=ids[offset: offset + _FETCH_CHUNK]).order_by("lg_k", "id")
            for pk, data in _rows_binary(chunk.values_list("id", "sketch")):
                product_day = product_day_of[pk]
                if product_day in broken:
                    continue
                if product_day not in unions:
                    unions[product_day] = sketches.Union(settings.METERING_LG_K)
                try:
                    unions[product_day].add(bytes(data))
                except sketches.InvalidSketch:
                    broken.add(product_day)
        product_days, unreadable = _product_day_unions(unions, broken, product_day_of)
        for pk, reason in unreadable.items():
            part_quarantine(part_id=pk, reason=reason)
        folded = [p for p in parts if p[0] not in unreadable]
        tallies: dict[RollupKey, dict[str, int]] = defaultdict(lambda: defaultdict(int))
        for _pk, product_id, day, source, items in folded:
            organisation_id, group_id = owners[product_id]
            for key in _rollup_keys(product_id, organisation_id, group_id, day):
                tallies[key][_TALLY_FIELDS[source]] += 1
                tallies[key]["ids_received"] += items
        _rollups_apply(_deltas(product_days, owners), tallies)
        ActivityPart.objects.filter(pk__in=[p[0] for p in folded]).delete()
        groups = sorted({group_id for _organisation_id, group_id in owners.values()})
        # Alerts follow the figures: each group whose rollups changed is evaluated (debounced) once committed.
        def schedule_evaluations() -> None:
            for group_id in groups:
                _evaluation_schedule(group_id)

        transaction.on_commit(schedule_evaluations, robust=True)
    return len(folded)


def _product_day_unions(unions: dict[tuple[int, dt.date], sketches.Union], broken: set[tuple[int, dt.date]],
                        product_day_of: dict[int, tuple[int, dt.date]]
                        ) -> tuple[dict[tuple[int, dt.date], Any], dict[int, str]]:
    """Each product-day's union of its parts, and the parts that cannot be read (with why), left out of it.

    One estimate per product-day checks the union; only a product-day that fails it (or whose merge failed)
    is read again part by part."""
    results: dict[tuple[int, dt.date], Any] = {}
    for product_day, merged in unions.items():
        if product_day in broken:
            continue
        result = merged.result()
        try:
            if sketches.estimate_of(result).estimate <= sketches.WORLD_POPULATION:
                results[product_day] = result
                continue
        except sketches.InvalidSketch:
            pass
        broken.add(product_day)
    unreadable: dict[int, str] = {}
    for product_day in broken:
        ids = [pk for pk, pd in product_day_of.items() if pd == product_day]
        images = {pk: bytes(data) for pk, data in _rows_binary(
            ActivityPart.objects.filter(pk__in=ids).values_list("id", "sketch"))}
        results[product_day], _estimate, left_out = sketches.sound_union(images, settings.METERING_LG_K)
        unreadable |= left_out
    return results, unreadable


def _rollup_keys(product_id: int, organisation_id: int, group_id: int, day: dt.date) -> list[RollupKey]:
    month = month_start(day)
    return [
        (Rollup.Grain.PRODUCT_DAY, product_id, day), (Rollup.Grain.PRODUCT_MONTH, product_id, month),
        (Rollup.Grain.ORGANISATION_DAY, organisation_id, day), (Rollup.Grain.ORGANISATION_MONTH, organisation_id, month),
        (Rollup.Grain.GROUP_DAY, group_id, day), (Rollup.Grain.GROUP_MONTH, group_id, month),
    ]


def _deltas(product_days: dict[tuple[int, dt.date], Any], owners: dict[int, tuple[int, int]]
            ) -> dict[RollupKey, Any]:
    """What each rollup gains: a product-day's union, and unions of those up the scopes, built bottom-up."""
    lg_k = settings.METERING_LG_K
    pending: dict[RollupKey, list[Any]] = defaultdict(list)
    for (product_id, day), sketch in product_days.items():
        organisation_id, _group_id = owners[product_id]
        pending[(Rollup.Grain.PRODUCT_DAY, product_id, day)].append(sketch)
        pending[(Rollup.Grain.PRODUCT_MONTH, product_id, month_start(day))].append(sketch)
        pending[(Rollup.Grain.ORGANISATION_DAY, organisation_id, day)].append(sketch)
    group_of = {organisation_id: group_id for organisation_id, group_id in owners.values()}

    def merged(key: RollupKey) -> Any:
        items = pending[key]
        return items[0] if len(items) == 1 else sketches.union(items, lg_k)

    deltas: dict[RollupKey, Any] = {}
    for scope, up in ((Rollup.Grain.ORGANISATION_DAY, Rollup.Grain.GROUP_DAY),
                      (Rollup.Grain.GROUP_DAY, None)):
        for key in [k for k in pending if k[0] == scope]:
            deltas[key] = delta = merged(key)
            _scope, scope_id, day = key
            month_scope = (Rollup.Grain.ORGANISATION_MONTH if scope == Rollup.Grain.ORGANISATION_DAY
                           else Rollup.Grain.GROUP_MONTH)
            pending[(month_scope, scope_id, month_start(day))].append(delta)
            if up is not None:
                pending[(up, group_of[scope_id], day)].append(delta)
    for key in pending:
        if key not in deltas:
            deltas[key] = merged(key)
    return deltas


def _rollups_apply(deltas: dict[RollupKey, Any], tallies: dict[RollupKey, dict[str, int]]) -> None:
    keys = sorted(deltas, key=lambda k: (k[0], k[1], k[2]))
    lg_k = settings.METERING_LG_K
    today = timezone.now().date()
    Rollup.objects.bulk_create(
        [Rollup(scope=s, scope_id=i, period=p, sketch=sketches.serialize(sketches.empty(lg_k)), lg_k=lg_k)
         for s, i, p in keys],
        ignore_conflicts=True,
    )
    # One condition per scope (ids x periods: a superset of the keys, never an OR per key, which a large step
    # would make too deep for SQLite); rows are locked in one fixed order so concurrent compactions cannot
    # deadlock.
    by_scope: dict[str, tuple[set[int], set[dt.date]]] = defaultdict(lambda: (set(), set()))
    for scope, scope_id, period in keys:
        by_scope[scope][0].add(scope_id)
        by_scope[scope][1].add(period)
    matching = Q()
    for scope, (scope_ids, periods) in by_scope.items():
        matching |= Q(scope=scope, scope_id__in=scope_ids, period__in=periods)
    wanted = set(keys)
    locked = (Rollup.objects.select_for_update().filter(matching, quarantined_at__isnull=True)
              .order_by("scope", "scope_id", "period"))
    existing = {
        (scope, scope_id, period): row
        for scope, scope_id, period, *row in _rows_binary(locked.values_list("scope", "scope_id", "period", "id",
                                                                             "sketch", *_TALLIES))
        if (scope, scope_id, period) in wanted
    }
    now = timezone.now()
    updates = []
    unreadable: dict[int, str] = {}
    for key in keys:
        pk, image, *counts = existing[key]
        try:
            merged = sketches.union([bytes(image), deltas[key]], lg_k)
        except sketches.InvalidSketch as exc:
            unreadable[pk] = str(exc)
            continue
        tally = tallies[key]
        updates.append([sketches.serialize(merged, cold=Rollup.is_settled(key[0], key[2], today=today)),
                        merged.lg_config_k, *(count + tally.get(name, 0) for name, count in zip(_TALLIES, counts)),
                        now, pk])
    if unreadable:
        raise _UnreadableRollups(unreadable)
    _update_rows(Rollup, ["sketch", "lg_k", *_TALLIES, "updated_at"], updates)


_TALLIES = ("id_batches", "sketch_uploads", "gateway_flushes", "ids_received")
_update_sql: dict[tuple[type[models.Model], tuple[str, ...], str], str] = {}


def _update_rows(model: type[models.Model], field_names: list[str], rows: list[list[Any]]) -> None:
    """UPDATE ``field_names`` of many rows by primary key; each row is its values, then its key.

    The statement is the ORM's (compiled once per process) and on PostgreSQL goes with server-side binding in
    one pipelined round trip: Django's bulk_update sent each 256 KiB rollup as a hex literal inside a CASE
    expression PostgreSQL had to parse, about 40% of a compaction step's CPU (bench/mau.py).
    """
    from django.db.models.sql import UpdateQuery

    if not rows:
        return
    fields = [cast(models.Field, model._meta.get_field(name)) for name in field_names]  # columns, not relations
    sql = _update_sql.get((model, tuple(field_names), connection.vendor))
    if sql is None:
        query = UpdateQuery(model)
        query.add_update_fields([(field, None, rows[0][i]) for i, field in enumerate(fields)])
        query.add_q(Q(pk=rows[0][-1]))
        sql, _params = query.get_compiler(connection=connection).as_sql()
        _update_sql[(model, tuple(field_names), connection.vendor)] = sql
    pk = model._meta.pk
    params = [[field.get_db_prep_save(value, connection=connection) for field, value in zip(fields, row)]
              + [pk.get_db_prep_value(row[-1], connection)] for row in rows]
    if connection.vendor == "postgresql":
        with _binary_cursor() as cursor:
            cursor.executemany(sql, params)
    else:
        with connection.cursor() as cursor:
            cursor.executemany(sql, params)


def rollups_settle(*, limit: int = 1000, today: dt.date | None = None) -> int:
    """Re-encode rollups of settled periods that are still HLL_8 as HLL_4 (half the bytes). Returns how many.

    Beat runs it every 6 hours (governance.tasks.settle_rollups). Each row is re-read under its lock in its own short transaction, so it never waits
    behind or blocks a compaction for longer than one row, and a compaction that folded activity into the
    row meanwhile is kept.
    """
    today = today or timezone.now().date()
    oldest_hot = today - dt.timedelta(days=settings.METERING_SETTLE_DAYS)
    settled = Q(scope__in=Rollup.DAY_SCOPES, period__lt=oldest_hot) | (
        ~Q(scope__in=Rollup.DAY_SCOPES) & Q(period__lt=month_start(oldest_hot)))
    # Only HLL-mode HLL_8 images gain (in the coupon modes both forms are the same list of coupons). The
    # preamble's mode byte is read in SQL, a one-byte slice of the uncompressed (STORAGE EXTERNAL) value.
    hot = Rollup.objects.annotate(mode=Substr("sketch", 8, 1, output_field=models.BinaryField())).filter(
        settled, mode=sketches.HOT_HLL_MODE_BYTE, quarantined_at__isnull=True)
    done = 0
    unreadable: dict[int, str] = {}
    for pk in hot.order_by("period", "id").values_list("id", flat=True)[:limit]:
        with transaction.atomic():
            rollup = Rollup.objects.select_for_update().filter(pk=pk, quarantined_at__isnull=True).first()
            if rollup is None or sketches.tgt_type_of(bytes(rollup.sketch)) == "HLL_4":
                continue  # deleted, quarantined, or re-encoded meanwhile
            try:
                rollup.sketch = sketches.serialize(sketches.load(bytes(rollup.sketch)), cold=True)
            except sketches.InvalidSketch as exc:
                unreadable[pk] = str(exc)
                continue
            rollup.save(update_fields=["sketch"])
            done += 1
    if unreadable:
        from governance.metering.quarantine import sketches_quarantine

        sketches_quarantine(parts={}, rollups=unreadable)  # rebuilt, and stored compactly as they are settled
    return done


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

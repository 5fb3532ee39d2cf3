"""The ingestion hot path as a lean ASGI application in front of Django.

`POST /api/v1/products/{id}/activity` is the one endpoint tenants call thousands of times a second with
10,000-id batches. Through Django's ASGI handler every request pays a thread of its own, a thread hop per
middleware and DRF's request cycle: several milliseconds, against one millisecond of hashing. Here the same
checks and the same service (`activity_ingest`) run in a small thread pool, and everything else goes to
Django unchanged. The contract is the DRF endpoint's (it stays, for the schema and for WSGI servers):
the same authentication, scope and tenancy rules, the same error shapes, the same idempotency.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import re
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import orjson
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import IntegrityError, InterfaceError, OperationalError, close_old_connections, connections

from config.exceptions import DATABASE_UNAVAILABLE, RETRY_AFTER_SECONDS
from governance.metering.activity_input import ActivityInputRefused, activity_input

ACTIVITY_PATH = re.compile(r"^/api/v1/products/([0-9]{1,18})/activity/?$")
Response = tuple[int, dict[str, Any], list[tuple[bytes, bytes]]]


def _error(status: int, body: dict[str, Any], *extra: tuple[bytes, bytes]) -> Response:
    return status, body, list(extra)


# Products by id, as API keys are (access/keys.py): read once per API_KEY_CACHE_SECONDS per
# process instead of once per batch. A product's organisation never changes; a deleted one fails the insert.
_products: dict[int, tuple[float, Any]] = {}


def _product(product_id: int) -> Any:
    from licensing.models import Product

    now = time.monotonic()
    cached = _products.get(product_id)
    if cached is not None and cached[0] > now:
        return cached[1]
    product = Product.objects.select_related("organisation").filter(pk=product_id).first()
    ttl = settings.API_KEY_CACHE_SECONDS
    if product is not None and ttl > 0:
        if len(_products) > 100_000:
            _products.clear()
        _products[product_id] = (now + ttl, product)
    return product


def ingest_activity(product_id: int, headers: dict[bytes, bytes], body: bytes, path: str) -> Response:
    """Everything the DRF activity endpoint does, as one synchronous call (run in the pool)."""
    from access.keys import KeyRejected, api_key_authenticate
    from access.models import Scope
    from governance.metering.services import IDEMPOTENCY_KEY, IDEMPOTENCY_KEY_RULE

    close_old_connections()
    try:
        auth = headers.get(b"authorization", b"").split()
        if len(auth) != 2 or auth[0].lower() != b"bearer":
            return _error(401, {"detail": "Authentication credentials were not provided."},
                          (b"www-authenticate", b'Bearer realm="corral"'))
        try:
            api_key = api_key_authenticate(auth[1].decode("ascii"))
        except (KeyRejected, UnicodeDecodeError) as exc:
            message = str(exc) if isinstance(exc, KeyRejected) else "Invalid API key."
            return _error(401, {"detail": message}, (b"www-authenticate", b'Bearer realm="corral"'))
        if Scope.INGEST not in api_key.scopes:
            return _error(403, {"detail": "This credential lacks the 'ingest' scope needed for this request."})
        product = _product(product_id)
        if (product is None or product.organisation_id != api_key.organisation_id
                or (api_key.product_id and api_key.product_id != product.pk)):
            return _error(404, {"detail": "No Product matches the given query."})
        key = headers.get(b"idempotency-key")
        idempotency_key = None
        if key is not None:
            idempotency_key = key.decode("latin-1")
            if not IDEMPOTENCY_KEY.match(idempotency_key):
                return _error(400, {"Idempotency-Key": [IDEMPOTENCY_KEY_RULE]})
        try:
            batch = activity_input(body, content_type=_header(headers, b"content-type"), path=path)
        except ActivityInputRefused as exc:
            return _error(exc.status, exc.errors)
        return _ingest(product, product_id, batch.day, batch.user_ids, idempotency_key, path, body,
                       batch.elements_checked)
    except (OperationalError, InterfaceError):  # the DRF endpoint's 503 (config/exceptions.py), not a 500
        return _error(503, {"detail": DATABASE_UNAVAILABLE}, (b"retry-after", RETRY_AFTER_SECONDS.encode()))
    finally:
        for connection in connections.all(initialized_only=True):
            connection.close()  # back to the pool


def _ingest(product: Any, product_id: int, day: dt.date, user_ids: object, idempotency_key: str | None, path: str,
            body: bytes, elements_checked: bool) -> Response:
    from governance.metering.services import IdempotencyConflict, activity_ingest, request_fingerprint

    try:
        answer = activity_ingest(product=product, day=day, user_ids=user_ids, idempotency_key=idempotency_key,
                                 fingerprint=request_fingerprint("POST", path, body) if idempotency_key else "",
                                 elements_checked=elements_checked)
    except ValidationError as exc:
        return _error(400, {k: list(v) for k, v in exc.message_dict.items()})
    except IdempotencyConflict as exc:
        return _error(409, {"detail": str(exc)})
    except IntegrityError:  # the product was deleted since it was cached
        _products.pop(product_id, None)
        return _error(404, {"detail": "No Product matches the given query."})
    extra = [(b"idempotent-replayed", b"true")] if answer.replayed else []
    return answer.status_code, answer.body, extra


def _header(headers: dict[bytes, bytes], name: bytes) -> str | None:
    value = headers.get(name)
    return None if value is None else value.decode("latin-1")


class IngestFastPath:
    """ASGI middleware: serves the activity endpoint itself, passes every other request to ``app``."""

    def __init__(self, app: Any, *, threads: int = 8) -> None:
        self.app = app
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="ingest")

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        match = ACTIVITY_PATH.match(scope.get("path", "")) if scope["type"] == "http" else None
        if match is None or scope["method"] != "POST":
            await self.app(scope, receive, send)
            return
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] == "http.disconnect":
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                await _respond(send, 413, {"detail": "The request body is larger than this service accepts "
                                                     "(DATA_UPLOAD_MAX_MEMORY_SIZE)."}, [])
                return
            chunks.append(chunk)
            more = message.get("more_body", False)
        headers = {name.lower(): value for name, value in scope["headers"]}
        status, body, extra = await asyncio.get_running_loop().run_in_executor(
            self.executor, ingest_activity, int(match.group(1)), headers, b"".join(chunks), scope["path"])
        await _respond(send, status, body, extra)


async def _respond(send: Any, status: int, body: dict[str, Any], extra: list[tuple[bytes, bytes]]) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        (b"content-type", b"application/json"), (b"content-length", str(len(payload)).encode()),
        (b"x-content-type-options", b"nosniff"), *extra]})
    await send({"type": "http.response.body", "body": payload})

"""What an operator sees: Prometheus metrics, request ids and JSON log lines (docs/operations.md).

Metrics are prometheus-client objects defined once here. Under several processes (uvicorn workers, the Celery
prefork pool) ``PROMETHEUS_MULTIPROC_DIR`` switches prometheus-client to its multiprocess mode and a scrape
merges every process's files; otherwise the default registry serves. Values that are database state (compaction
lag, evaluation ages, replicas by state, webhook deliveries) are read at scrape time by ``DatabaseCollector``,
never kept in a process's memory.
"""

from __future__ import annotations

import contextvars
import hmac
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
)
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector

logger = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):  # prometheus-client writes there from the first metric on
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)

# --- Metrics --------------------------------------------------------------------------------------------------
HTTP_REQUESTS = Counter("corral_http_requests", "HTTP requests answered, by route template, method and status",
                        ["route", "method", "status"])
HTTP_DURATION = Histogram("corral_http_request_duration_seconds",
                          "Time from a request's arrival to the end of its answer (a stream's last byte)",
                          ["route", "method"],
                          buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120))
GATEWAY_REFUSALS = Counter("corral_gateway_refusals", "Gateway requests answered with an error, by reason (the "
                           "OpenAI error code)", ["reason"])
LIMITER_ERRORS = Counter("corral_gateway_limiter_errors", "Rate-limiter round trips that failed (Redis unreachable)")
METERING_FLUSH_ERRORS = Counter("corral_gateway_metering_flush_errors", "Gateway usage flushes that failed")
METERING_FLUSH_BACKLOG = Gauge("corral_gateway_metering_backlog", "Requests whose usage a gateway process holds, "
                               "not yet written", multiprocess_mode="livesum")
RECONCILE_DURATION = Histogram("corral_reconcile_duration_seconds", "Duration of one reconciler pass",
                               buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))

# Reasons are the gateway's own error codes (a closed set); a child per reason is made once and kept.
_refusal_children: dict[str, Any] = {}


def count_refusal(reason: str | None) -> None:
    child = _refusal_children.get(reason or "")
    if child is None:
        child = _refusal_children[reason or ""] = GATEWAY_REFUSALS.labels(reason or "unknown")
    child.inc()


#: Readers of the database's state for the scrape, each yielding its gauges; the apps register theirs in their
#: AppConfig.ready (governance/metrics.py, inference/metrics.py), so this module imports no app.
StateReader = Callable[[], Iterator[GaugeMetricFamily]]
_state_readers: list[StateReader] = []


def register_state_metrics(reader: StateReader) -> None:
    if reader not in _state_readers:
        _state_readers.append(reader)


class DatabaseCollector:
    """Database state, read when Prometheus scrapes."""

    def collect(self) -> Iterator[GaugeMetricFamily]:
        from django.db import DatabaseError

        try:
            for reader in list(_state_readers):
                yield from reader()
        except DatabaseError as exc:  # a scrape still serves the process metrics
            logger.warning("metrics: database state unavailable (%s)", type(exc).__name__)


DATABASE_REGISTRY = CollectorRegistry(auto_describe=False)
DATABASE_REGISTRY.register(DatabaseCollector())  # type: ignore[arg-type]


def process_registry() -> CollectorRegistry:
    """The registry holding this deployment's process metrics: every process's files in multiprocess mode."""
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        MultiProcessCollector(registry)
        return registry
    return REGISTRY


def token_matches(authorization: str, token: str) -> bool:
    """Whether an Authorization header carries ``Bearer <token>`` (compared in constant time)."""
    scheme, _, credential = authorization.partition(" ")
    return scheme.lower() == "bearer" and hmac.compare_digest(credential.strip().encode(), token.encode())


def serve_worker_metrics(port: int, token: str, *, host: str = "0.0.0.0") -> Any:
    """Serve this process's metrics (every pool process's, in multiprocess mode) on ``port`` from a daemon
    thread, behind the same bearer token as web's /metrics. A Celery worker has no HTTP server of its own, and
    on Kubernetes its pods are scraped apart from web's (docs/operations.md). Returns the server."""
    import threading
    from socketserver import ThreadingMixIn
    from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

    class Server(ThreadingMixIn, WSGIServer):
        daemon_threads = True

    class Quiet(WSGIRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the stdlib's signature
            pass

    def app(environ: dict[str, Any], start_response: Any) -> list[bytes]:
        if environ.get("PATH_INFO") != "/metrics":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"Not found: the worker serves /metrics only.\n"]
        if not token_matches(environ.get("HTTP_AUTHORIZATION", ""), token):
            start_response("401 Unauthorized", [("Content-Type", "text/plain"),
                                                 ("WWW-Authenticate", 'Bearer realm="metrics"')])
            return [b"A valid metrics token is required.\n"]
        start_response("200 OK", [("Content-Type", CONTENT_TYPE_LATEST)])
        return [generate_latest(process_registry())]

    server = make_server(host, port, app, server_class=Server, handler_class=Quiet)
    threading.Thread(target=server.serve_forever, name="worker-metrics", daemon=True).start()
    return server


def metrics_view(request: Any) -> Any:
    """``GET /metrics`` with ``Authorization: Bearer <METRICS_TOKEN>``; 404 when no token is configured."""
    from django.conf import settings
    from django.http import Http404, HttpResponse

    token = settings.METRICS_TOKEN
    if not token:
        raise Http404("metrics are off")
    if not token_matches(request.headers.get("Authorization", ""), token):
        response = HttpResponse("A valid metrics token is required.\n", status=401, content_type="text/plain")
        response["WWW-Authenticate"] = 'Bearer realm="metrics"'
        return response
    body = generate_latest(process_registry()) + generate_latest(DATABASE_REGISTRY)
    return HttpResponse(body, content_type=CONTENT_TYPE_LATEST)


# --- Request ids and the HTTP middleware -----------------------------------------------------------------------
REQUEST_ID: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="")
_WELL_FORMED_ID = re.compile(rb"^[A-Za-z0-9][A-Za-z0-9._:-]{0,127}$")
ROUTE_KEY = "corral.route"  # the scope entry Django's RouteMiddleware fills with the matched route template


class _Routes:
    """Route templates of the requests served outside Django (gateway, ingestion fast path); Django's own come
    from RouteMiddleware. The paths come from config/asgi.py, which composes the layers (this module imports
    none of them). Built on the first request, when settings are loaded."""

    def __init__(self, gateway_paths: tuple[str, ...], activity: re.Pattern[str]) -> None:
        from django.conf import settings

        self.exact = {path: path for path in (*gateway_paths, "/v1/models")}
        self.activity = activity
        self.static = "/" + settings.STATIC_URL.lstrip("/") if settings.STATIC_URL else None

    def of(self, scope: dict[str, Any]) -> str:
        route = scope.get(ROUTE_KEY)
        if route:
            return route
        path = scope["path"]
        exact = self.exact.get(path)
        if exact is not None:
            return exact
        if path.startswith("/v1/") or path == "/v1":
            return "/v1/models/{model}" if path.startswith("/v1/models/") else "/v1/unmatched"
        if self.activity.match(path):
            return "/api/v1/products/{id}/activity"
        if self.static and path.startswith(self.static):
            return "static"
        return "unmatched"


class ObservedApp:
    """Outer ASGI middleware: a request id for every request and the request counter and latency histogram."""

    def __init__(self, app: Any, *, gateway_paths: tuple[str, ...] = (), activity: re.Pattern[str] | None = None
                 ) -> None:
        self.app = app
        self._route_sources = (gateway_paths, activity or re.compile(r"(?!)"))
        self._children: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._routes: _Routes | None = None

    def _metrics_for(self, route: str, method: str, status: int) -> tuple[Any, Any]:
        key = (route, method, status)
        children = self._children.get(key)
        if children is None:  # once per (route, method, status): no registry lookup on the hot path
            children = self._children[key] = (HTTP_REQUESTS.labels(route, method, str(status)),
                                              HTTP_DURATION.labels(route, method))
        return children

    def _load_routes(self) -> _Routes:
        self._routes = _Routes(*self._route_sources)
        return self._routes

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                if _WELL_FORMED_ID.match(value):
                    request_id = value.decode()
                break
        request_id = request_id or uuid.uuid4().hex
        token = REQUEST_ID.set(request_id)
        header = (b"x-request-id", request_id.encode())
        status = 500
        started = time.perf_counter()

        async def send_with_id(message: dict[str, Any]) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
                message["headers"] = [h for h in message.get("headers", ()) if h[0].lower() != b"x-request-id"]
                message["headers"].append(header)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        finally:
            routes = self._routes or self._load_routes()
            counter, histogram = self._metrics_for(routes.of(scope), scope["method"], status)
            counter.inc()
            histogram.observe(time.perf_counter() - started)
            REQUEST_ID.reset(token)


_GROUP = re.compile(r"\(\?P<(\w+)>[^)]*\)")
_route_templates: dict[str, str] = {}


def route_template(route: str) -> str:
    """``api/v1/products/(?P<pk>[^/.]+)/?$`` (a DRF router's pattern) or ``<int:pk>`` as ``/api/v1/products/{pk}/``."""
    template = _route_templates.get(route)
    if template is None:
        readable = _GROUP.sub(r"{\1}", route).replace("^", "").replace("$", "").replace("/?", "/")
        template = _route_templates[route] = "/" + re.sub(r"<(?:\w+:)?(\w+)>", r"{\1}", readable)
    return template


class RouteMiddleware:
    """Django middleware: records the matched URL pattern (``api/v1/products/<int:pk>/``) for the metrics."""

    def __init__(self, get_response: Any) -> None:
        self.get_response = get_response

    def __call__(self, request: Any) -> Any:
        return self.get_response(request)

    def process_view(self, request: Any, view_func: Any, view_args: Any, view_kwargs: Any) -> None:
        scope = getattr(request, "scope", None)
        if scope is not None and request.resolver_match is not None:
            scope[ROUTE_KEY] = route_template(request.resolver_match.route)


# --- Logs ------------------------------------------------------------------------------------------------------
class RequestIdFilter(logging.Filter):
    """Puts the current request's id on every record (empty outside a request)."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = REQUEST_ID.get()
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, logger, message, request id, and the exception if any."""

    converter = staticmethod(time.gmtime)

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", "") or REQUEST_ID.get(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False, default=str)

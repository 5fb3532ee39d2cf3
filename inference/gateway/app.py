"""The OpenAI-compatible, licence-gated gateway: a lean ASGI application in front of Django.

Serves `POST /v1/chat/completions`, `POST /v1/completions`, `POST /v1/responses` and `GET /v1/models[/{id}]`;
every other path under
/v1 is a 404, so nothing else of vLLM (tokenize, pooling, LoRA loading, sleep, metrics, ...) is reachable.
Everything outside /v1 goes to ``app`` (Django). On each request, in order:

1. ``authenticate``: the Corral key (`inference` scope) by the one verifier and key cache (access/keys.py);
2. read the body (at most GATEWAY_MAX_BODY_BYTES) and ``parse`` it: `model`, caps on `max_tokens` (the
   Responses API's `max_output_tokens`) and `n`, the end user from `safety_identifier` or `user`;
3. ``gate``: find the deployment among the key's organisation's (and product's, for a product-bound key:
   another tenant's model is the same 404 as a missing one), then the licence gates: the EU clause of the
   3.2 / 3.3 / 4 AUPs for a multimodal model and an organisation domiciled in the EU, then the group's access
   decision for the deployment's licence version (403 with the reason);
4. ``cap``: the token cap filled in where the request sets none, a stream's usage always asked of vLLM;
5. ``reserve`` the rate limits of key and organisation (limits.py; 429 with Retry-After);
6. relay to a healthy replica (routing.py), retrying another one once if the connection cannot be made,
   streaming chunk by chunk; usage is passed on to the client only if it asked;
7. settle the limits with the real usage and meter tokens and the user (usage.py), also when the client
   went away (the upstream request is then cancelled).

Redis or the database not answering within GATEWAY_BACKEND_TIMEOUT_SECONDS is a 503: nothing is served
unchecked, and nothing unmetered (a failing usage flush stops new requests until it succeeds).
"""

from __future__ import annotations

import asyncio
import atexit
import contextlib
import functools
import itertools
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from django.conf import settings

from access.keys import KeyRejected, key_cache, key_prefix, key_verify
from access.models import Scope
from config.observability import LIMITER_ERRORS, REQUEST_ID, count_refusal
from inference.gateway.directory import BackendUnavailable, DeploymentInfo, Directory, KeyInfo
from inference.gateway.limits import LimiterUnavailable, LocalLimiter, RedisLimiter
from inference.gateway.routing import LeastOutstanding, Strategy
from inference.gateway.usage import UsageMeter
from licensing.eu_multimodal import LEVEL as EU_MULTIMODAL
from licensing.eu_multimodal import eu_multimodal_refusal

logger = logging.getLogger("corral.gateway")

COMPLETION_PATHS = {"/v1/chat/completions": "chat", "/v1/completions": "text", "/v1/responses": "responses"}
# The fields that cap generated tokens, per API (vLLM reads max_completion_tokens before max_tokens in chat).
TOKEN_FIELDS = {"chat": ("max_tokens", "max_completion_tokens"), "text": ("max_tokens",),
                "responses": ("max_output_tokens",)}
# The Responses API's stream events that end a response; each carries the response with its usage.
_FINAL_RESPONSE_EVENTS = (b"response.completed", b"response.incomplete", b"response.failed")
_JSON = (b"content-type", b"application/json")
# What a refused key is for an OpenAI client: status and code.
_KEY_REFUSALS = {"invalid": (401, "invalid_api_key"), "revoked": (401, "invalid_api_key"),
                 "expired": (401, "invalid_api_key"), "suspended": (403, "organisation_suspended")}
MAX_SSE_LINE = 8 * 1024 * 1024  # one event of vLLM's stream (prompt logprobs make long ones)


class _ClientGone(Exception):
    """The client disconnected before its request was read: nothing to answer."""


class GatewayError(Exception):
    """An answer in OpenAI's error shape."""

    def __init__(self, status: int, message: str, *, type: str = "invalid_request_error", code: str | None = None,
                 param: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.type, self.code, self.param = status, message, type, code, param
        self.retry_after = retry_after

    def body(self) -> bytes:
        return orjson.dumps({"error": {"message": self.message, "type": self.type, "param": self.param,
                                       "code": self.code}})


def _unavailable(what: str) -> GatewayError:
    return GatewayError(503, f"The inference gateway cannot check this request right now ({what}); nothing was "
                             "sent to the model. Retry shortly.", type="service_unavailable",
                        code="service_unavailable", retry_after=2)


def _make_limiter() -> Any:
    lease = settings.GATEWAY_CONCURRENCY_LEASE_SECONDS
    if not settings.REDIS_URL:
        return LocalLimiter(lease_seconds=lease)
    import redis.asyncio as aioredis

    timeout = settings.GATEWAY_BACKEND_TIMEOUT_SECONDS
    # No per-read socket timeout: the limiter puts one deadline on each round trip (limits.py).
    client = aioredis.Redis.from_url(settings.REDIS_URL, socket_connect_timeout=timeout, retry_on_timeout=False,
                                     max_connections=256)
    return RedisLimiter(client, lease_seconds=lease, prefix=settings.GATEWAY_REDIS_PREFIX, timeout=timeout)


@dataclass(slots=True)
class _Call:
    """What a completion request asks for, as read by ``Gateway.parse`` and completed by ``Gateway.cap``."""

    api: str  # "chat", "text" or "responses"
    data: dict[str, Any]
    model: str
    stream: bool
    completions: int  # n, times the prompts of a batch
    max_tokens: int  # the answer's cap: the largest the request set, or the one ``cap`` chose
    user: str | None
    client_usage: bool = False  # what the client asked of a stream's usage (vLLM is always asked for all)
    client_continuous: bool = False


class _Request:
    """One completion request's state, for settling and metering whatever way it ends."""

    __slots__ = ("id", "key", "deployment", "reserved", "prompt_tokens", "completion_tokens", "user", "cancelled",
                 "failed", "chunks", "estimated_prompt", "hold_reservation", "client_usage", "client_continuous",
                 "started", "done", "disconnected", "responses")

    def __init__(self, request_id: str, key: KeyInfo, deployment: DeploymentInfo, reserved: int,
                 user: str | None) -> None:
        self.id, self.key, self.deployment, self.reserved, self.user = request_id, key, deployment, reserved, user
        self.prompt_tokens = self.completion_tokens = self.chunks = self.estimated_prompt = 0
        self.cancelled = self.failed = self.hold_reservation = False
        # What the client asked of a stream's usage (vLLM is always asked for all of it).
        self.client_usage = self.client_continuous = False
        # The relay's progress: response headers sent, answer complete, client gone.
        self.started = self.done = self.disconnected = False
        self.responses = False  # a Responses API request: its stream is named events, its usage input/output

    def usage_from(self, usage: Any) -> None:
        if isinstance(usage, dict):
            prompt = usage.get("input_tokens" if self.responses else "prompt_tokens")
            completion = usage.get("output_tokens" if self.responses else "completion_tokens")
            if isinstance(prompt, int) and isinstance(completion, int):
                self.prompt_tokens, self.completion_tokens = prompt, completion


class Gateway:
    """ASGI: /v1/* is the gateway, the rest goes to ``app``. Handles the lifespan (start-up, final flush)."""

    def __init__(self, app: Any = None, *, strategy: Strategy | None = None) -> None:
        self.app = app
        self.strategy: Strategy = strategy or LeastOutstanding()
        self.ready = False
        self.in_flight = 0  # relayed requests not yet metered and settled (the client may have its answer)
        self._flusher: asyncio.Task[None] | None = None
        self._ids = itertools.count(1)

    # --- lifecycle ------------------------------------------------------------------------------------------

    async def startup(self) -> None:
        if self.ready:
            return
        self.ready = True
        # Request ids name concurrency slots in Redis: unique across processes (made after any fork) and restarts.
        self._id_prefix = f"{os.getpid()}-{os.urandom(6).hex()}-"
        self.directory = Directory()
        self.limiter = _make_limiter()
        self.meter = UsageMeter()
        atexit.register(self.meter.close)
        self.flush_executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="gateway-flush")
        self.retries = settings.GATEWAY_UPSTREAM_RETRIES
        self.max_body = settings.GATEWAY_MAX_BODY_BYTES
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, keepalive_timeout=30, ttl_dns_cache=60),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=settings.GATEWAY_UPSTREAM_CONNECT_TIMEOUT_SECONDS,
                                          sock_read=settings.GATEWAY_UPSTREAM_READ_TIMEOUT_SECONDS),
            auto_decompress=False, skip_auto_headers=("User-Agent",),
        )
        self._flusher = asyncio.get_running_loop().create_task(self._flush_loop())

    async def shutdown(self) -> None:
        if not self.ready:
            return
        self.ready = False
        if self._flusher is not None:
            self._flusher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._flusher
        # Waits for a flush in progress (the meter flushes one at a time), then writes the rest.
        await asyncio.get_running_loop().run_in_executor(self.flush_executor, self.meter.close)
        self.flush_executor.shutdown(wait=True)
        await self.session.close()
        await self.limiter.close()
        self.directory.close()

    async def _flush_loop(self) -> None:
        interval = settings.GATEWAY_USAGE_FLUSH_SECONDS
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(interval)
            try:
                await loop.run_in_executor(self.flush_executor, self.meter.flush_in_thread)
            except Exception:
                logger.exception("gateway: usage flush failed; %d requests buffered, new requests refused until "
                                 "it succeeds", self.meter.pending())

    # --- ASGI -----------------------------------------------------------------------------------------------

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        kind = scope["type"]
        if kind == "http":
            path = scope["path"]
            if path == "/v1" or path.startswith("/v1/"):
                if not self.ready:
                    await self.startup()
                await self.handle(scope, receive, send)
                return
        elif kind == "lifespan":
            await self._lifespan(receive, send)
            return
        if self.app is None:
            await _send_error(send, GatewayError(404, "Not found.", code="unknown_url"))
            return
        await self.app(scope, receive, send)

    async def _lifespan(self, receive: Any, send: Any) -> None:
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                await self.shutdown()
                await send({"type": "lifespan.shutdown.complete"})
                return

    async def handle(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        path, method = scope["path"], scope["method"]
        try:
            if path in COMPLETION_PATHS:
                if method != "POST":
                    raise GatewayError(405, f"{path} takes POST, not {method}.", code="method_not_allowed")
                await self.completion(scope, receive, send)
            elif path == "/v1/models" or path.startswith("/v1/models/"):
                if method != "GET":
                    raise GatewayError(405, f"{path} takes GET, not {method}.", code="method_not_allowed")
                await self.models(scope, send, path[len("/v1/models/"):] if path != "/v1/models" else None)
            else:
                raise GatewayError(404, f"Unknown request URL: {method} {path}. This gateway serves "
                                        "/v1/chat/completions, /v1/completions, /v1/responses and /v1/models.", code="unknown_url")
        except GatewayError as error:
            await _send_error(send, error)
        except _ClientGone:
            return

    # --- the steps ------------------------------------------------------------------------------------------

    async def authenticate(self, scope: dict[str, Any]) -> tuple[KeyInfo, dict[bytes, bytes]]:
        """The caller's key, verified by the one verifier (access/keys.py) against the one key cache."""
        headers = dict(scope["headers"])
        auth = headers.get(b"authorization", b"")
        if auth[:7].lower() != b"bearer ":
            raise GatewayError(401, "No API key provided: send it as 'Authorization: Bearer <key>'.",
                               type="invalid_request_error", code="invalid_api_key")
        presented = auth[7:].strip()
        prefix = key_prefix(presented)
        row = None
        try:
            if prefix is not None:
                hit, row = key_cache.cached(prefix)
                if not hit:
                    row = await self.directory.key_row(prefix)
            row = key_verify(presented, row)
            limits = self.directory.fresh(("limits", row.organisation_id)) or \
                await self.directory.limits(row.organisation_id)
        except BackendUnavailable as exc:
            raise _unavailable("database") from exc
        except KeyRejected as exc:
            status, code = _KEY_REFUSALS[exc.reason]
            raise GatewayError(status, str(exc), type="invalid_request_error" if status == 401 else
                               "permission_error", code=code) from None
        if Scope.INFERENCE not in row.scopes:
            raise GatewayError(403, "This API key lacks the 'inference' scope needed to call models.",
                               type="permission_error", code="insufficient_scope")
        return self.directory.key_info(row, limits), headers

    async def _deployment(self, key: KeyInfo, model: str) -> DeploymentInfo:
        try:
            deployments = (self.directory.fresh(("deployments", key.organisation_id))
                           or await self.directory.deployments(key.organisation_id))
        except BackendUnavailable as exc:
            raise _unavailable("database") from exc
        deployment = deployments.get(model)
        if deployment is None or (key.product_id is not None and deployment.product_id != key.product_id):
            raise GatewayError(404, f"The model `{model}` does not exist or you do not have access to it.",
                               param="model", code="model_not_found")
        return deployment

    async def models(self, scope: dict[str, Any], send: Any, model_id: str | None) -> None:
        key, _ = await self.authenticate(scope)
        try:
            deployments = await self.directory.deployments(key.organisation_id)
        except BackendUnavailable as exc:
            raise _unavailable("database") from exc
        visible = [d for d in deployments.values() if key.product_id is None or d.product_id == key.product_id]
        cards = {d.served_model_name: {"id": d.served_model_name, "object": "model", "created": d.created,
                                       "owned_by": "corral"} for d in visible}
        if model_id is None:
            await _send_json(send, 200, {"object": "list", "data": sorted(cards.values(), key=lambda c: c["id"])})
        elif model_id in cards:
            await _send_json(send, 200, cards[model_id])
        else:
            raise GatewayError(404, f"The model `{model_id}` does not exist or you do not have access to it.",
                               param="model", code="model_not_found")

    async def completion(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A completion, chat completion or response, in the steps the module docstring names."""
        key, headers = await self.authenticate(scope)
        body = await self._read_body(headers, receive)
        if not self.meter.healthy:
            raise _unavailable("usage metering")
        call = self.parse(COMPLETION_PATHS[scope["path"]], body, headers, key)
        deployment = await self.gate(key, call)
        upstream_body = self.cap(call, key, deployment, body)
        request = await self.reserve(call, key, deployment, len(body))
        self.in_flight += 1
        try:
            await self._relay(scope["path"], upstream_body, request, receive, send, stream=call.stream)
        finally:
            try:
                await self._finish(request)
            finally:
                self.in_flight -= 1

    def parse(self, api: str, body: bytes, headers: dict[bytes, bytes], key: KeyInfo) -> _Call:
        """Read the request: its model, whether it streams, and the end user; refuse what the organisation's
        caps on `n` and on the answer's tokens do not allow (every field that caps the answer is checked)."""
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise GatewayError(400, f"The request body is not valid JSON: {exc}.") from None
        if not isinstance(data, dict):
            raise GatewayError(400, "The request body must be a JSON object.")
        model = data.get("model")
        if not isinstance(model, str) or not model:
            raise GatewayError(400, "`model` is required: the name of one of your deployments (see /v1/models).",
                               param="model", code="missing_model" if model is None else "invalid_type")
        stream = data.get("stream", False)
        if not isinstance(stream, bool):
            raise GatewayError(400, "`stream` must be true or false.", param="stream", code="invalid_type")
        n = _int_field(data, "n", 1)
        prompts = 1
        if api == "text" and isinstance(data.get("prompt"), list) and data["prompt"] and \
                isinstance(data["prompt"][0], (str, list)):
            prompts = len(data["prompt"])  # a batch of prompts: n completions each
        if n * prompts > key.max_n:
            raise GatewayError(422, f"`n` is {n} for {prompts} prompt(s), {n * prompts} completions; this "
                                    f"organisation allows at most {key.max_n}.", param="n", code="n_too_large")
        max_tokens = 0
        for token_field in TOKEN_FIELDS[api]:
            value = _int_field(data, token_field, 0)
            if value > key.max_tokens:
                raise GatewayError(422, f"`{token_field}` is {value}; this organisation allows at most "
                                        f"{key.max_tokens}.", param=token_field, code="max_tokens_too_large")
            max_tokens = max(max_tokens, value)  # the larger is reserved
        user = _end_user(data)
        if not user:
            header_user = headers.get(settings.GATEWAY_USER_HEADER.encode())
            user = header_user.decode("utf-8", "replace") if header_user else (key.default_user or None)
        return _Call(api=api, data=data, model=model, stream=stream, completions=n * prompts,
                     max_tokens=max_tokens, user=user)

    async def gate(self, key: KeyInfo, call: _Call) -> DeploymentInfo:
        """The licence's gates for this key and model: the deployment must be the key's, the EU clause of the
        3.2 / 3.3 / 4 AUPs must allow it, the group's access decision for its version must allow it, and it
        must have a ready replica."""
        deployment = await self._deployment(key, call.model)
        refusal = eu_multimodal_refusal(
            version_name=deployment.version_name, licence_name=deployment.licence_name,
            restricted=deployment.eu_multimodal_restriction, multimodal=deployment.multimodal,
            eu_domiciled=key.organisation_eu_domiciled)
        if refusal:
            raise GatewayError(403, refusal, type="permission_error", param="model", code=EU_MULTIMODAL)
        try:
            gate = (self.directory.fresh(("gate", key.organisation_id, deployment.licence_version_id))
                    or await self.directory.gate(key.organisation_id, deployment.licence_version_id))
        except BackendUnavailable as exc:
            raise _unavailable("database") from exc
        if not gate.allowed:
            raise GatewayError(403, gate.detail, type="permission_error", code=gate.reason)
        if not deployment.upstreams:
            raise GatewayError(503, f"The model `{call.model}` has no ready replica right now (deployment state: "
                                    f"{deployment.state}).", type="service_unavailable", code="model_not_ready",
                               retry_after=5)
        return deployment

    def cap(self, call: _Call, key: KeyInfo, deployment: DeploymentInfo, body: bytes) -> bytes:
        """The body vLLM gets: the token cap filled in where the request sets none and the model would allow
        more, and a stream's usage always asked for (so it is metered). Sets ``call.max_tokens`` to what the
        answer may use."""
        data, api, rewrite = call.data, call.api, False
        if not call.max_tokens and api == "text":
            call.max_tokens = min(16, key.max_tokens)  # the completions API's default (OpenAI's and vLLM's)
        elif not call.max_tokens:
            if deployment.max_model_len > key.max_tokens:
                call.max_tokens = key.max_tokens  # the cap holds also for requests that set none
                data[TOKEN_FIELDS[api][0]] = call.max_tokens
                rewrite = True
            else:
                call.max_tokens = deployment.max_model_len  # vLLM's own bound is within the cap: left to vLLM
        if call.stream and api != "responses":  # a response's usage is in its final event, always
            options = data.get("stream_options") or {}
            if not isinstance(options, dict):
                raise GatewayError(400, "`stream_options` must be an object.", param="stream_options",
                                   code="invalid_type")
            call.client_usage = options.get("include_usage") is True
            call.client_continuous = call.client_usage and options.get("continuous_usage_stats") is True
            data["stream_options"] = {**options, "include_usage": True, "continuous_usage_stats": True}
            rewrite = True
        return orjson.dumps(data) if rewrite else body

    async def reserve(self, call: _Call, key: KeyInfo, deployment: DeploymentInfo, body_size: int) -> _Request:
        """Reserve the answer's tokens (and the prompt's, estimated from its size) and a request slot under the
        key's and the organisation's limits; 429 with Retry-After when they do not allow it."""
        reserve = call.max_tokens * call.completions + body_size // 4
        request = _Request(f"{self._id_prefix}{next(self._ids)}", key, deployment, reserve, call.user)
        request.estimated_prompt = body_size // 4
        request.client_usage, request.client_continuous = call.client_usage, call.client_continuous
        request.responses = call.api == "responses"
        try:
            refusal = await self.limiter.reserve(request_id=request.id, key_id=key.id, org_id=key.organisation_id,
                                                 tokens=reserve, key=key.key_limits, org=key.org_limits)
        except LimiterUnavailable as exc:
            LIMITER_ERRORS.inc()
            raise _unavailable("rate limiter") from exc  # the limiter frees the slot once Redis answers again
        if refusal is not None:
            raise GatewayError(429, refusal.message, type="tokens" if "tokens" in refusal.limit else "requests",
                               code="rate_limit_exceeded", retry_after=refusal.retry_after)
        return request

    async def _finish(self, request: _Request) -> None:
        key = request.key
        self.meter.record(organisation_id=key.organisation_id, key_id=key.id, deployment_id=request.deployment.id,
                          product_id=request.deployment.product_id, prompt_tokens=request.prompt_tokens,
                          completion_tokens=request.completion_tokens, user=request.user,
                          cancelled=request.cancelled, failed=request.failed)
        try:
            await self.limiter.settle(request_id=request.id, key_id=key.id, org_id=key.organisation_id,
                                      reserved=request.reserved,
                                      used=request.reserved if request.hold_reservation else
                                      request.prompt_tokens + request.completion_tokens,
                                      key=key.key_limits, org=key.org_limits)
        except LimiterUnavailable:
            # The slot's lease frees it later; the tokens stay reserved (the conservative side).
            logger.warning("gateway: could not settle request %s with the rate limiter", request.id)

    async def _read_body(self, headers: dict[bytes, bytes], receive: Any) -> bytes:
        limit = self.max_body
        declared = headers.get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise GatewayError(413, f"The request body is larger than this gateway accepts ({limit} bytes).",
                               code="request_too_large")
        chunks, size = [], 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise _ClientGone
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise GatewayError(413, f"The request body is larger than this gateway accepts ({limit} bytes).",
                                   code="request_too_large")
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    # --- relay ----------------------------------------------------------------------------------------------

    async def _relay(self, path: str, body: bytes, request: _Request, receive: Any, send: Any, *,
                     stream: bool) -> None:
        task = asyncio.current_task()
        assert task is not None

        async def watch() -> None:
            while (await receive())["type"] != "http.disconnect":
                pass
            if not request.done:
                request.disconnected = True
                task.cancel()

        watcher = asyncio.get_running_loop().create_task(watch())
        try:
            await self._relay_attempts(path, body, request, send, stream)
        except asyncio.CancelledError:
            if not request.disconnected:
                raise
            task.uncancel()
            request.cancelled = True
            if not request.prompt_tokens and not request.completion_tokens:
                # Gone before vLLM said what it used (a non-streaming request): vLLM may have generated up to
                # the reservation. The limits keep all of it; usage records the prompt estimate.
                request.prompt_tokens = request.estimated_prompt
                request.hold_reservation = True
        except GatewayError as error:
            request.failed = True
            request.done = True
            if request.started:  # headers already went out: end the stream with an error event
                await send({"type": "http.response.body", "body": b"data: " + error.body() + b"\n\n"})
            else:
                await _send_error(send, error)
        finally:
            request.done = True
            watcher.cancel()

    async def _relay_attempts(self, path: str, body: bytes, request: _Request, send: Any, stream: bool) -> None:
        tried: set[int] = set()
        headers = {"Authorization": "", "Content-Type": "application/json",
                   "X-Request-ID": REQUEST_ID.get() or request.id}
        for _attempt in range(self.retries + 1):
            upstream = self.strategy.choose(request.deployment.upstreams, frozenset(tried))
            if upstream is None:
                break
            tried.add(upstream.replica_id)
            headers["Authorization"] = upstream.authorization
            self.strategy.started(upstream)
            try:
                try:
                    response = await self.session.post(upstream.endpoint + path, data=body, headers=headers)
                except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError):
                    # Nothing reached vLLM: safe to try another replica.
                    logger.warning("gateway: replica %s unreachable, trying another", upstream.replica_id)
                    continue
                except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
                    raise _upstream_failure(exc) from None
                try:
                    await self._pass_on(response, request, send, stream)
                finally:
                    response.close()  # not back to the pool mid-stream: vLLM sees the disconnect and aborts
            finally:
                self.strategy.finished(upstream)
            return
        raise GatewayError(502, f"No replica of `{request.deployment.served_model_name}` could be reached.",
                           type="upstream_error", code="upstream_unavailable", retry_after=2)

    async def _pass_on(self, response: aiohttp.ClientResponse, request: _Request, send: Any, stream: bool) -> None:
        try:
            if response.status != 200 or not stream:
                payload = await response.read()
                if response.status != 200:
                    raise _upstream_error(response.status, payload)
                with contextlib.suppress(Exception):
                    request.usage_from(orjson.loads(payload).get("usage"))
                request.done = True
                await send({"type": "http.response.start", "status": 200, "headers": [
                    _JSON, (b"content-length", str(len(payload)).encode()), (b"x-request-id", request.id.encode()),
                    *_security_headers()]})
                await send({"type": "http.response.body", "body": payload})
                return
            await send({"type": "http.response.start", "status": 200, "headers": [
                (b"content-type", b"text/event-stream; charset=utf-8"), (b"x-accel-buffering", b"no"),
                (b"x-request-id", request.id.encode()), *_security_headers()]})
            request.started = True
            # Whatever vLLM sent is relayed at once; events that arrived together go out in one write.
            pending = b""
            async for data in response.content.iter_any():
                *lines, pending = (pending + data).split(b"\n")
                if len(pending) > MAX_SSE_LINE:
                    raise ValueError("SSE line too long")
                out = (self._relay_events if request.responses else self._relay_lines)(lines, request)
                if out:
                    await send({"type": "http.response.body", "body": out, "more_body": True})
            out = (self._relay_events if request.responses else self._relay_lines)([pending], request)
            if out:
                await send({"type": "http.response.body", "body": out, "more_body": True})
            request.done = True
            await send({"type": "http.response.body", "body": b""})
        except (asyncio.TimeoutError, aiohttp.ClientError) as exc:
            raise _upstream_failure(exc) from None
        except (ValueError, TypeError) as exc:  # an SSE line too long, a malformed chunk from vLLM
            logger.warning("gateway: unreadable answer from replica of deployment %s: %s",
                           request.deployment.id, type(exc).__name__)
            raise GatewayError(502, "The model's answer could not be read.", type="upstream_error",
                               code="upstream_error") from None


    @staticmethod
    def _relay_lines(lines: list[bytes], request: _Request) -> bytes:
        """The SSE events to pass on for these lines from vLLM, with usage kept only where the client asked."""
        out = []
        for line in lines:
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if payload == b"[DONE]":
                request.done = True
                out.append(b"data: [DONE]\n\n")
                continue
            if b'"usage"' in payload:
                chunk = orjson.loads(payload)
                usage = chunk.get("usage") if isinstance(chunk, dict) else None
                if usage:
                    request.usage_from(usage)
                    if not chunk.get("choices"):  # the final usage-only chunk
                        if not request.client_usage:
                            continue
                    elif not request.client_continuous:  # usage only in the final chunk, as OpenAI does
                        if request.client_usage:
                            chunk["usage"] = None
                        else:
                            del chunk["usage"]
                        payload = orjson.dumps(chunk)
            elif b'"error"' in payload:
                request.failed = True
            request.chunks += 1
            out.append(b"data: " + payload + b"\n\n")
        return b"".join(out)

    @staticmethod
    def _relay_events(lines: list[bytes], request: _Request) -> bytes:
        """The Responses API's named SSE events, passed on as vLLM sent them; the usage is read from the event
        that ends the response (`response.completed`, `.incomplete` or `.failed`)."""
        out = []
        for line in lines:
            if line.startswith(b"event:"):
                name = line[6:].strip()
                if name in (b"error", b"response.failed"):
                    request.failed = True
                out.append(b"event: " + name + b"\n")
                continue
            if not line.startswith(b"data:"):
                continue
            payload = line[5:].strip()
            if b'"usage"' in payload and any(name in payload for name in _FINAL_RESPONSE_EVENTS):
                event = orjson.loads(payload)
                response = event.get("response") if isinstance(event, dict) else None
                if isinstance(response, dict) and str(event.get("type")).encode() in _FINAL_RESPONSE_EVENTS:
                    request.usage_from(response.get("usage"))
                    request.done = True
            request.chunks += 1
            out.append(b"data: " + payload + b"\n\n")
        return b"".join(out)


def _end_user(data: dict[str, Any]) -> str | None:
    """The end user the request names. OpenAI's `safety_identifier` succeeds the deprecated `user` and wins when
    both are sent: a client that sets the new field means it to identify the person, and may keep `user` for
    what it still does elsewhere (a cache key, a legacy tag)."""
    for name in ("safety_identifier", "user"):
        value = data.get(name)
        if value is not None and not isinstance(value, str):
            raise GatewayError(400, f"`{name}` must be a string.", param=name, code="invalid_type")
    return data.get("safety_identifier") or data.get("user") or None


def _int_field(data: dict[str, Any], name: str, default: int) -> int:
    value = data.get(name)
    if value is None:
        return default
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise GatewayError(400, f"`{name}` must be a positive integer.", param=name, code="invalid_type")
    return value


def _upstream_failure(exc: BaseException) -> GatewayError:
    if isinstance(exc, asyncio.TimeoutError):
        return GatewayError(504, "The model did not answer in time.", type="timeout", code="upstream_timeout")
    return GatewayError(502, "The connection to the model failed.", type="upstream_error", code="upstream_error")


def _upstream_error(status: int, payload: bytes) -> GatewayError:
    """vLLM's own error, in OpenAI's shape: client errors keep their status and message, the rest is a 502."""
    message, param = "", None
    with contextlib.suppress(Exception):
        parsed = orjson.loads(payload)
        error = parsed.get("error") if isinstance(parsed.get("error"), dict) else parsed
        message, param = str(error.get("message", "")), error.get("param")
    if status in (400, 413, 422):
        return GatewayError(status, message or "The model refused the request.",
                            param=param, code="upstream_refused")
    if status == 429 or status == 503:
        return GatewayError(503, "The model is overloaded; retry shortly.", type="service_unavailable",
                            code="model_overloaded", retry_after=2)
    return GatewayError(502, f"The model failed with status {status}.", type="upstream_error", code="upstream_error")


def _security_headers() -> tuple[tuple[bytes, bytes], ...]:
    """What Django's SecurityMiddleware and config/middleware.py add to the API's answers, for the gateway's,
    which do not pass through Django: answers are one tenant's and never cached, never sniffed, HTTPS only."""
    return _headers_for(settings.SECURE_HSTS_SECONDS, settings.SECURE_HSTS_INCLUDE_SUBDOMAINS,
                        settings.SECURE_HSTS_PRELOAD)


@functools.lru_cache(maxsize=4)
def _headers_for(hsts_seconds: int, subdomains: bool, preload: bool) -> tuple[tuple[bytes, bytes], ...]:
    headers = [(b"cache-control", b"no-store"), (b"x-content-type-options", b"nosniff")]
    if hsts_seconds:
        value = f"max-age={hsts_seconds}" + ("; includeSubDomains" if subdomains else "") + \
            ("; preload" if preload else "")
        headers.append((b"strict-transport-security", value.encode()))
    return tuple(headers)


async def _send_json(send: Any, status: int, body: Any) -> None:
    payload = orjson.dumps(body)
    await send({"type": "http.response.start", "status": status, "headers": [
        _JSON, (b"content-length", str(len(payload)).encode()), *_security_headers()]})
    await send({"type": "http.response.body", "body": payload})


async def _send_error(send: Any, error: GatewayError) -> None:
    count_refusal(error.code or error.type)
    payload = error.body()
    headers = [_JSON, (b"content-length", str(len(payload)).encode()), *_security_headers()]
    if error.retry_after is not None:
        headers.append((b"retry-after", str(error.retry_after).encode()))
    await send({"type": "http.response.start", "status": error.status, "headers": headers})
    await send({"type": "http.response.body", "body": payload})

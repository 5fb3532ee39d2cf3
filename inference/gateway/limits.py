"""Rate limits of the gateway: requests per minute, tokens per minute and concurrent requests, per key and per
organisation, checked and reserved in one atomic step.

Requests and tokens are token buckets that refill continuously (a limit of 600 per minute refills 10 a
second, up to 600). A request first *reserves* one request and its token estimate (``max_tokens`` times ``n``
plus the prompt's size) in both the key's and the organisation's buckets and takes a concurrency slot in
both; when it ends it *settles*: the slot is given back and the difference between the reserve and the real
usage is returned to the token buckets (or taken, when the estimate was low, possibly below zero, which
then delays the next request). A request larger than a whole minute's tokens is let through when the bucket
is full, so that no request is refused forever.

``RedisLimiter`` holds the state in Redis, so the limits hold across every gateway process; both steps are
Lua scripts (one round trip each, atomic on the server). A concurrency slot is a member of a sorted set
scored by its lease's end, so a slot held by a gateway that died is freed when the lease ends.
Every key one script call touches carries the organisation's hash tag (``corral:gw:{o7}:k:12:rpm``,
``corral:gw:{o7}:rpm``): an API key belongs to one organisation, so a reservation's six keys and a settlement's
four lie in one Redis Cluster slot, which Redis Cluster requires of a script. (Before the tag the keys were
``corral:gw:k:12:rpm`` and ``corral:gw:o:7:rpm``; the buckets and slots live two minutes past their last use,
so an upgrade only starts every bucket full once.)
``LocalLimiter`` is the same algorithm in this process's memory, for the embedded single-process setup
without Redis (production requires Redis: see the deploy check in inference/checks.py).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from dataclasses import dataclass
from typing import Any

from redis.exceptions import NoScriptError

# Time comes from Redis (TIME), so gateways on hosts with skewed clocks share one clock. A bucket expires
# once it would have refilled completely (a debt is not forgotten by waiting for the key to expire).
_CLOCK = """
local t = redis.call("TIME")
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local function keep(key, level, cap)
  local refill = 0
  if level < cap then refill = math.ceil((cap - level) * 60000 / cap) end
  redis.call("PEXPIRE", key, math.max(120000, refill + 60000))
end
"""

# KEYS: for each of key and organisation (in that order): requests bucket, tokens bucket, concurrency set.
# ARGV: (unused), request id, lease_ms, tokens to reserve,
#       then for key and organisation: requests per minute, tokens per minute, max concurrent.
_RESERVE = _CLOCK + """
local rid = ARGV[2]
local lease = tonumber(ARGV[3])
local cost = tonumber(ARGV[4])
local levels = {}
for scope = 0, 1 do
  local rpm = tonumber(ARGV[5 + scope * 3])
  local tpm = tonumber(ARGV[6 + scope * 3])
  local conc = tonumber(ARGV[7 + scope * 3])
  local names = {"requests", "tokens"}
  local caps = {rpm, tpm}
  local costs = {1, cost}
  for i = 1, 2 do
    local key = KEYS[scope * 3 + i]
    local state = redis.call("HMGET", key, "v", "t")
    local cap = caps[i]
    if cap <= 0 then
      return {0, (scope == 0 and "key" or "organisation") .. "_" .. names[i], 60000}
    end
    local level = cap
    if state[1] then
      level = math.min(cap, tonumber(state[1]) + (now - tonumber(state[2])) * cap / 60000)
    end
    local need = costs[i]
    if need > cap then need = cap end
    if level < need then
      local wait = math.ceil((need - level) * 60000 / cap)
      return {0, (scope == 0 and "key" or "organisation") .. "_" .. names[i], wait}
    end
    levels[scope * 3 + i] = level
  end
  local zkey = KEYS[scope * 3 + 3]
  if conc <= 0 then
    return {0, (scope == 0 and "key" or "organisation") .. "_concurrency", 60000}
  end
  redis.call("ZREMRANGEBYSCORE", zkey, "-inf", now)
  if redis.call("ZCARD", zkey) >= conc then
    return {0, (scope == 0 and "key" or "organisation") .. "_concurrency", 1000}
  end
end
for scope = 0, 1 do
  local costs = {1, cost}
  local caps = {tonumber(ARGV[5 + scope * 3]), tonumber(ARGV[6 + scope * 3])}
  for i = 1, 2 do
    local key = KEYS[scope * 3 + i]
    local level = levels[scope * 3 + i] - costs[i]
    redis.call("HSET", key, "v", level, "t", now)
    keep(key, level, caps[i])
  end
  local zkey = KEYS[scope * 3 + 3]
  redis.call("ZADD", zkey, now + lease, rid)
  redis.call("PEXPIRE", zkey, lease + 60000)
end
return {1, "", 0}
"""

# KEYS: key tokens bucket, key concurrency set, organisation tokens bucket, organisation concurrency set.
# ARGV: (unused), request id, tokens to give back (negative: to take), key tpm, organisation tpm.
_SETTLE = _CLOCK + """
local delta = tonumber(ARGV[3])
for scope = 0, 1 do
  local key = KEYS[scope * 2 + 1]
  local cap = tonumber(ARGV[4 + scope])
  local state = redis.call("HMGET", key, "v", "t")
  if state[1] and cap > 0 then
    local level = math.min(cap, tonumber(state[1]) + (now - tonumber(state[2])) * cap / 60000 + delta)
    redis.call("HSET", key, "v", level, "t", now)
    keep(key, level, cap)
  end
  redis.call("ZREM", KEYS[scope * 2 + 2], ARGV[2])
end
return 1
"""


@dataclass(frozen=True, slots=True)
class Limits:
    requests_per_minute: int
    tokens_per_minute: int
    max_concurrent: int


@dataclass(frozen=True, slots=True)
class Refusal:
    """Which limit refused the request, and after how many seconds a retry can pass."""

    limit: str
    retry_after: int

    @property
    def message(self) -> str:
        scope, _, kind = self.limit.partition("_")
        what = {"requests": "requests per minute", "tokens": "tokens per minute",
                "concurrency": "concurrent requests"}[kind]
        owner = "this API key" if scope == "key" else "your organisation"
        return f"Rate limit reached: {what} of {owner}. Retry after {self.retry_after} s."


# How long a settlement may wait to ride along with a reservation before it is sent on its own.
SETTLE_DELAY = 0.025


class LimiterUnavailable(Exception):
    """The limiter's store cannot be reached: the gateway fails closed."""


def _retry_seconds(wait_ms: float) -> int:
    return max(1, math.ceil(wait_ms / 1000))


class RedisLimiter:
    """The limits in Redis. Calls made in the same turn of the event loop (many, under load) go out as one
    pipeline: one round trip and one write for the batch instead of one each, which is most of what the
    limits cost per request. Each call is still its own atomic script."""

    def __init__(self, client: Any, *, lease_seconds: int, prefix: str = "corral:gw", timeout: float = 1.5) -> None:
        self.client = client
        self.timeout = timeout
        self._send_soon = self._send_later = False
        self.lease_ms = lease_seconds * 1000
        if "{" in prefix or "}" in prefix:  # the first {...} of a key picks its cluster slot: it must be ours
            raise ValueError(f"the limiter's Redis key prefix {prefix!r} may not contain '{{' or '}}'")
        self.prefix = prefix
        self._sha = {name: hashlib.sha1(body.encode()).hexdigest() for name, body in
                     (("reserve", _RESERVE), ("settle", _SETTLE))}
        self._scripts = {"reserve": _RESERVE, "settle": _SETTLE}
        self._pending: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]] = []
        self._unsettled: list[tuple[list[str], list[Any]]] = []
        self._tasks: set[asyncio.Task[None]] = set()

    def _keys(self, key_id: int, org_id: int) -> list[str]:
        """The key's and the organisation's buckets and slots, all in the organisation's cluster slot."""
        org = f"{self.prefix}:{{o{org_id}}}"
        return [f"{org}:k:{key_id}:rpm", f"{org}:k:{key_id}:tpm", f"{org}:k:{key_id}:conc",
                f"{org}:rpm", f"{org}:tpm", f"{org}:conc"]

    def _call(self, script: str, keys: list[str], args: list[Any], *, urgent: bool = True) -> asyncio.Future[Any]:
        """Queue a script call. Urgent calls (reservations: a request waits) go out at the end of this turn of
        the loop; the others (settlements) ride along with the next batch, or go out after SETTLE_DELAY."""
        loop = asyncio.get_running_loop()
        future = loop.create_future()
        self._pending.append((script, keys, args, future))
        if urgent and not self._send_soon:
            self._send_soon = True
            loop.call_soon(self._send_pending)
        elif not urgent and not self._send_later:
            self._send_later = True
            loop.call_later(SETTLE_DELAY, self._send_pending)
        return future

    def _send_pending(self) -> None:
        self._send_soon = self._send_later = False  # a timer still set only sends what came since
        if self._unsettled:  # settlements a failed round trip left undone go out first
            loop = asyncio.get_running_loop()
            self._pending[:0] = [("settle", keys, args, loop.create_future()) for keys, args in self._unsettled]
            self._unsettled = []
        if not self._pending:
            return
        batch, self._pending = self._pending, []
        # Settlements first, so a reservation in the same batch sees the slots and tokens given back.
        batch.sort(key=lambda call: call[0] != "settle")
        task = asyncio.get_running_loop().create_task(self._send(batch))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            # One deadline for the whole round trip (cheaper than redis-py's per-read socket timeout).
            async with asyncio.timeout(self.timeout):
                results = await self._execute(batch)
                if any(isinstance(r, NoScriptError) for r in results):
                    # Redis restarted without our scripts: load them and send the batch again (once).
                    for body in self._scripts.values():
                        await self.client.script_load(body)
                    results = await self._execute(batch)
        except Exception as exc:  # connection refused, timeout: every caller fails closed
            self._remember_unsettled(batch)
            for *_, future in batch:
                if not future.done():
                    future.set_exception(LimiterUnavailable(f"{type(exc).__name__}: {exc}"))
                    future.exception()  # a settlement's caller may not wait for it: no "never retrieved" noise
            return
        for (*_, future), result in zip(batch, results):
            if future.done():
                continue
            if isinstance(result, Exception):
                future.set_exception(LimiterUnavailable(str(result)))
            else:
                future.set_result(result)

    def _remember_unsettled(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> None:
        """After a failed round trip, nobody knows which scripts ran. Settlements are kept to be sent again, and
        each reservation gets one that frees its slot (a no-op if it never ran), so that a Redis stall does not
        leave slots held until their lease ends. Sent with the next batch, or after a second."""
        for script, keys, args, _ in batch:
            if script == "settle":
                self._unsettled.append((keys, args))
            else:  # reserve: KEYS k:rpm, k:tpm, k:conc, o:rpm, o:tpm, o:conc; ARGV[6], ARGV[9] the tpm limits
                self._unsettled.append(([keys[1], keys[2], keys[4], keys[5]], [0, args[1], 0, args[5], args[8]]))
        del self._unsettled[:-100_000]  # bounded: past that, the leases free what is left
        loop = asyncio.get_running_loop()
        if not self._send_later:
            self._send_later = True
            loop.call_later(1.0, self._send_pending)

    async def _execute(self, batch: list[tuple[str, list[str], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for script, keys, args, _ in batch:
            pipe.evalsha(self._sha[script], len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)

    async def reserve(self, *, request_id: str, key_id: int, org_id: int, tokens: int, key: Limits,
                      org: Limits) -> Refusal | None:
        args = [int(time.time() * 1000), request_id, self.lease_ms, tokens,
                key.requests_per_minute, key.tokens_per_minute, key.max_concurrent,
                org.requests_per_minute, org.tokens_per_minute, org.max_concurrent]
        ok, limit, wait = await self._call("reserve", self._keys(key_id, org_id), args)
        if ok:
            return None
        return Refusal(limit.decode() if isinstance(limit, bytes) else limit, _retry_seconds(float(wait)))

    async def settle(self, *, request_id: str, key_id: int, org_id: int, reserved: int, used: int, key: Limits,
                     org: Limits) -> None:
        keys = self._keys(key_id, org_id)
        args = [int(time.time() * 1000), request_id, reserved - used, key.tokens_per_minute, org.tokens_per_minute]
        await self._call("settle", [keys[1], keys[2], keys[4], keys[5]], args, urgent=False)

    async def close(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.client.aclose()


class LocalLimiter:
    """The same rules in this process's memory (one gateway process, no Redis)."""

    def __init__(self, *, lease_seconds: int) -> None:
        self.lease = lease_seconds
        self.buckets: dict[str, tuple[float, float]] = {}
        self.slots: dict[str, dict[str, float]] = {}

    def _level(self, name: str, cap: int, now: float) -> float:
        state = self.buckets.get(name)
        if state is None:
            return float(cap)
        return min(cap, state[0] + (now - state[1]) * cap / 60)

    async def reserve(self, *, request_id: str, key_id: int, org_id: int, tokens: int, key: Limits,
                      org: Limits) -> Refusal | None:
        now = time.time()
        plan = []
        for scope, ident, limits in (("key", key_id, key), ("organisation", org_id, org)):
            for kind, cap, cost in (("requests", limits.requests_per_minute, 1),
                                    ("tokens", limits.tokens_per_minute, tokens)):
                name = f"{scope}:{ident}:{kind}"
                if cap <= 0:
                    return Refusal(f"{scope}_{kind}", 60)
                level = self._level(name, cap, now)
                need = min(cost, cap)
                if level < need:
                    return Refusal(f"{scope}_{kind}", _retry_seconds((need - level) * 60000 / cap))
                plan.append((name, level - cost))
            slots = self.slots.setdefault(f"{scope}:{ident}", {})
            for rid in [rid for rid, until in slots.items() if until <= now]:
                del slots[rid]
            if limits.max_concurrent <= 0:
                return Refusal(f"{scope}_concurrency", 60)
            if len(slots) >= limits.max_concurrent:
                return Refusal(f"{scope}_concurrency", 1)
        for name, level in plan:
            self.buckets[name] = (level, now)
        self.slots[f"key:{key_id}"][request_id] = now + self.lease
        self.slots[f"organisation:{org_id}"][request_id] = now + self.lease
        return None

    async def settle(self, *, request_id: str, key_id: int, org_id: int, reserved: int, used: int, key: Limits,
                     org: Limits) -> None:
        now = time.time()
        for scope, ident, limits in (("key", key_id, key), ("organisation", org_id, org)):
            name = f"{scope}:{ident}:tokens"
            if name in self.buckets and limits.tokens_per_minute > 0:
                cap = limits.tokens_per_minute
                self.buckets[name] = (min(cap, self._level(name, cap, now) + reserved - used), now)
            self.slots.get(f"{scope}:{ident}", {}).pop(request_id, None)

    async def close(self) -> None:
        return None

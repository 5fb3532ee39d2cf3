"""The gateway's rate limits: the algorithm on both stores, atomicity under concurrency, and the limits
holding across two real gateway processes that share Redis."""

from __future__ import annotations

import asyncio
import os
import socket
import subprocess
import sys
import uuid
from pathlib import Path

import httpx
import pytest
import redis
from django.conf import settings
from django.db import connection

from access.models import ApiKey
from inference.gateway.limits import Limits, LocalLimiter, RedisLimiter
from inference.models import replica_key
from tests.factories import make_key
from tests.inference.fake_openai import FakeOpenAI
from tests.inference.gateway_support import ThreadServer, ready_deployment, wait_for

ROOT = Path(__file__).resolve().parents[2]
BIG = Limits(1_000_000, 1_000_000_000, 1_000)


def redis_url() -> str:
    url = settings.REDIS_URL or "redis://127.0.0.1:6379/9"
    try:
        redis.Redis.from_url(url, socket_connect_timeout=0.5).ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {url}: the shared-limit tests need one")
    return url


def make(kind: str, lease: int = 900):
    if kind == "local":
        return LocalLimiter(lease_seconds=lease)
    import redis.asyncio as aioredis

    return RedisLimiter(aioredis.Redis.from_url(redis_url()), lease_seconds=lease,
                        prefix=f"corral-test:{uuid.uuid4().hex[:8]}")


async def reserve(limiter, rid: str, *, key: Limits, org: Limits = BIG, tokens: int = 1, key_id: int = 1,
                  org_id: int = 1):
    return await limiter.reserve(request_id=rid, key_id=key_id, org_id=org_id, tokens=tokens, key=key, org=org)


@pytest.fixture(params=["local", "redis"])
def kind(request) -> str:
    return request.param


def test_requests_per_minute_refill_continuously_and_say_when_to_retry(kind) -> None:
    async def main():
        limiter = make(kind)
        limits = Limits(60, 1_000_000, 100)  # one request a second
        results = [await reserve(limiter, f"r{i}", key=limits) for i in range(61)]
        assert all(r is None for r in results[:60])
        refusal = results[60]
        assert refusal.limit == "key_requests" and refusal.retry_after == 1
        await asyncio.sleep(1.05)
        assert await reserve(limiter, "later", key=limits) is None
        await limiter.close()

    asyncio.run(main())


def test_tokens_are_reserved_then_settled_to_the_real_usage(kind) -> None:
    async def main():
        limiter = make(kind)
        limits = Limits(1_000, 1_000, 100)
        assert await reserve(limiter, "a", key=limits, tokens=600) is None
        refusal = await reserve(limiter, "b", key=limits, tokens=600)
        assert refusal.limit == "key_tokens" and 11 <= refusal.retry_after <= 13  # 200 tokens at 1000/min
        await limiter.settle(request_id="a", key_id=1, org_id=1, reserved=600, used=50, key=limits, org=BIG)
        assert await reserve(limiter, "b", key=limits, tokens=600) is None  # the 550 unused came back
        # Used more than reserved: the difference is taken, below zero if need be.
        await limiter.settle(request_id="b", key_id=1, org_id=1, reserved=600, used=1_500, key=limits, org=BIG)
        refusal = await reserve(limiter, "c", key=limits, tokens=10)
        assert refusal.limit == "key_tokens" and 33 <= refusal.retry_after <= 35  # 350 - 900 = -550: 560 to wait for
        await limiter.close()

    asyncio.run(main())


def test_a_request_bigger_than_a_minute_of_tokens_passes_on_a_full_bucket_only(kind) -> None:
    async def main():
        limiter = make(kind)
        limits = Limits(1_000, 100, 100)
        assert await reserve(limiter, "a", key=limits, tokens=500) is None
        assert (await reserve(limiter, "b", key=limits, tokens=500)).limit == "key_tokens"
        await limiter.close()

    asyncio.run(main())


def test_concurrency_slots_are_held_until_settled_or_the_lease_ends(kind) -> None:
    async def main():
        limiter = make(kind, lease=1)
        limits = Limits(1_000, 1_000_000, 2)
        assert await reserve(limiter, "a", key=limits) is None
        assert await reserve(limiter, "b", key=limits) is None
        assert (await reserve(limiter, "c", key=limits)).limit == "key_concurrency"
        await limiter.settle(request_id="a", key_id=1, org_id=1, reserved=1, used=1, key=limits, org=BIG)
        assert await reserve(limiter, "c", key=limits) is None
        assert (await reserve(limiter, "d", key=limits)).limit == "key_concurrency"
        await asyncio.sleep(1.1)  # b and c were never settled (their gateway died): their leases end
        assert await reserve(limiter, "d", key=limits) is None
        await limiter.close()

    asyncio.run(main())


def test_the_organisation_limit_spans_its_keys_and_a_refusal_takes_nothing(kind) -> None:
    async def main():
        limiter = make(kind)
        org = Limits(3, 1_000_000, 100)
        key = Limits(2, 1_000_000, 100)
        assert await reserve(limiter, "a", key=key, org=org, key_id=1) is None
        assert await reserve(limiter, "b", key=key, org=org, key_id=1) is None
        assert (await reserve(limiter, "c", key=key, org=org, key_id=1)).limit == "key_requests"
        assert await reserve(limiter, "d", key=key, org=org, key_id=2) is None  # c took nothing from the org
        assert (await reserve(limiter, "e", key=key, org=org, key_id=2)).limit == "organisation_requests"
        await limiter.close()

    asyncio.run(main())


def test_concurrent_reservations_never_overshoot_in_redis() -> None:
    async def main():
        limiter = make("redis")
        limits = Limits(25, 1_000_000, 1_000)
        results = await asyncio.gather(*(reserve(limiter, f"r{i}", key=limits) for i in range(200)))
        await limiter.close()
        return results

    results = asyncio.run(main())
    assert sum(r is None for r in results) == 25


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _database_url() -> str:
    s = connection.settings_dict
    if connection.vendor == "sqlite":
        return f"sqlite:///{s['NAME']}"
    return f"postgres://{s['USER']}@{s['HOST'] or '127.0.0.1'}:{s['PORT'] or 5432}/{s['NAME']}"


@pytest.mark.django_db(transaction=True, serialized_rollback=True)
def test_limits_hold_across_two_gateway_processes_and_no_secret_reaches_their_logs(owner_org, tmp_path) -> None:
    url = redis_url()
    fake = FakeOpenAI()
    with ThreadServer(fake) as upstream:
        deployment = ready_deployment(owner_org, upstream.url)
        fake.keys.update(replica_key(r.pk, r.key_salt) for r in deployment.replica_set.all())
        key = make_key(owner_org, ["inference"])
        ApiKey.objects.filter(prefix=key.split(".")[0]).update(requests_per_minute=10)
        env = {**os.environ, "DATABASE_URL": _database_url(), "REDIS_URL": url, "CORRAL_ENV": "development",
               "GATEWAY_REDIS_PREFIX": f"corral-test:{uuid.uuid4().hex[:8]}", "CELERY_BROKER_URL": "memory://"}
        ports = [_free_port(), _free_port()]
        logs = [open(tmp_path / f"gateway-{i}.log", "w+") for i in range(2)]
        processes = [subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--log-level", "debug"],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT) for port, log in zip(ports, logs)]
        try:
            for port in ports:
                wait_for(f"http://127.0.0.1:{port}/healthz", timeout=30)
            statuses = []
            for i in range(20):
                response = httpx.post(f"http://127.0.0.1:{ports[i % 2]}/v1/chat/completions",
                                      headers={"Authorization": f"Bearer {key}"},
                                      json={"model": "chat-small", "messages": [{"role": "user", "content": "hi"}],
                                            "max_tokens": 1}, timeout=10)
                statuses.append(response.status_code)
        finally:
            for process in processes:
                process.terminate()
            for process in processes:
                process.wait(10)
    assert statuses.count(200) == 10 and statuses.count(429) == 10, statuses
    assert statuses[:10] == [200] * 10  # alternating between the processes, the 11th request is the first refused
    secrets_ = [key, key.split(".")[1], *fake.keys]
    for log in logs:
        log.seek(0)
        text = log.read()
        assert "POST /v1/chat/completions" in text  # the access log is there, and holds no secret
        for secret in secrets_:
            assert secret not in text




def test_redis_restarted_without_the_scripts_is_recovered_from() -> None:
    async def main():
        limiter = make("redis")
        limits = Limits(10, 1_000_000, 100)
        assert await reserve(limiter, "a", key=limits) is None
        await limiter.client.script_flush()  # as after a restart of Redis
        assert await reserve(limiter, "b", key=limits) is None
        await limiter.settle(request_id="b", key_id=1, org_id=1, reserved=1, used=1, key=limits, org=BIG)
        await limiter.close()

    asyncio.run(main())


def test_a_failed_round_trip_frees_the_slots_its_reservations_may_have_taken() -> None:
    async def main():
        limiter = make("redis")
        limits = Limits(1_000, 1_000_000, 1)
        keys = limiter._keys(1, 1)
        # As if Redis ran reservation "x" but its answer never came back (a stall past the deadline).
        await limiter.client.zadd(keys[2], {"x": 10**15})
        await limiter.client.zadd(keys[5], {"x": 10**15})
        assert (await reserve(limiter, "y", key=limits)).limit == "key_concurrency"
        args = [0, "x", 900_000, 10, 1_000, 1_000_000, 1, 1_000_000, 1_000_000_000, 1_000]
        limiter._remember_unsettled([("reserve", keys, args, asyncio.get_running_loop().create_future())])
        assert await reserve(limiter, "y", key=limits) is None  # the compensation went out first
        await limiter.close()

    asyncio.run(main())


def test_a_limit_of_zero_blocks(kind) -> None:
    async def main():
        limiter = make(kind)
        for limits, name in ((Limits(0, 10, 10), "key_requests"), (Limits(10, 0, 10), "key_tokens"),
                             (Limits(10, 10, 0), "key_concurrency")):
            refusal = await reserve(limiter, "a", key=limits)
            assert refusal.limit == name and refusal.retry_after == 60
        await limiter.close()

    asyncio.run(main())


def test_a_debt_outlives_the_bucket_expiry() -> None:
    async def main():
        limiter = make("redis")
        limits = Limits(1_000, 1_000, 100)
        assert await reserve(limiter, "a", key=limits, tokens=10) is None
        await limiter.settle(request_id="a", key_id=1, org_id=1, reserved=10, used=50_000, key=limits, org=BIG)
        ttl = await limiter.client.pttl(limiter._keys(1, 1)[1])
        assert ttl > 49 * 60_000  # ~49 minutes to pay 49,000 tokens back at 1,000 a minute
        await limiter.close()

    asyncio.run(main())

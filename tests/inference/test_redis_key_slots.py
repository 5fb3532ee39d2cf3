"""Redis Cluster runs a script only when every key it names lies in one hash slot. Every script call Corral
makes is recorded here and its keys' slots computed with redis-py's own key_slot: one slot per call."""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from redis.crc import key_slot

from inference.gateway.limits import Limits, RedisLimiter

ROOT = Path(__file__).resolve().parents[2]
LIMITS = Limits(600, 100_000, 10)


class RecordingPipeline:
    def __init__(self, client: RecordingRedis) -> None:
        self.client = client
        self.calls: list[tuple[str, list[str]]] = []

    def evalsha(self, sha: str, numkeys: int, *keys_and_args: Any) -> None:
        self.calls.append((sha, [str(key) for key in keys_and_args[:numkeys]]))

    async def execute(self, raise_on_error: bool = True) -> list[Any]:
        if self.client.fail_next:
            self.client.fail_next = False
            raise ConnectionError("Redis went away")
        self.client.calls += self.calls
        return [[1, b"", 0] for _ in self.calls]


class RecordingRedis:
    """Stands in for redis.asyncio.Redis (or RedisCluster): records each script call's keys."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.fail_next = False

    def pipeline(self, transaction: bool = True) -> RecordingPipeline:
        return RecordingPipeline(self)

    async def aclose(self) -> None:
        return None


def _slots(keys: list[str]) -> set[int]:
    return {key_slot(key.encode()) for key in keys}


@pytest.mark.parametrize("prefix", ["corral:gw", "tenant-eu:gateway"])
def test_every_limiter_script_call_touches_one_cluster_slot(prefix: str) -> None:
    client = RecordingRedis()

    async def main() -> None:
        limiter = RedisLimiter(client, lease_seconds=60, prefix=prefix)
        for key_id, org_id in [(1, 1), (12, 7), (12_345, 9_876), (2**40, 3)]:
            assert await limiter.reserve(request_id=f"r{key_id}", key_id=key_id, org_id=org_id, tokens=50,
                                         key=LIMITS, org=LIMITS) is None
            await limiter.settle(request_id=f"r{key_id}", key_id=key_id, org_id=org_id, reserved=50, used=20,
                                 key=LIMITS, org=LIMITS)
        # A failed round trip leaves settlements (and slot releases for the reservations) to send again.
        client.fail_next = True
        with pytest.raises(Exception, match="Redis went away"):
            await limiter.reserve(request_id="lost", key_id=5, org_id=8, tokens=1, key=LIMITS, org=LIMITS)
        await asyncio.sleep(1.2)
        await limiter.close()

    asyncio.run(main())
    reserves = [keys for sha, keys in client.calls if len(keys) == 6]
    settles = [keys for sha, keys in client.calls if len(keys) == 4]
    assert len(reserves) == 4 and len(settles) == 5  # four settled requests and the lost one's release
    for keys in reserves + settles:
        assert len(_slots(keys)) == 1, keys
    # the hash tag is the organisation's: its keys and its API keys' share a slot, other organisations differ
    assert reserves[1][0] == f"{prefix}:{{o7}}:k:12:rpm" and reserves[1][3] == f"{prefix}:{{o7}}:rpm"
    assert len({next(iter(_slots(keys))) for keys in reserves}) > 1


def test_a_prefix_with_a_hash_tag_of_its_own_is_refused() -> None:
    with pytest.raises(ValueError, match="may not contain"):
        RedisLimiter(RecordingRedis(), lease_seconds=60, prefix="corral:{gw}")


def test_the_limiter_is_the_only_code_that_runs_redis_scripts() -> None:
    """A new script call site must join the test above (and tag its keys) before this passes again."""
    calls = re.compile(r"\.(eval|evalsha|eval_ro|evalsha_ro|register_script|fcall|fcall_ro)\([^)]|redis\.call\(")
    sites = sorted(
        str(path.relative_to(ROOT)) for directory in ("config", "governance", "inference", "licensing", "portal")
        for path in (ROOT / directory).rglob("*.py") if calls.search(path.read_text()))
    assert sites == ["inference/gateway/limits.py"]

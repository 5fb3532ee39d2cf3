"""A tenant's ingestion client for the fault tests, and the exact count it is checked against.

The client behaves as the API asks clients to: every batch carries an Idempotency-Key, and a batch that got
no answer, or a 503, is sent again with the same key until it gets a definite one (2xx or 4xx). The ledger
remembers every batch the service acknowledged, so the distinct ids of a product, organisation or group on a
day or in a month can be counted exactly and compared with what the API reports.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import json
import random
import time
from collections import Counter
from dataclasses import dataclass, field

import httpx

POISON = 10**12  # ids of conflicting bodies start here: if one were counted, the figures would show it


@dataclass
class Batch:
    product: int
    organisation: int
    group: int
    day: dt.date
    ids: list[int | str]
    key: str

    def body(self) -> bytes:
        return json.dumps({"day": self.day.isoformat(), "user_ids": self.ids}).encode()


@dataclass
class Attempt:
    started: float  # time.monotonic()
    seconds: float
    outcome: str  # the status code, or the exception's name when there was no answer


@dataclass
class Ledger:
    acknowledged: dict[str, Batch] = field(default_factory=dict)
    answers: dict[str, tuple[int, dict]] = field(default_factory=dict)
    attempts: list[Attempt] = field(default_factory=list)
    replays: int = 0
    conflicts_refused: int = 0
    unexpected: list[str] = field(default_factory=list)

    def outcomes(self) -> Counter:
        return Counter(a.outcome for a in self.attempts)

    def exact(self, *, attribute: str, value: int, days: set[dt.date]) -> int:
        """Distinct acknowledged ids of a product, organisation or group over the given days."""
        seen: set[int | str] = set()
        for batch in self.acknowledged.values():
            if getattr(batch, attribute) == value and batch.day in days:
                seen.update(batch.ids)
        return len(seen)


def make_batch(rng: random.Random, tenant: dict, *, days: list[dt.date], universe: int, size: tuple[int, int],
               key: str) -> Batch:
    """Ids drawn from the product's universe, half as integers and half as strings, so batches overlap."""
    ids: list[int | str] = []
    for user in rng.sample(range(universe), rng.randint(*size)):
        ids.append(user if user % 2 else f"u{user}")
    return Batch(tenant["product"], tenant["organisation"], tenant["group"], rng.choice(days), ids, key)


async def post(client: httpx.AsyncClient, tenant: dict, batch: Batch, body: bytes, ledger: Ledger
               ) -> httpx.Response | None:
    started = time.monotonic()
    try:
        response = await client.post(
            f"/api/v1/products/{batch.product}/activity", content=body,
            headers={"Authorization": f"Bearer {tenant['key']}", "Idempotency-Key": batch.key,
                     "Content-Type": "application/json"})
    except httpx.HTTPError as exc:
        ledger.attempts.append(Attempt(started, time.monotonic() - started, type(exc).__name__))
        return None
    ledger.attempts.append(Attempt(started, time.monotonic() - started, str(response.status_code)))
    return response


async def deliver(client: httpx.AsyncClient, tenant: dict, batch: Batch, ledger: Ledger, *, deadline: float,
                  replay: bool = False, conflict: bool = False) -> None:
    """Send until acknowledged; then, if asked, replay it (same answer expected) and send a conflicting body
    under its key (409 expected). Anything else is written to ``ledger.unexpected``."""
    body = batch.body()
    response = await _definite(client, tenant, batch, body, ledger, deadline)
    if response is None:
        return
    if response.status_code != 202:
        ledger.unexpected.append(f"{batch.key}: {response.status_code} {response.text[:200]}")
        return
    ledger.acknowledged[batch.key] = batch
    ledger.answers[batch.key] = (202, response.json())
    if replay:
        again = await _definite(client, tenant, batch, body, ledger, deadline)
        if again is None:
            return
        if (again.status_code, again.json()) != ledger.answers[batch.key] or \
                again.headers.get("idempotent-replayed") != "true":
            ledger.unexpected.append(f"{batch.key}: replay answered {again.status_code} {again.text[:200]}")
        else:
            ledger.replays += 1
    if conflict:
        other = json.dumps({"day": batch.day.isoformat(), "user_ids": [POISON + len(batch.ids)]}).encode()
        refused = await _definite(client, tenant, batch, other, ledger, deadline)
        if refused is None:
            return
        if refused.status_code == 409 and batch.key in refused.json()["detail"]:
            ledger.conflicts_refused += 1
        else:
            ledger.unexpected.append(f"{batch.key}: conflicting body answered {refused.status_code}")


async def _definite(client: httpx.AsyncClient, tenant: dict, batch: Batch, body: bytes, ledger: Ledger,
                    deadline: float) -> httpx.Response | None:
    while time.monotonic() < deadline:
        response = await post(client, tenant, batch, body, ledger)
        if response is not None and response.status_code != 503:
            return response
        await asyncio.sleep(0.1)
    ledger.unexpected.append(f"{batch.key}: no definite answer before the deadline")
    return None


def figure(base: str, key: str, path: str) -> dict:
    response = httpx.get(f"{base}{path}", headers={"Authorization": f"Bearer {key}"}, timeout=30)
    assert response.status_code == 200, (path, response.status_code, response.text[:300])
    return response.json()

"""Property: a damaged sketch is refused with a 400 naming the sketch, or it is stored and every read of its
product and group still answers 200 with finite figures.

Valid sketches of every lgK from 4 to 21 (HLL_4, HLL_6 and HLL_8; list, set and register-array modes; compact and
updatable images) are damaged in the ways sketches are on their way (bit flips, a changed byte, truncation, the
splice of two sketches) and sent through the real endpoint, thousands of times. The run is bounded for CI
(about a minute on one core of the CI machine); a longer one: CORRAL_SKETCH_FUZZ_CASES=20000, and
CORRAL_SKETCH_FUZZ_SEED to vary the cases.
"""

from __future__ import annotations

import base64
import collections
import datetime as dt
import functools
import math
import os
import random
import time
from typing import Any

import pytest
from django.utils import timezone

from governance.metering import sketches
from governance.metering.services import metering_compact_step
from tests.factories import ProductFactory
from tests.governance import sketch_forgeries as forgeries

pytestmark = pytest.mark.django_db

CASES = int(os.environ.get("CORRAL_SKETCH_FUZZ_CASES", "2160"))  # 30 per lgK and kind of damage
SEED = int(os.environ.get("CORRAL_SKETCH_FUZZ_SEED", "20261205"))
LG_KS = range(sketches.MIN_LG_K, sketches.MAX_LG_K + 1)
KINDS = ("bit flips", "a changed byte", "truncation", "splice")
COMPACT_EVERY = 40  # accepted uploads between compactions, so reads also go through rollups


@functools.cache
def _valid_sketches(lg_k: int) -> tuple[bytes, ...]:
    """Images DataSketches writes at ``lg_k``: each mode it has there, each target type, compact and updatable."""
    images = []
    for users in sorted({5, 300, min(1 << lg_k, 300_000)}):
        for tgt in forgeries.TGT_TYPES:
            for compact in (True, False):
                images.append(forgeries.hll((f"fuzz-{lg_k}-{users}-{i}" for i in range(users)), lg_k, tgt,
                                            compact=compact))
    return tuple(images)


def _finite(answer: dict[str, Any]) -> None:
    figures = (answer["estimate"], answer["lower"], answer["upper"])
    assert all(isinstance(x, int) and math.isfinite(x) for x in figures), answer
    assert 0 <= answer["lower"] <= answer["estimate"] <= answer["upper"], answer


def test_it_refuses_or_stores_any_damaged_sketch_and_every_read_stays_finite(owner_org: Any, client_for: Any) -> None:
    rng = random.Random(SEED)
    ingester, reader = client_for(owner_org, ["ingest"]), client_for(owner_org, ["read"])
    products = [ProductFactory(organisation=owner_org) for _ in range(3)]
    group_id = owner_org.group_id
    last_month = timezone.now().date().replace(day=1) - dt.timedelta(days=1)
    outcomes: collections.Counter[tuple[int, str, int]] = collections.Counter()
    accepted = 0
    started = time.monotonic()
    for case in range(CASES):
        lg_k, kind = LG_KS[case % len(LG_KS)], KINDS[case // len(LG_KS) % len(KINDS)]
        image = rng.choice(_valid_sketches(lg_k))
        other = rng.choice(_valid_sketches(rng.choice(LG_KS)))
        damaged = dict(forgeries.mutations(rng, image, other))[kind]
        product, day = rng.choice(products), last_month.replace(day=rng.randint(1, 28))
        response = ingester.post(f"/api/v1/products/{product.pk}/sketches",
                                 {"day": day.isoformat(), "format": "hll", "sketch": base64.b64encode(damaged).decode()},
                                 format="json")
        outcomes[(lg_k, kind, response.status_code)] += 1
        if response.status_code == 400:
            assert list(response.json()) == ["sketch"] and response.json()["sketch"][0], (lg_k, kind, response.json())
            continue
        assert response.status_code == 202, (lg_k, kind, damaged.hex(), response.content)
        accepted += 1
        if accepted % COMPACT_EVERY == 0:
            while metering_compact_step():
                pass
        for path in (f"products/{product.pk}/dau?day={day}", f"products/{product.pk}/mau?month={day:%Y-%m}",
                     f"groups/{group_id}/mau?month={day:%Y-%m}"):
            read = reader.get(f"/api/v1/{path}")
            assert read.status_code == 200, (lg_k, kind, damaged.hex(), path, read.content)
            _finite(read.json())
    for scope in [f"products/{p.pk}" for p in products] + [f"groups/{group_id}"]:
        for query in (f"mau?month={last_month:%Y-%m}", f"mau?ending={last_month}&days=30",
                      f"mau/daily?from={last_month.replace(day=1)}&to={last_month}"):
            read = reader.get(f"/api/v1/{scope}/{query}")
            assert read.status_code == 200, (scope, query, read.content)
            for point in read.json()["days"] if "daily" in query else [read.json()]:
                _finite(point.get("dau", point)), _finite(point.get("rolling", point))

    by_status = collections.Counter(status for (_lg_k, _kind, status) in outcomes.elements())
    print(f"\n{CASES} damaged sketches in {time.monotonic() - started:.0f} s: {by_status[400]} refused, "
          f"{by_status[202]} stored")
    # Every lgK and every kind of damage was tried, and both outcomes happened: the property was exercised.
    for lg_k in LG_KS:
        for kind in KINDS:
            assert sum(outcomes[(lg_k, kind, status)] for status in (202, 400)) >= CASES // (len(LG_KS) * len(KINDS))
    assert by_status[202] > 0 and by_status[400] > 0
    assert by_status[202] + by_status[400] == CASES

"""Choosing a replica for a request, behind one small interface.

The candidates are the deployment's replicas that are `ready` and passed their last health check (the
reconciler keeps that state; see inference/reconciler.py): an unhealthy replica leaves the set until it
recovers. ``LeastOutstanding`` sends each request to the candidate with the fewest requests this gateway
process has in flight to it, ties broken in turn, so a slow replica gets fewer new requests. Another strategy
(e.g. one reading vLLM's own `num_requests_waiting` from the replica metrics) implements ``choose``,
``started`` and ``finished``.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from typing import Protocol

from inference.gateway.directory import Upstream


class Strategy(Protocol):
    def choose(self, candidates: Sequence[Upstream], exclude: frozenset[int] = frozenset()) -> Upstream | None: ...

    def started(self, upstream: Upstream) -> None: ...

    def finished(self, upstream: Upstream) -> None: ...


class LeastOutstanding:
    def __init__(self) -> None:
        self.outstanding: dict[int, int] = {}
        self._turn = itertools.count()

    def choose(self, candidates: Sequence[Upstream], exclude: frozenset[int] = frozenset()) -> Upstream | None:
        best: Upstream | None = None
        best_load = 0
        turn = next(self._turn)
        count = len(candidates)
        for i in range(count):
            upstream = candidates[(turn + i) % count]
            if upstream.replica_id in exclude:
                continue
            load = self.outstanding.get(upstream.replica_id, 0)
            if best is None or load < best_load:
                best, best_load = upstream, load
        return best

    def started(self, upstream: Upstream) -> None:
        self.outstanding[upstream.replica_id] = self.outstanding.get(upstream.replica_id, 0) + 1

    def finished(self, upstream: Upstream) -> None:
        left = self.outstanding.get(upstream.replica_id, 1) - 1
        if left > 0:
            self.outstanding[upstream.replica_id] = left
        else:
            self.outstanding.pop(upstream.replica_id, None)

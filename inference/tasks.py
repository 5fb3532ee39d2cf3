from __future__ import annotations

import logging
import time
from collections.abc import Callable

from celery import shared_task
from django.core.cache import cache

logger = logging.getLogger(__name__)
_LOCK = "inference:reconcile-lock"


def _repeat(step: Callable[[], bool], max_seconds: float) -> int:
    """Run ``step`` (a pass that returns "did work") while it does work, up to ``max_seconds``."""
    passes = 0
    started = time.monotonic()
    while time.monotonic() - started < max_seconds:
        passes += 1
        if not step():
            break
    return passes


@shared_task(ignore_result=True)
def reconcile_pool(max_seconds: float = 8.0) -> int:
    """Beat (every 10 s) and every change: converge deployments, replicas and GPUs to the database.

    One reconciler runs at a time (a short cache lock; the steps are safe to run concurrently anyway, this
    only avoids duplicate work). Repeats while a pass changes something, up to ``max_seconds``. With
    INFERENCE_NODE_QUEUES on, the replicas of local nodes are then handed to ``reconcile_node`` on each
    node's own queue (``node.<name>``), which only that host's worker consumes.
    """
    from inference.reconciler import node_work, reconcile_once, routed_node_ids

    if not cache.add(_LOCK, 1, timeout=60):
        return 0
    try:
        routed = routed_node_ids()
        passes = _repeat(lambda: reconcile_once(skip_nodes=routed), max_seconds)
    finally:
        cache.delete(_LOCK)
    for node_id, queue in node_work(routed):
        # celery-types type args as a tuple; Celery takes any sequence (and the tests read this list back).
        reconcile_node.apply_async(args=[node_id], queue=queue)  # type: ignore[arg-type]
    return passes


@shared_task(ignore_result=True)
def reconcile_node(node_id: int, max_seconds: float = 8.0) -> int:
    """On a node's own worker: start, watch and stop the replicas of that node (its processes, its GPUs)."""
    from inference.reconciler import reconcile_node_once

    lock = f"{_LOCK}:node:{node_id}"
    if not cache.add(lock, 1, timeout=60):
        return 0
    try:
        return _repeat(lambda: reconcile_node_once(node_id), max_seconds)
    finally:
        cache.delete(lock)


@shared_task(ignore_result=True)
def read_replica_log(replica_id: int, organisation_id: int) -> None:
    """On the worker that can read it (its node's queue for a local replica with node queues on): the
    replica's last log lines into the cache, for the portal's page. A replica gone since is nothing to read."""
    from inference.models import Replica
    from inference.services import replica_log_read

    replica = (Replica.objects.filter(pk=replica_id, deployment__organisation_id=organisation_id)
               .select_related("node", "deployment").first())
    if replica is None:
        logger.info("replica %s of organisation %s is gone: its log is not read", replica_id, organisation_id)
        return
    replica_log_read(replica=replica)

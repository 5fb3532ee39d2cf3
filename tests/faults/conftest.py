"""Fixtures for the fault tests: a PostgreSQL cluster and Redis servers of their own, and the production
processes (uvicorn serving config.asgi, Celery workers) started against them and always stopped.

The tests that run the whole stack do not use the suite's database or broker at all, so they would run
identically in CI's two runs: they run in the PostgreSQL run (``DATABASE_URL`` set) and are skipped in the
embedded one, unless ``CORRAL_FAULTS`` asks for them (``1``: the bounded version, ``full``: more batches,
more kills, longer outages, for docs/reliability.md).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.faults.stack import (
    PostgresCluster, RedisServer, free_port, manage, postgres_bin, stack_env, start_web, start_worker, stop_group,
)

FAULTS = os.environ.get("CORRAL_FAULTS", "")
FULL = FAULTS == "full"


def _stack_tests_wanted() -> str | None:
    """Why the whole-stack tests are skipped in this run, or None to run them."""
    if FAULTS == "off":
        return "CORRAL_FAULTS=off"
    if not FAULTS and not os.environ.get("DATABASE_URL", "").startswith("postgres"):
        return ("the whole-stack fault tests start their own PostgreSQL and Redis, so they run once, in the "
                "PostgreSQL run (or with CORRAL_FAULTS=1)")
    if postgres_bin() is None or shutil.which("redis-server") is None:
        return "PostgreSQL's server binaries and redis-server are needed"
    return None


@pytest.fixture(scope="session")
def cluster() -> Iterator[PostgresCluster]:
    """One throwaway cluster for the session, with a migrated template database each test copies."""
    reason = _stack_tests_wanted()
    if reason:
        pytest.skip(reason)
    cluster = PostgresCluster()
    try:
        cluster.start()
        cluster.execute("CREATE DATABASE corral_template")
        redis = RedisServer()
        redis.start()
        var_dir = Path(tempfile.mkdtemp(prefix="corral-faults-var-"))
        try:
            env = stack_env(database_url=cluster.url("corral_template"), redis=redis, var_dir=var_dir)
            manage(env, "migrate", "--noinput")
        finally:
            redis.destroy()
            shutil.rmtree(var_dir, ignore_errors=True)
        yield cluster
    finally:
        cluster.destroy()


class Stack:
    """One test's servers: a fresh database copied from the template, a Redis of its own, and whatever web
    and worker processes the test starts; everything is stopped at the end, killed if it will not stop."""

    def __init__(self, cluster: PostgresCluster, root: Path) -> None:
        self.cluster = cluster
        self.root = root
        self.database = f"faults_{uuid.uuid4().hex[:10]}"
        cluster.execute(f'CREATE DATABASE "{self.database}" TEMPLATE corral_template')
        self.redis = RedisServer()
        self.redis.start()
        self.env = stack_env(database_url=cluster.url(self.database), redis=self.redis, var_dir=root / "var")
        self.processes: list[subprocess.Popen] = []
        self.web_process: subprocess.Popen | None = None
        self.port = 0

    def web(self) -> str:
        self.port = free_port()
        self.web_process = start_web(self.env, self.port, self.root / "web.log")
        self.processes.append(self.web_process)
        return f"http://127.0.0.1:{self.port}"

    def worker(self) -> subprocess.Popen:
        process = start_worker(self.env, self.root / "worker.log")
        self.processes.append(process)
        return process

    def sql(self, query: str) -> list[tuple]:
        return self.cluster.execute(query, self.database)

    def manage(self, *args: str) -> str:
        return manage(self.env, *args)

    def log(self, name: str) -> str:
        path = self.root / name
        return path.read_text(errors="replace") if path.exists() else ""

    def close(self) -> None:
        for process in self.processes:
            stop_group(process)
        self.redis.destroy()


@pytest.fixture
def stack(cluster: PostgresCluster) -> Iterator[Stack]:
    root = Path(tempfile.mkdtemp(prefix="corral-faults-"))
    (root / "var").mkdir()
    stack = Stack(cluster, root)
    try:
        yield stack
    finally:
        stack.close()
        shutil.rmtree(root, ignore_errors=True)

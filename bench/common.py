"""What every benchmark needs: the production stack's environment, a fresh database, and its servers
started, waited for and stopped as process groups."""

from __future__ import annotations

import http.client
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def production_env(*, database: str, redis_db: int, broker_db: int) -> None:
    """Production settings (DEBUG off, the connection pool on) against local PostgreSQL and Redis, plain HTTP
    on loopback. Call before Django is imported; values already set in the environment win."""
    sys.path.insert(0, str(ROOT))
    for name, value in {
        "DATABASE_URL": f"postgres://postgres@127.0.0.1:5432/{database}",
        "REDIS_URL": f"redis://127.0.0.1:6379/{redis_db}",
        "CELERY_BROKER_URL": f"redis://127.0.0.1:6379/{broker_db}",
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "LOG_LEVEL": "WARNING",
        "CORRAL_ENV": "production",
        "SECRET_KEY": "bench-" + "k" * 20 + os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
    }.items():
        os.environ.setdefault(name, value)


def recreate_database(name: str) -> None:
    import psycopg

    with psycopg.connect("postgresql://postgres@127.0.0.1:5432/postgres", autocommit=True) as conn:
        if conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", [name]).fetchone():
            conn.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
        conn.execute(f'CREATE DATABASE "{name}"')


def spawn(args: list[str], env: dict[str, str] | None = None, *, quiet: bool = False) -> subprocess.Popen:
    """A server in its own process group (so stop() reaches its workers too)."""
    output = subprocess.DEVNULL if quiet else None
    return subprocess.Popen(args, cwd=ROOT, env=env or dict(os.environ), start_new_session=True, stdout=output,
                            stderr=output)


def wait_until_up(port: int, path: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=2)
            conn.request("GET", path)
            if conn.getresponse().status < 500:
                return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit(f"nothing answered on port {port} within {timeout:.0f} s")


def stop(proc: subprocess.Popen, timeout: float = 30) -> None:
    """SIGTERM to the server's main process, as a supervisor sends it (it stops its own workers: a Celery pool
    child that gets SIGTERM itself can die holding the pool's queue lock and hang its parent's shutdown), then
    SIGKILL to whatever of its process group is left."""
    try:
        proc.send_signal(signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def cpu_ticks_by_role() -> dict[str, int]:
    """CPU ticks used so far by every process on the machine, summed by role (web, worker, postgres, redis,
    this benchmark, other). Take it before and after a load phase; ``cpu_share`` turns the two into cores."""
    roles: dict[str, int] = {}
    me = os.getpid()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_text()
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        ticks = int(fields[11]) + int(fields[12])
        name = stat.split("(", 1)[1].rsplit(")", 1)[0]
        if int(entry) == me:
            role = "benchmark (load generator)"
        elif b"uvicorn" in cmdline or b"multiprocessing" in cmdline and b"spawn" in cmdline:
            role = "web (uvicorn)"
        elif b"celery" in cmdline:
            role = "worker (celery)"
        elif name.startswith("postgres") or cmdline.startswith(b"postgres"):
            role = "postgres"
        elif name.startswith("redis"):
            role = "redis"
        else:
            role = "other"
        roles[role] = roles.get(role, 0) + ticks
    # The machine's own account: time no process used, and time the hypervisor gave another guest (steal).
    # A virtual machine whose steal rises during a run was slowed by its neighbours, not by the code.
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()
    roles["idle"] = int(fields[4]) + int(fields[5])
    roles["steal (hypervisor)"] = int(fields[8]) if len(fields) > 8 else 0
    return roles


def cpu_share(before: dict[str, int], after: dict[str, int], seconds: float) -> dict[str, float]:
    """Cores used per role between two ``cpu_ticks_by_role`` readings (processes that ended are not counted)."""
    hz = os.sysconf("SC_CLK_TCK")
    return {role: max(0, after.get(role, 0) - before.get(role, 0)) / hz / seconds
            for role in sorted(after, key=lambda r: before.get(r, 0) - after[r])}

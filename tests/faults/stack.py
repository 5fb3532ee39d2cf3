"""The production stack as real processes on this machine, for fault tests and the load run: a throwaway
PostgreSQL cluster and Redis server of their own (never the machine's shared ones), uvicorn serving
config.asgi and Celery workers, each in its own process group so a kill reaches all of it.

Every server here can be stopped, killed and started again on the same port, which is what the fault tests
do to them.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path


from tests.inference.gateway_support import wait_for

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def postgres_bin() -> Path | None:
    """The directory of initdb and pg_ctl: Debian's versioned layout, else whatever is on PATH."""
    for candidate in sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True):
        if Path(candidate, "pg_ctl").exists():
            return Path(candidate)
    initdb = shutil.which("initdb")
    return Path(initdb).parent if initdb else None


def stop_group(process: subprocess.Popen, *, grace: float = 10) -> None:
    """SIGTERM to the process group, SIGKILL after ``grace`` seconds; the process is reaped either way."""
    if process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(grace)
    except ProcessLookupError:
        pass
    except subprocess.TimeoutExpired:
        kill_group(process)


def kill_group(process: subprocess.Popen) -> None:
    try:
        os.killpg(process.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    process.wait(10)


class PostgresCluster:
    """A cluster in a temporary directory on a free port. As root it runs as the ``postgres`` user (the
    server refuses to run as root)."""

    def __init__(self) -> None:
        bin_dir = postgres_bin()
        if bin_dir is None:
            raise FileNotFoundError("PostgreSQL's initdb/pg_ctl are not installed")
        self.bin = bin_dir
        self.root = Path(tempfile.mkdtemp(prefix="corral-faults-pg-"))
        self.data = self.root / "data"
        self.port = free_port()
        self.as_user: list[str] = []
        if os.geteuid() == 0:
            shutil.chown(self.root, "postgres")
            self.as_user = ["runuser", "-u", "postgres", "--"]
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")

    def _run(self, tool: str, *args: str) -> None:
        subprocess.run([*self.as_user, str(self.bin / tool), *args], check=True, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE)

    def _ctl(self, action: str, *extra: str) -> None:
        # fsync off only spares the disk: a crash of PostgreSQL (not of the machine) loses nothing with it.
        # synchronous_commit stays on, or a crash would lose acknowledged commits, which the tests would see.
        options = (f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1 -c fsync=off "
                   "-c full_page_writes=off -c max_connections=200")
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-l", str(self.root / "server.log"), "-w",
                  action, *extra)

    def start(self) -> None:
        self._ctl("start")

    def stop(self, mode: str = "fast") -> None:
        """``fast`` disconnects every client and shuts down cleanly; ``immediate`` is a crash."""
        self._ctl("stop", "-m", mode)

    def url(self, database: str) -> str:
        return f"postgres://postgres@127.0.0.1:{self.port}/{database}"

    def execute(self, sql: str, database: str = "postgres") -> list[tuple]:
        import psycopg

        with psycopg.connect(f"postgresql://postgres@127.0.0.1:{self.port}/{database}", autocommit=True) as conn:
            cursor = conn.execute(sql)
            return cursor.fetchall() if cursor.description else []

    def destroy(self) -> None:
        try:
            self.stop("immediate")
        except subprocess.CalledProcessError:
            pass  # already stopped
        shutil.rmtree(self.root, ignore_errors=True)


class RedisServer:
    """redis-server on a free port, nothing saved: a restart starts it empty."""

    def __init__(self) -> None:
        server = shutil.which("redis-server")
        if server is None:
            raise FileNotFoundError("redis-server is not installed")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="corral-faults-redis-"))
        self.command = [server, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no",
                        "--dir", str(self.dir)]
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        self.process = subprocess.Popen(self.command, stdout=subprocess.DEVNULL, start_new_session=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                    sock.sendall(b"PING\r\n")
                    if sock.recv(16).startswith(b"+PONG"):
                        return
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def stop(self) -> None:
        if self.process is not None:
            stop_group(self.process, grace=5)
            self.process = None

    def url(self, db: int = 0) -> str:
        return f"redis://127.0.0.1:{self.port}/{db}"

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


def stack_env(*, database_url: str, redis: RedisServer, var_dir: Path, **extra: str) -> dict[str, str]:
    """Production settings (DEBUG off, the connection pool on) against the given servers, plain HTTP."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("DATABASE_", "REDIS_", "CELERY_", "GATEWAY_"))}
    env.update({
        "DATABASE_URL": database_url,
        "REDIS_URL": redis.url(0),
        "CELERY_BROKER_URL": redis.url(1),
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "CORRAL_ENV": "production",
        "CORRAL_VAR_DIR": str(var_dir),
        "SECRET_KEY": "faults-" + "k" * 20 + os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    })
    env.update(extra)
    return env


def manage(env: dict[str, str], *args: str) -> str:
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, check=True, capture_output=True,
                          text=True).stdout


def start_web(env: dict[str, str], port: int, log: Path) -> subprocess.Popen:
    with open(log, "ab") as out:
        process = subprocess.Popen(
            [sys.executable, "-m", "uvicorn", "config.asgi:application", "--port", str(port), "--no-access-log",
             "--log-level", "warning", "--timeout-keep-alive", "75"], cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT,
            start_new_session=True)
    wait_for(f"http://127.0.0.1:{port}/healthz", process)
    return process


def start_worker(env: dict[str, str], log: Path, *, concurrency: int = 1) -> subprocess.Popen:
    with open(log, "ab") as out:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", "worker", "--concurrency", str(concurrency),
             "--without-gossip", "--without-mingle", "--loglevel", "WARNING"],
            cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)




def create_tenants(env: dict[str, str], count: int, *, scopes: str = "read,ingest",
                   upstream: str = "") -> list[dict]:
    """``count`` organisations (two per affiliate group), each with an accepted Llama 3.1 licence, a product, a
    key, and with ``upstream`` a ready deployment whose replica is that URL. Returns what a client needs."""
    script = ROOT / "tests" / "faults" / "tenants.py"
    out = subprocess.run([sys.executable, str(script), str(count), scopes, upstream], cwd=ROOT, env=env, check=True,
                         capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])

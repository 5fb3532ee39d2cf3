"""LiteLLM's proxy in front of an OpenAI-compatible upstream, for bench/gateway.py to compare Corral's gateway with.

    proxy = start_litellm("http://127.0.0.1:9100/v1", "tiny", port=4100, rpm_limit=10_000_000)
    try:
        ...  # POST {proxy.base_url}/chat/completions with "Authorization: Bearer {proxy.key}"
    finally:
        proxy.stop()

The proxy runs from .venv-litellm (`scripts/install-litellm.sh` makes it) as one uvicorn worker, against
PostgreSQL database litellm_bench (created and migrated here when missing), with a master key and one virtual
key whose rpm limit is on but high enough not to throttle: every request pays for key auth and the rate-limit
check, as in production. Logging is at ERROR, telemetry and remote lookups are off. Standard library only: this
module is imported from the project's own venv, not LiteLLM's.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Self

ROOT = Path(__file__).resolve().parent.parent
VENV = Path(os.environ.get("LITELLM_VENV", ROOT / ".venv-litellm"))
ENGINES = VENV / "prisma-engines"
PSQL = ["psql", "-h", "127.0.0.1", "-U", "postgres", "-X", "-q", "-v", "ON_ERROR_STOP=1"]
DATABASE = "litellm_bench"
DATABASE_URL = f"postgresql://postgres@127.0.0.1:5432/{DATABASE}"
MASTER_KEY = "sk-corral-bench-master-key"
SCHEMA_MARKER = "corral_bench_migrated_to"
STARTUP_TIMEOUT_S = 240.0  # it took 45-60 s here, 30 s of that importing, with other work on the machine

# Everything that would reach outside the machine (telemetry, LiteLLM's remote price and header maps, Prisma's
# update check) is switched off; the wasm query-engine stand-in and stub schema engine replace Prisma's native
# engines (see scripts/install-litellm.sh).
PROXY_ENV = {
    "LITELLM_MODE": "PRODUCTION",  # no .env loading
    "LITELLM_LOG": "ERROR",  # also sets uvicorn's level: no access log
    "LITELLM_TELEMETRY_DISABLED": "true",
    "LITELLM_LOCAL_MODEL_COST_MAP": "True",
    "LITELLM_LOCAL_ANTHROPIC_BETA_HEADERS": "True",
    "LITELLM_LOCAL_BLOG_POSTS": "True",
    "LITELLM_LOCAL_AUTOROUTER_PRESETS": "True",
    "LITELLM_LOCAL_POLICY_TEMPLATES": "True",
    "DO_NOT_TRACK": "1",
    "HF_HUB_OFFLINE": "1",
    # The schema comes from LiteLLM's migration SQL, applied by _ensure_database: Prisma's migrate needs the
    # native schema engine.
    "DISABLE_SCHEMA_UPDATE": "true",
    "PRISMA_BINARY_CACHE_DIR": str(ENGINES),
    "PRISMA_QUERY_ENGINE_BINARY": str(ENGINES / "query-engine"),
    "PRISMA_SCHEMA_ENGINE_BINARY": str(ENGINES / "schema-engine"),
    "PRISMA_HIDE_UPDATE_MESSAGE": "1",
    "PRISMA_USE_NODEJS_BIN": "false",
    "CHECKPOINT_DISABLE": "1",
}


@dataclass
class LiteLLMProxy:
    """A running proxy. `base_url` is OpenAI-style (it ends in /v1), `key` the virtual key; `stop()` ends it."""

    base_url: str
    key: str
    master_key: str
    model: str
    log_path: Path
    startup_seconds: float
    process: subprocess.Popen[bytes] = field(repr=False)
    _workdir: tempfile.TemporaryDirectory[str] = field(repr=False)

    @property
    def pid(self) -> int:
        """The proxy's own process (uvicorn, one worker). Its query engine runs beside it, in a node process."""
        return self.process.pid

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM to the proxy's process group (uvicorn and the query engine), SIGKILL after `timeout`."""
        if self.process.poll() is None:
            _signal_group(self.process, signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process, signal.SIGKILL)
                self.process.wait(5)
        # The query engine may outlive uvicorn for a moment; it is in the same group.
        _signal_group(self.process, signal.SIGKILL)
        self._workdir.cleanup()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def start_litellm(
    upstream_base_url: str,
    model: str,
    *,
    port: int,
    rpm_limit: int,
    upstream_key: str = "sk-dummy-upstream-key",
    host: str = "127.0.0.1",
    log_path: Path | None = None,
) -> LiteLLMProxy:
    """Start LiteLLM's proxy serving `model` from `upstream_base_url` and return it once a virtual key works.

    `upstream_base_url` is an OpenAI-style base URL, as the OpenAI SDK takes it ("http://127.0.0.1:9100/v1");
    one with no path gets /v1. `upstream_key` is the bearer LiteLLM sends the upstream. The proxy's output goes
    to `log_path` (default: a file in a temporary directory removed by stop(), so pass a path to keep it).
    Raises RuntimeError, with the log's tail, if the proxy exits or is not ready within STARTUP_TIMEOUT_S.
    """
    litellm = VENV / "bin" / "litellm"
    if not litellm.exists():
        raise RuntimeError(f"{litellm} is missing: run scripts/install-litellm.sh first")
    if _port_in_use(host, port):
        raise RuntimeError(f"port {port} on {host} is already in use")
    _ensure_database()

    workdir = tempfile.TemporaryDirectory(prefix="litellm-bench-")
    config_path = Path(workdir.name) / "config.yaml"
    # JSON is YAML, so no YAML writer is needed.
    config_path.write_text(json.dumps(_config(_openai_base_url(upstream_base_url), model, upstream_key), indent=2))
    log_path = log_path or Path(workdir.name) / "litellm.log"
    env = {
        **os.environ,
        **PROXY_ENV,
        "DATABASE_URL": DATABASE_URL,
        "PATH": f"{VENV / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",  # Prisma's CLI is looked up there
    }
    started = time.monotonic()
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [str(litellm), "--config", str(config_path), "--host", host, "--port", str(port), "--num_workers", "1"],
            cwd=workdir.name,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group, so stop() also ends the query engine
        )
    root_url = f"http://{host}:{port}"
    try:
        _wait_until_ready(process, root_url, log_path)
        key = _generate_key(root_url, model=model, rpm_limit=rpm_limit)
    except BaseException:
        _signal_group(process, signal.SIGKILL)
        process.wait()
        workdir.cleanup()
        raise
    return LiteLLMProxy(
        base_url=f"{root_url}/v1",
        key=key,
        master_key=MASTER_KEY,
        model=model,
        log_path=log_path,
        startup_seconds=time.monotonic() - started,
        process=process,
        _workdir=workdir,
    )


def _config(upstream_base_url: str, model: str, upstream_key: str) -> dict[str, object]:
    # The settings LiteLLM's "Production Best Practices" page gives, minus alerting (it would call Slack).
    return {
        "model_list": [
            {
                "model_name": model,
                "litellm_params": {
                    "model": f"openai/{model}",
                    "api_base": upstream_base_url,
                    "api_key": upstream_key,
                },
            }
        ],
        "litellm_settings": {"request_timeout": 600, "set_verbose": False},
        "general_settings": {
            "master_key": MASTER_KEY,
            "database_url": DATABASE_URL,
            "proxy_batch_write_at": 60,
            "database_connection_pool_limit": 10,
            "disable_error_logs": True,
            "allow_requests_on_db_unavailable": True,
            "disable_prisma_schema_update": True,
        },
    }


def _openai_base_url(url: str) -> str:
    parsed = urllib.parse.urlsplit(url.rstrip("/"))
    return url.rstrip("/") if parsed.path else f"{url.rstrip('/')}/v1"


def _ensure_database() -> None:
    """Create and migrate litellm_bench unless it already holds the schema of the installed LiteLLM.

    Applies LiteLLM's own migration files in name order, as `prisma migrate deploy` would, and records the last
    one applied; a database migrated for another LiteLLM version, or half migrated, is dropped and rebuilt.
    """
    migrations = _migration_files()
    head = migrations[-1].parent.name
    exists = _psql("postgres", f"SELECT 1 FROM pg_database WHERE datname = '{DATABASE}'") == "1"
    if exists:
        marked = _psql(DATABASE, f"SELECT to_regclass('{SCHEMA_MARKER}') IS NOT NULL") == "t"
        if marked and _psql(DATABASE, f"SELECT name FROM {SCHEMA_MARKER}") == head:
            return
        _psql("postgres", f'DROP DATABASE "{DATABASE}" WITH (FORCE)')
    _psql("postgres", f'CREATE DATABASE "{DATABASE}"')
    # Prisma sends each file as one query, which PostgreSQL runs as one transaction (several of LiteLLM's start
    # with SET LOCAL); the files that CREATE INDEX CONCURRENTLY are a single statement, run outside one.
    script = "".join(
        f"\\i '{path}'\n" if "CONCURRENTLY" in path.read_text() else f"BEGIN;\n\\i '{path}'\nCOMMIT;\n"
        for path in migrations
    )
    applied = subprocess.run(
        [*PSQL, "-d", DATABASE, "-f", "-"],
        check=False,
        input=script,
        capture_output=True,
        text=True,
        env={**os.environ, "PGOPTIONS": "-c client_min_messages=warning"},
    )
    if applied.returncode != 0:
        raise RuntimeError(f"applying LiteLLM's migrations to {DATABASE} failed:\n{applied.stderr[-3000:]}")
    _psql(DATABASE, f"CREATE TABLE {SCHEMA_MARKER} (name text NOT NULL); INSERT INTO {SCHEMA_MARKER} VALUES ('{head}')")


def _migration_files() -> list[Path]:
    found = sorted(VENV.glob("lib/python3*/site-packages/litellm_proxy_extras/migrations/*/migration.sql"))
    if not found:
        raise RuntimeError(f"LiteLLM's migrations are not in {VENV}: run scripts/install-litellm.sh")
    return sorted(found, key=lambda path: path.parent.name)


def _psql(database: str, sql: str) -> str:
    result = subprocess.run([*PSQL, "-d", database, "-tA", "-c", sql], check=True, capture_output=True, text=True)
    return result.stdout.strip()


def _wait_until_ready(process: subprocess.Popen[bytes], root_url: str, log_path: Path) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"LiteLLM exited with {process.returncode} while starting:\n{_tail(log_path)}")
        try:
            status, body = _request("GET", f"{root_url}/health/readiness", timeout=2)
            if status == 200 and json.loads(body).get("db") == "connected":
                return
        except (OSError, ValueError):
            pass
        time.sleep(0.5)
    raise RuntimeError(f"LiteLLM was not ready after {STARTUP_TIMEOUT_S:.0f} s:\n{_tail(log_path)}")


def _generate_key(root_url: str, *, model: str, rpm_limit: int) -> str:
    status, body = _request(
        "POST",
        f"{root_url}/key/generate",
        payload={"models": [model], "rpm_limit": rpm_limit, "key_alias": f"corral-bench-{time.time_ns()}"},
        key=MASTER_KEY,
        timeout=30,
    )
    if status != 200:
        raise RuntimeError(f"LiteLLM refused to create a virtual key: {status} {body[:500]}")
    return str(json.loads(body)["key"])


def _request(
    method: str, url: str, *, payload: object = None, key: str | None = None, timeout: float
) -> tuple[int, str]:
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    data = json.dumps(payload).encode() if payload is not None else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.status, response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")


def _port_in_use(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex((host, port)) == 0


def _signal_group(process: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    try:
        os.killpg(process.pid, sig)
    except ProcessLookupError:
        pass


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"

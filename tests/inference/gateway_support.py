"""Servers for the gateway tests: a real uvicorn in a thread of the test process (so it shares the test
database), serving either the gateway or the fake vLLM of fake_openai.py."""

from __future__ import annotations

import asyncio
import socket
import subprocess
import threading
import time
from typing import Any

import httpx
import uvicorn

from access.models import Organisation
from inference.models import Deployment, Replica, ReplicaState
from licensing.models import BaseModel
from licensing.services import licence_accept
from tests.factories import ProductFactory, licence


class ThreadServer:
    def __init__(self, app: Any) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, lifespan="on", log_level="warning", access_log=False,
                                                    timeout_graceful_shutdown=5))
        self.thread = threading.Thread(target=lambda: asyncio.run(self.server.serve(sockets=[self.sock])),
                                       daemon=True)

    def __enter__(self) -> ThreadServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


def ready_deployment(organisation: Organisation, endpoint: str, *, name: str = "chat-small", product: Any = None,
                     accept: bool = True, replicas: int = 1, slug: str = "llama-3.1") -> Deployment:
    """A deployment whose replicas are ready at ``endpoint`` (the reconciler's job, done by hand here)."""
    version = licence(slug)
    if accept:
        licence_accept(organisation=organisation, licence_version=version, licence_sha256=version.licence_sha256,
                       aup_version=version.aup_version, accepted_by="test")
    product = product or ProductFactory(organisation=organisation, licence_version=version)
    base = BaseModel.objects.filter(licence_version=version).first()
    deployment = Deployment.objects.create(
        organisation=organisation, product=product, licence_version=version, base_model=base,
        model_source=base.repo_id, served_model_name=name, replicas=replicas, state="ready", created_by="test")
    for ordinal in range(replicas):
        Replica.objects.create(deployment=deployment, ordinal=ordinal, state=ReplicaState.READY, endpoint=endpoint,
                               key_salt=f"salt-{ordinal}", last_health_ok=True)
    return deployment


def wait_for(url: str, process: subprocess.Popen | None = None, timeout: float = 60) -> None:
    """Until ``url`` answers below 500 (a server in another process starting up), or the process exits."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"the server for {url} exited with {process.returncode}")
        try:
            if httpx.get(url, timeout=2).status_code < 500:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not come up within {timeout:.0f} s")

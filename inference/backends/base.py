"""The one interface every provisioner backend implements. The reconciler knows nothing else about them.

A backend starts a replica from a ReplicaSpec, says whether it is still running, stops it, and reads the last
lines of its output (for the portal, on the worker that can reach them: inference/tasks.py). Health and
load are read over HTTP from the replica's endpoint by the reconciler itself, the same for every backend.
No call waits for a replica to go: ``stop`` asks it to finish within a grace period and returns, the
reconciler asks ``stopped`` on its later passes and calls ``kill`` once the grace period is over, so a
Celery worker never sleeps through someone else's shutdown.
Adding a backend (Ray Serve, KServe) is a new module implementing Backend and a line in registry().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

# The most a log read returns, whatever the line count: a page of a replica's log, not its history.
LOG_TAIL_BYTES = 64 * 1024


@dataclass(frozen=True)
class ReplicaSpec:
    replica_id: int
    deployment_id: int
    organisation_slug: str
    product_id: int
    served_model_name: str
    model_source: str  # a Hugging Face repo id or a local directory
    dtype: str  # "auto", "float16", "bfloat16", "float32"
    max_model_len: int
    tensor_parallel_size: int
    gpu_memory_utilization: float
    quantization: str  # "" for none
    lora_modules: dict[str, str]  # name -> path or repo id
    extra_args: list[str]  # already checked against the allow-list
    gpu_indices: list[int]
    node_name: str
    node_address: str
    port: int
    api_key: str  # vLLM's own key: never logged, never returned by the API


def serving_flags(spec: ReplicaSpec, *, host: str, port: int, gpus: bool) -> list[str]:
    """vLLM's command-line flags for a replica (everything after the model), the same for every backend."""
    flags = [
        "--host", host,
        "--port", str(port),
        "--served-model-name", spec.served_model_name,
        "--dtype", spec.dtype,
        "--max-model-len", str(spec.max_model_len),
    ]
    if gpus:
        flags += ["--tensor-parallel-size", str(spec.tensor_parallel_size),
                  "--gpu-memory-utilization", str(spec.gpu_memory_utilization)]
    if spec.quantization:
        flags += ["--quantization", spec.quantization]
    if spec.lora_modules:
        flags += ["--enable-lora", "--max-lora-rank", "64",
                  "--lora-modules", *[f"{name}={source}" for name, source in sorted(spec.lora_modules.items())]]
    return flags + list(spec.extra_args)


@dataclass(frozen=True)
class ReplicaHandle:
    endpoint: str  # base URL, e.g. http://127.0.0.1:8101
    pid: int | None = None
    pod_name: str = ""
    log_path: str = ""


@dataclass(frozen=True)
class ReplicaRef:
    """What the database remembers of a running replica, enough to find it again after a restart."""

    replica_id: int
    deployment_id: int
    endpoint: str
    pid: int | None = None
    pod_name: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    log_path: str = ""  # the local backend's log file of the replica's output


class LogUnavailable(RuntimeError):
    """A replica's log cannot be read; the message says why, in words a platform lead can act on."""


@dataclass(frozen=True)
class Observation:
    running: bool
    detail: str = ""
    exit_code: int | None = None


class Backend(Protocol):
    name: str

    # How long after the grace period the reconciler still waits for ``stopped`` after ``kill``.
    stop_slack_seconds: float

    def start(self, spec: ReplicaSpec) -> ReplicaHandle: ...

    def observe(self, ref: ReplicaRef) -> Observation: ...

    def stop(self, ref: ReplicaRef, *, grace_seconds: float) -> None:
        """Ask the replica to finish within ``grace_seconds``; returns at once."""

    def kill(self, ref: ReplicaRef) -> None:
        """End whatever is left of the replica now; returns at once."""

    def stopped(self, ref: ReplicaRef) -> bool:
        """True when nothing of the replica runs any more (its GPUs and port are free)."""

    def log_tail(self, ref: ReplicaRef, *, lines: int) -> list[str]:
        """The replica's last ``lines`` lines of output, oldest first, at most LOG_TAIL_BYTES of them, with
        undecodable bytes replaced. Raises LogUnavailable saying why when there is none to read."""

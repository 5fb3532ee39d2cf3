"""The local backend: each replica is a vLLM server process on this host.

- Started in its own session (process group), with CUDA_VISIBLE_DEVICES naming its GPUs, a port from the
  pool, vLLM's API key in its environment (not on its command line, where `ps` would show it), and its
  output in a log file under INFERENCE_LOG_DIR.
- Stopped with SIGTERM to the whole group, then (the reconciler calls ``kill`` once the grace period is over)
  SIGKILL to the group: vLLM's engine-core and worker children would otherwise outlive the main process.
  Neither waits; ``stopped`` says when the group is gone.
- Runs on the host that owns the replica's GPUs: with INFERENCE_NODE_QUEUES on, the reconciler sends each
  node's work to the Celery queue ``node.<name>`` that only that host's worker consumes.
- Replicas outlive a restart of Corral's processes and are adopted again: the database keeps each replica's
  pid and the kernel start time of that process, so a pid reused by another program is never mistaken for it.
"""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
from pathlib import Path

from django.conf import settings

from inference.backends.base import (
    LOG_TAIL_BYTES,
    LogUnavailable,
    Observation,
    ReplicaHandle,
    ReplicaRef,
    ReplicaSpec,
    serving_flags,
)


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (field 22 of /proc/<pid>/stat), or None."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat.rsplit(")", 1)[1].split()
    if fields[0] == "Z":  # a zombie has exited: it only waits to be reaped
        return None
    return fields[19]


def _reap(pid: int) -> int | None:
    """Collect our own exited child (so it does not linger as a zombie); its exit code, if it was ours."""
    try:
        waited, status = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return None
    if waited == 0:
        return None
    return os.waitstatus_to_exitcode(status)


def command_line(spec: ReplicaSpec, command: str) -> list[str]:
    """The vLLM command for a replica. ``command`` is "vllm serve" or a module invocation of the server."""
    parts = shlex.split(command)
    args = [*parts, spec.model_source] if parts and parts[-1] == "serve" else [*parts, "--model", spec.model_source]
    host = "127.0.0.1" if spec.node_address in ("127.0.0.1", "localhost") else "0.0.0.0"
    return args + serving_flags(spec, host=host, port=spec.port, gpus=bool(spec.gpu_indices))


class LocalBackend:
    name = "local"
    # A SIGKILLed group is gone within milliseconds unless a process is stuck in the kernel (a GPU driver
    # call); past this the reconciler stops waiting and says so.
    stop_slack_seconds = 5.0

    def start(self, spec: ReplicaSpec) -> ReplicaHandle:
        log_dir = Path(settings.INFERENCE_LOG_DIR)
        log_dir.mkdir(parents=True, exist_ok=True)
        log_path = log_dir / f"deployment-{spec.deployment_id}-replica-{spec.replica_id}.log"
        env = {
            **os.environ,
            **settings.INFERENCE_LOCAL_ENV,
            "VLLM_API_KEY": spec.api_key,
            "CUDA_VISIBLE_DEVICES": ",".join(str(i) for i in spec.gpu_indices),
        }
        if not spec.gpu_indices:  # the CPU build
            env.update({"VLLM_TARGET_DEVICE": "cpu", "VLLM_CPU_KVCACHE_SPACE": str(settings.INFERENCE_CPU_KVCACHE_SPACE_GIB)})
        # Corral's own secrets have no business in vLLM's environment.
        for name in ("SECRET_KEY", "SECRET_KEY_FILE", "DATABASE_URL", "REDIS_URL", "CELERY_BROKER_URL",
                     "WEBHOOK_SIGNING_KEY", "INFERENCE_KEY_SECRET", "EMAIL_HOST_PASSWORD"):
            env.pop(name, None)
        with open(log_path, "ab") as log:
            process = subprocess.Popen(
                command_line(spec, settings.INFERENCE_LOCAL_COMMAND), stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=env, start_new_session=True, close_fds=True,
            )
        return ReplicaHandle(endpoint=f"http://{spec.node_address}:{spec.port}", pid=process.pid,
                             log_path=str(log_path))

    def observe(self, ref: ReplicaRef) -> Observation:
        if ref.pid is None:
            return Observation(False, "no process recorded")
        exit_code = _reap(ref.pid)
        started = _start_time(ref.pid)
        expected = ref.extra.get("start_time")
        if started is None:
            detail = f"process {ref.pid} exited" + (f" with code {exit_code}" if exit_code is not None else "")
            return Observation(False, detail, exit_code)
        if expected and started != expected:
            return Observation(False, f"process {ref.pid} is no longer the replica (pid reused)")
        return Observation(True, f"process {ref.pid} running")

    def _ours(self, ref: ReplicaRef) -> bool:
        """The recorded pid is still the replica's process group leader, or has exited (the group may live
        on); False when the pid now belongs to another program."""
        if ref.pid is None:
            return False
        expected = ref.extra.get("start_time")
        return not expected or _start_time(ref.pid) in (expected, None)

    def _signal(self, ref: ReplicaRef, signum: int) -> None:
        if ref.pid is None or not self._ours(ref):
            return  # nothing recorded, or the pid belongs to something else now: nothing of ours to stop
        try:
            os.killpg(ref.pid, signum)
        except ProcessLookupError:
            pass
        _reap(ref.pid)

    def stop(self, ref: ReplicaRef, *, grace_seconds: float) -> None:
        """SIGTERM to the replica's process group; vLLM finishes its requests and exits."""
        self._signal(ref, signal.SIGTERM)

    def kill(self, ref: ReplicaRef) -> None:
        """SIGKILL to the group: the grace period is over, or the main process died and left its children."""
        self._signal(ref, signal.SIGKILL)

    def stopped(self, ref: ReplicaRef) -> bool:
        if ref.pid is None or not self._ours(ref):
            return True
        _reap(ref.pid)
        return not _group_alive(ref.pid)

    def log_tail(self, ref: ReplicaRef, *, lines: int) -> list[str]:
        """The end of the replica's log file on this host. Only a file inside INFERENCE_LOG_DIR is read,
        whatever the row says, and only its last LOG_TAIL_BYTES."""
        return file_tail(ref.log_path, lines=lines)


def file_tail(path: str, *, lines: int) -> list[str]:
    if not path:
        raise LogUnavailable("No log file is recorded: the replica has not started a process yet.")
    log_dir = Path(settings.INFERENCE_LOG_DIR).resolve()
    target = Path(path).resolve()
    if not target.is_relative_to(log_dir):
        raise LogUnavailable("The recorded log file is outside INFERENCE_LOG_DIR, so it is not read.")
    try:
        with open(target, "rb") as log:
            size = log.seek(0, os.SEEK_END)
            log.seek(max(0, size - LOG_TAIL_BYTES))
            text = log.read().decode("utf-8", errors="replace")
    except (FileNotFoundError, IsADirectoryError):
        raise LogUnavailable(f"No log file {target.name} on host {socket.gethostname()}.") from None
    except OSError as error:
        raise LogUnavailable(f"The log file {target.name} cannot be read: {error.strerror}.") from None
    tail = text.splitlines()
    if size > LOG_TAIL_BYTES:
        tail = tail[1:]  # the first line read is likely cut
    return tail[-lines:] if lines > 0 else []


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # Only zombies left in the group count as gone.
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def process_start_time(pid: int) -> str:
    return _start_time(pid) or ""

"""Parse tenants' uploaded sketches in a separate process.

datasketches-cpp 5.2.0 can crash the process (a segmentation fault, seen with one changed byte in an HLL_4
image) on corrupted input, where Java throws an exception. An upload is therefore read in a child process;
what comes back is the library's own re-serialization of it, which the web process can trust. A crash costs
the child, which is replaced, and the tenant gets a 400 naming the problem.

The child imports only this module and datasketches (the spawn start method), never Django.
"""

from __future__ import annotations

import multiprocessing
import threading
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass

PARSE_TIMEOUT_SECONDS = 20
_lock = threading.Lock()
_executor: ProcessPoolExecutor | None = None


@dataclass(frozen=True)
class ParsedSketch:
    data: bytes  # compact HLL_4 image, re-serialized by DataSketches
    lg_k: int
    estimate: float


class SketchRejected(ValueError):
    pass


def _canonicalize(data: bytes, lg_max_k: int) -> tuple[bytes, int, float]:
    """In the child: deserialize, fold into a fresh union at lgK <= lg_max_k, re-serialize compactly."""
    from datasketches import hll_sketch, hll_union, tgt_hll_type

    sketch = hll_sketch.deserialize(data)
    merged = hll_union(min(lg_max_k, sketch.lg_config_k))
    merged.update(sketch)
    result = merged.get_result(tgt_hll_type.HLL_4)
    image = bytes(result.serialize_compact())
    # Reading our own output back proves it is well-formed before the parent ever touches it.
    check = hll_sketch.deserialize(image)
    return image, check.lg_config_k, check.get_estimate()


def _executor_get() -> ProcessPoolExecutor:
    global _executor
    with _lock:
        if _executor is None:
            _executor = ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn"))
        return _executor


def _executor_discard(broken: ProcessPoolExecutor) -> None:
    global _executor
    with _lock:
        if _executor is broken:
            _executor = None
    broken.shutdown(wait=False, cancel_futures=True)


def parse_in_sandbox(data: bytes, lg_max_k: int) -> ParsedSketch:
    """The canonical form of an uploaded sketch, or SketchRejected saying why it cannot be used."""
    executor = _executor_get()
    try:
        image, lg_k, estimate = executor.submit(_canonicalize, data, lg_max_k).result(timeout=PARSE_TIMEOUT_SECONDS)
    except BrokenProcessPool as exc:
        _executor_discard(executor)
        raise SketchRejected("is corrupt: the DataSketches parser crashed on it") from exc
    except TimeoutError as exc:
        _executor_discard(executor)
        raise SketchRejected("could not be parsed in time") from exc
    except (ValueError, IndexError, RuntimeError, MemoryError, TypeError) as exc:
        raise SketchRejected(f"does not deserialize as an HLL sketch: {exc}") from exc
    return ParsedSketch(data=image, lg_k=lg_k, estimate=estimate)

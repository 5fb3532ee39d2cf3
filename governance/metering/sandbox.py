"""Check tenants' uploaded sketches in a separate process.

datasketches-cpp 5.2.0 can crash the process (a segmentation fault, seen with one changed byte in an HLL_4
image; a heap overflow from a list that claims more coupons than it holds) on corrupted input, where Java
throws an exception. Every check of an upload therefore runs in a child process: the structure of the bytes,
the minimum lgK, the registers, the estimate of the sketch alone and of its union with what the product-day
already holds. What comes back is the library's own re-serialization of it, with every derived field
recomputed from the registers, which the web process can trust. A crash costs the child, which is replaced,
and the tenant gets a 400 naming the problem.

The child imports only this module, governance.metering.sketches and datasketches (the spawn start method), never Django.
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
    lg_k: int  # as stored: at most lg_max_k
    source_lg_k: int  # as uploaded
    estimate: int
    lower: int
    upper: int
    day_estimate: int  # the product-day's distinct users once this sketch is added


@dataclass(frozen=True)
class UploadRules:
    lg_max_k: int
    min_lg_k: int
    # (most distinct users a product-day may have, what that limit is), the tightest first
    limits: tuple[tuple[int, str], ...]


class SketchRejected(ValueError):
    pass


def _check(data: bytes, stored: bytes | None, rules: UploadRules) -> ParsedSketch:
    """In the child: every check of the upload; its canonical form, or SketchRejected saying why not."""
    from datasketches import hll_sketch

    from governance.metering import sketches

    try:
        header = sketches.check_image(data)
        if header.lg_k < rules.min_lg_k:
            raise SketchRejected(f"has lgK {header.lg_k}; uploads need lgK {rules.min_lg_k} or more, as "
                                 f"{sketches.interval_note(header.lg_k, rules.min_lg_k)}")
        if header.mode != "HLL":
            data = sketches.coupon_image(sketches.coupons_of(data, header), header)
        sketch = sketches.rebuilt(hll_sketch.deserialize(data), rules.lg_max_k)
        register = sketches.impossible_register(sketch)
        if register is not None:
            raise SketchRejected(f"has a register value of {register}; DataSketches never writes more than "
                                 f"{sketches.MAX_REGISTER_VALUE}, so the image is forged or corrupt")
        alone = sketches.estimate_of(sketch)
        _within(rules, alone.estimate, "counts {n:,} distinct users for one product and day")
        day = alone
        if stored is not None:
            day = sketches.estimate_of(sketches.union([stored, sketch], rules.lg_max_k))
            _within(rules, day.estimate, "would bring the product's distinct users that day, with what is already "
                    "recorded, to {n:,}")
        image = sketches.serialize(sketch, cold=True)
        stored_form = sketches.load(image)  # our own output, read back before the parent ever stores it
        sketches.estimate_of(stored_form)
    except SketchRejected:
        raise
    except sketches.InvalidSketch as exc:  # and UnreadableSketch: the message says what is wrong
        raise SketchRejected(str(exc)) from None
    except (ValueError, IndexError, RuntimeError, MemoryError, TypeError, OverflowError) as exc:
        raise SketchRejected(f"does not deserialize as an HLL sketch: {exc}") from None
    return ParsedSketch(data=image, lg_k=stored_form.lg_config_k, source_lg_k=header.lg_k, estimate=alone.estimate,
                        lower=alone.lower, upper=alone.upper, day_estimate=day.estimate)


def _within(rules: UploadRules, count: int, what: str) -> None:
    for limit, name in rules.limits:
        if count > limit:
            raise SketchRejected(f"{what.format(n=count)}, above {name} ({limit:,})")


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
    # A child that hangs (a corrupted heap can leave it waiting on its own allocator lock) would otherwise
    # keep its CPU and memory for good: shutdown() does not stop a running task.
    for process in list((getattr(broken, "_processes", None) or {}).values()):
        process.kill()
    broken.shutdown(wait=False, cancel_futures=True)


def check_in_sandbox(data: bytes, *, stored: bytes | None, rules: UploadRules) -> ParsedSketch:
    """The canonical form of an uploaded sketch, or SketchRejected saying why it cannot be used.

    ``stored``: the union of what the product-day already holds (the web process's own, trusted bytes), so the
    product-day is checked with this sketch added.
    """
    executor = _executor_get()
    try:
        return executor.submit(_check, data, stored, rules).result(timeout=PARSE_TIMEOUT_SECONDS)
    except BrokenProcessPool as exc:
        _executor_discard(executor)
        raise SketchRejected("is corrupt: the DataSketches parser crashed on it") from exc
    except TimeoutError as exc:
        _executor_discard(executor)
        raise SketchRejected("could not be parsed in time") from exc

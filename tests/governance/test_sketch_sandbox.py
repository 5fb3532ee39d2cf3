"""The sandbox that checks uploaded sketches in a child process. No database."""

from __future__ import annotations

import time

import pytest
from datasketches import hll_sketch, tgt_hll_type

from governance.metering import sandbox as sketch_sandbox
from governance.metering import sketches
from governance.metering.sandbox import SketchRejected, UploadRules, check_in_sandbox
from tests.governance import sketch_forgeries as forgeries

WORLD = (sketches.WORLD_POPULATION, "the world's population")
RULES = UploadRules(lg_max_k=18, min_lg_k=sketches.MIN_UPLOAD_LG_K, limits=(WORLD,))


def _check(image: bytes, stored: bytes | None = None, rules: UploadRules = RULES) -> sketch_sandbox.ParsedSketch:
    return check_in_sandbox(image, stored=stored, rules=rules)


def test_it_stores_the_librarys_own_compact_form_with_the_figures() -> None:
    parsed = _check(forgeries.hll(range(60_000), 21, tgt_hll_type.HLL_8, compact=False))
    stored = hll_sketch.deserialize(parsed.data)
    assert (parsed.source_lg_k, parsed.lg_k, stored.lg_config_k) == (21, 18, 18)
    assert sketches.tgt_type_of(parsed.data) == "HLL_4" and parsed.data[5] & 0x08  # the compact flag
    assert parsed.lower <= 60_000 <= parsed.upper and parsed.day_estimate == parsed.estimate


@pytest.mark.parametrize("lg_k", [4, 8, 11])
def test_it_refuses_a_sketch_coarser_than_the_minimum_naming_the_figures(lg_k: int) -> None:
    with pytest.raises(SketchRejected, match=rf"has lgK {lg_k}; uploads need lgK 12 or more, as at 700M users an "
                                             rf"lgK {lg_k} sketch's 95% interval is .* \(lgK 12: 677.8M to 723.0M\)"):
        _check(forgeries.hll(range(1000), lg_k))


def test_it_refuses_a_sketch_of_more_people_than_there_are() -> None:
    image = bytearray(forgeries.hll(range(50_000), 12))
    image[6] = 45  # every register 45 or more: about 3 x 10^12 people
    with pytest.raises(SketchRejected, match=r"counts [\d,]+ distinct users for one product and day, above the "
                                             r"world's population \(8,200,000,000\)"):
        _check(bytes(image))


def test_it_refuses_a_register_no_hash_can_set() -> None:
    image = bytearray(forgeries.hll(range(50_000), 12))
    image[6] = 60  # the minimum shifted so far that registers read 60 to 74
    with pytest.raises(SketchRejected, match="has a register value of 74; DataSketches never writes more than 63"):
        _check(bytes(image))


def test_it_refuses_a_count_above_the_products_own_ceiling() -> None:
    rules = UploadRules(lg_max_k=18, min_lg_k=12, limits=((10_000, "this product's ceiling, max_daily_users"), WORLD))
    assert _check(forgeries.hll(range(9_000), 18), rules=rules).estimate == 9_000  # exact below ~24,000
    with pytest.raises(SketchRejected, match=r"counts 10,001 distinct users for one product and day, above this "
                                             r"product's ceiling, max_daily_users \(10,000\)"):
        _check(forgeries.hll(range(10_001), 18), rules=rules)


def test_it_checks_the_product_day_with_what_it_already_holds() -> None:
    rules = UploadRules(lg_max_k=18, min_lg_k=12, limits=((10_000, "this product's ceiling, max_daily_users"), WORLD))
    stored = sketches.serialize(sketches.sketch_from_ids(range(8_000), 18))
    same_people = _check(forgeries.hll(range(8_000), 18), stored=stored, rules=rules)
    assert same_people.day_estimate == 8_000
    with pytest.raises(SketchRejected, match=r"would bring the product's distinct users that day, with what is "
                                             r"already recorded, to [\d,]+, above this product's ceiling"):
        _check(forgeries.hll(range(8_000, 14_000), 18), stored=stored, rules=rules)


def test_it_stores_a_forged_harmonic_sum_recomputed_from_the_registers() -> None:
    parsed = _check(forgeries.zero_harmonic_sum(users=60_000))
    assert parsed.lower <= 60_000 <= parsed.upper
    assert sketches.stored_estimate(parsed.data).estimate == parsed.estimate


@pytest.mark.parametrize(
    "image, message",
    [
        pytest.param(forgeries.overflowing_list(), "claims 129 coupons in list mode", id="list-overflow"),
        pytest.param(forgeries.world_beater(), "has lgK 4", id="lgk4"),
        pytest.param(b"\x02\x01\x07\x0c", "is 4 bytes, shorter than any DataSketches sketch", id="short"),
    ],
)
def test_it_names_what_is_wrong_with_a_forgery(image: bytes, message: str) -> None:
    with pytest.raises(SketchRejected, match=message):
        _check(image)


def test_it_replaces_a_child_that_died_and_keeps_checking() -> None:
    _check(forgeries.hll(range(10), 12))  # the child is up
    executor = sketch_sandbox._executor_get()
    for process in list(executor._processes.values()):  # what a segmentation fault does to it
        process.kill()
        process.join(timeout=10)
    with pytest.raises(SketchRejected, match="crashed"):
        _check(forgeries.hll(range(10), 12))
    assert _check(forgeries.hll(range(50), 12)).estimate == 50


def _running(pid: int) -> bool:
    """Whether the process exists and is not a zombie waiting to be reaped."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_it_kills_a_child_that_hangs_instead_of_leaving_it_running() -> None:
    executor = sketch_sandbox._executor_get()
    executor.submit(time.sleep, 60)
    deadline = time.monotonic() + 30  # a loaded machine takes a while to spawn the child
    while not executor._processes and time.monotonic() < deadline:
        time.sleep(0.1)
    processes = list(executor._processes.values())
    assert processes, "the pool started no child"
    pids = [process.pid for process in processes]
    sketch_sandbox._executor_discard(executor)
    # The pool's own thread may reap a child before this thread does, and multiprocessing then still calls it
    # alive: ask the kernel whether the process is gone instead.
    deadline = time.monotonic() + 30
    while any(_running(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not [pid for pid in pids if _running(pid)]
    assert _check(forgeries.hll(range(50), 12)).estimate == 50

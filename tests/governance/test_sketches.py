"""The sketch functions, against exact counts. No database."""

from __future__ import annotations

import base64
import collections
import random
import struct

import pytest
from datasketches import cpc_sketch, hll_sketch, tgt_hll_type, update_theta_sketch

from governance.metering import sketches
from tests.governance import sketch_forgeries as forgeries


def _hll(ids, lg_k: int = 18, tgt=tgt_hll_type.HLL_4) -> hll_sketch:
    sketch = hll_sketch(lg_k, tgt)
    collections.deque(map(sketch.update, ids), maxlen=0)
    return sketch


@pytest.mark.parametrize("n", [10**3, 10**4, 10**5, 10**6])
def test_it_estimates_within_its_error_bound(n: int) -> None:
    estimate = sketches.estimate_of(sketches.sketch_from_ids((f"user-{i}" for i in range(n)), 18))
    # One draw may fall outside a 95% interval; none may fall outside 3 standard deviations (1.5 half-widths).
    half_width = (estimate.upper - estimate.lower) / 2
    assert abs(estimate.estimate - n) <= 1.5 * half_width + 0.5
    assert estimate.relative_half_width <= 0.005  # the +/-0.5% at 95% asked for at 700M holds at any size


@pytest.mark.parametrize("n", [10**4, 10**5, 10**6])
def test_its_95_percent_interval_covers_the_truth_at_least_that_often(n: int) -> None:
    trials = 40 if n < 10**6 else 12
    covered = sum(
        estimate.lower <= n <= estimate.upper
        for estimate in (
            sketches.estimate_of(sketches.union([sketches.sketch_from_ids((f"t{t}-{i}" for i in range(n)), 18)], 18))
            for t in range(trials)
        )
    )
    # Binomial(40, 0.95): 34 or fewer happens with probability under 2%; for 12 trials, 9 or fewer under 2%.
    assert covered >= (35 if trials == 40 else 10)


def test_it_is_exact_at_small_cardinalities() -> None:
    for n in (1, 7, 100, 1000):
        estimate = sketches.estimate_of(sketches.sketch_from_ids(range(n), 18))
        assert (estimate.estimate, estimate.lower, estimate.upper) == (n, n, n)


def test_an_empty_sketch_counts_zero() -> None:
    assert sketches.estimate_of(sketches.empty(18)) == sketches.Estimate(0, 0, 0, 18)


def test_the_union_of_overlapping_sketches_counts_each_person_once() -> None:
    a = sketches.sketch_from_ids(range(0, 600_000), 18)
    b = sketches.sketch_from_ids(range(400_000, 1_000_000), 18)
    estimate = sketches.estimate_of(sketches.union([a, b], 18))
    assert estimate.lower <= 1_000_000 <= estimate.upper


def test_it_hashes_ids_as_datasketches_does_so_tenant_sketches_merge() -> None:
    ids = [f"u{i}" for i in range(50_000)] + list(range(50_000))
    ours = sketches.sketch_from_ids(ids, 18)
    theirs = _hll(ids, 21, tgt_hll_type.HLL_8)  # a tenant's pipeline at a finer precision
    merged = sketches.estimate_of(sketches.union([ours, theirs], 18))
    assert merged.lower <= 100_000 <= merged.upper


def test_integers_and_their_strings_are_different_people() -> None:
    estimate = sketches.estimate_of(sketches.sketch_from_ids([7, "7"], 18))
    assert estimate.estimate == 2


def test_a_union_follows_the_coarsest_input() -> None:
    coarse = _hll(range(100_000), 12)
    fine = _hll(range(50_000, 150_000), 21)
    merged = sketches.union([fine, coarse], 18)
    estimate = sketches.estimate_of(merged)
    assert merged.lg_config_k == 12
    assert estimate.lower <= 150_000 <= estimate.upper
    assert estimate.relative_half_width > 0.02  # lgK 12 says so: the interval widens with the coarse input


def test_downsampling_unions_lose_nothing() -> None:
    """datasketches-cpp 5.2.0 drops earlier inputs when a union downsamples; ours must not."""
    parts = [_hll(range(i * 75_000, (i + 1) * 75_000), 21) for i in range(10)]
    estimate = sketches.estimate_of(sketches.union(parts, 18))
    assert estimate.lower <= 750_000 <= estimate.upper

    mixed = [_hll(range(0, 300_000), 21)] + [_hll(range(300_000 + i * 200_000, 500_000 + i * 200_000), 18)
                                             for i in range(3)]
    estimate = sketches.estimate_of(sketches.union(mixed, 21))
    assert estimate.lower <= 900_000 <= estimate.upper


def test_random_mixed_precision_unions_match_exact_counts() -> None:
    rng = random.Random(7)
    for _ in range(40):
        truth: set[int] = set()
        inputs = []
        for _ in range(rng.randint(2, 6)):
            low, size = rng.randint(0, 400_000), rng.choice([5, 300, 5_000, 50_000, 200_000])
            truth.update(range(low, low + size))
            inputs.append(_hll(range(low, low + size), rng.choice([12, 14, 16, 18, 21]),
                               rng.choice([tgt_hll_type.HLL_4, tgt_hll_type.HLL_8])))
        estimate = sketches.estimate_of(sketches.union(inputs, rng.choice([12, 16, 18, 21])))
        # Allow one extra half-width: 40 trials at ~95% each would otherwise fail by chance.
        slack = (estimate.upper - estimate.lower) / 2
        assert estimate.lower - slack <= len(truth) <= estimate.upper + slack


def test_many_coupon_mode_sketches_are_not_biased_upwards() -> None:
    """Unions of small (coupon-mode) sketches carry a biased HIP estimate; estimate_of reads the composite."""
    parts = [_hll(range(i * 10_000, (i + 1) * 10_000), 18) for i in range(100)]
    estimate = sketches.estimate_of(sketches.union(parts, 18))
    assert estimate.lower <= 1_000_000 <= estimate.upper


def test_sliding_unions_equal_direct_unions() -> None:
    days = [_hll(range(d * 1000, d * 1000 + 5000), 14) for d in range(40)]
    windows = sketches.sliding_unions(days, 7, 14)
    for i in (0, 3, 6, 7, 13, 14, 20, 39):
        direct = sketches.union(days[max(0, i - 6): i + 1], 14)
        assert sketches.estimate_of(windows[i]) == sketches.estimate_of(direct), i


@pytest.mark.parametrize(
    "raw, message",
    [
        ("x", "must be a list"),
        ([], "must not be empty"),
        (["a", 1.5], "[1] must be a string or an integer, got number with a fraction"),
        ([True], "[0] must be a string or an integer, got boolean"),
        ([None], "got null"),
        ([["a"]], "got array"),
        ([{"a": 1}], "got object"),
        (["a", ""], "[1] must not be an empty string"),
        ([2**63], "outside 64 bits"),
        ([-(2**63) - 1], "outside 64 bits"),
        (["a"] * 11, "at most 10 ids"),
    ],
)
def test_it_refuses_bad_ids_naming_the_first(raw, message) -> None:
    with pytest.raises(sketches.InvalidIds, match=message.replace("[", r"\[").replace("]", r"\]")):
        sketches.validate_user_ids(raw, max_items=10)


def test_it_accepts_64_bit_extremes_and_long_strings() -> None:
    ids = [2**63 - 1, -(2**63), "x" * 100_000]
    assert sketches.validate_user_ids(ids, max_items=10) == ids


@pytest.mark.parametrize(
    "data, message",
    [
        (b"", "shorter than any"),
        (b"\x01\x01\x03\x0c\x00\x00\x00\x00", "Theta"),
        (b"\x02\x01\x10\x0b\x00\x00\x00\x00", "CPC"),
        (b"\x02\x01\x63\x0c\x00\x00\x00\x00", "not a DataSketches sketch"),
        (b"\x02\x02\x07\x0c\x00\x00\x00\x00", "serialization version 2"),
        (b"\x02\x01\x07\x1c\x00\x00\x00\x00", "lgK 28"),
    ],
)
def test_it_reads_the_header_and_names_what_is_wrong(data, message) -> None:
    with pytest.raises(sketches.InvalidSketch, match=message):
        sketches.read_header(data)


def test_it_names_real_cpc_and_theta_sketches() -> None:
    cpc = cpc_sketch(11)
    theta = update_theta_sketch()
    for i in range(100):
        cpc.update(i)
        theta.update(i)
    with pytest.raises(sketches.InvalidSketch, match="CPC"):
        sketches.read_header(bytes(cpc.serialize()))
    with pytest.raises(sketches.InvalidSketch, match="Theta"):
        sketches.read_header(bytes(theta.compact().serialize()))


def test_it_reads_an_hll_header() -> None:
    header = sketches.read_header(bytes(_hll(range(10), 12, tgt_hll_type.HLL_6).serialize_compact()))
    assert (header.lg_k, header.tgt_type) == (12, "HLL_6")


def test_it_decodes_only_base64() -> None:
    assert sketches.decode_sketch(base64.b64encode(b"abc").decode()) == b"abc"
    with pytest.raises(sketches.InvalidSketch, match="base64"):
        sketches.decode_sketch("not base64!")


# --- images that cannot be trusted -------------------------------------------------------------------------


@pytest.mark.parametrize("tgt", forgeries.TGT_TYPES)
def test_it_reads_a_sketch_with_a_forged_harmonic_sum_from_its_registers(tgt) -> None:
    image = forgeries.zero_harmonic_sum(users=60_000, tgt=tgt)
    # What the library makes of it, read as a merged sketch (the composite estimator, which takes the sum as
    # stored, as the union that copies it does): an infinite count, the OverflowError that took a group down.
    merged = bytearray(image)
    merged[5] |= 0x10
    assert hll_sketch.deserialize(bytes(merged)).get_estimate() == float("inf")
    for estimate in (sketches.estimate_of(sketches.union([image], 18)), sketches.stored_estimate(image)):
        assert estimate.lower <= 60_000 <= estimate.upper
    rebuilt = sketches.rebuilt(hll_sketch.deserialize(image), 18)
    assert rebuilt.lg_config_k == 12 and sketches.estimate_of(rebuilt) == sketches.stored_estimate(image)


@pytest.mark.parametrize(
    "image, message",
    [
        pytest.param(forgeries.overflowing_list(), "129 coupons in list mode, which holds at most 8", id="list"),
        pytest.param(forgeries.hll(range(5), 12)[:20], "truncated: a list of 5 coupons needs 28 bytes", id="short"),
        pytest.param(forgeries.hll(range(50_000), 12)[:1000], "truncated: an lgK 12 HLL_4 array", id="array"),
        pytest.param(bytes([10]) + forgeries.hll(range(5), 12)[1:], "10 preamble ints", id="pre-ints"),
    ],
)
def test_it_refuses_an_image_whose_counts_the_library_would_trust(image: bytes, message: str) -> None:
    with pytest.raises(sketches.InvalidSketch, match=message):
        sketches.load(image)


def test_it_refuses_an_exception_token_without_an_exception_table() -> None:
    # One register set to the HLL_4 token 15 with no table: datasketches-cpp follows a null pointer.
    image = bytearray(forgeries.hll(range(50_000), 15))
    image[40 + 100] |= 0x0F
    with pytest.raises(sketches.InvalidSketch, match=r"marks \d+ registers as exceptions but has \d+"):
        sketches.check_image(bytes(image))


def test_it_refuses_a_count_its_coupons_disagree_with() -> None:
    image = bytearray(forgeries.hll(range(300), 12, compact=False))  # a set, count at bytes 8-11
    struct.pack_into("<I", image, 8, 10)
    header = sketches.check_image(bytes(image))
    with pytest.raises(sketches.InvalidSketch, match="claims 10 coupons but holds 300"):
        sketches.coupons_of(bytes(image), header)


@pytest.mark.parametrize("lg_k", [4, 8, 12, 18, 21])
@pytest.mark.parametrize("n", [0, 5, 300, 100_000])
def test_it_passes_every_image_datasketches_writes(lg_k: int, n: int) -> None:
    for tgt in forgeries.TGT_TYPES:
        for compact in (True, False):
            image = forgeries.hll((f"u{i}" for i in range(n)), lg_k, tgt, compact=compact)
            sketches.check_image(image)
            assert sketches.stored_estimate(image).estimate == sketches.estimate_of(hll_sketch.deserialize(image)).estimate


def test_a_coupon_image_holds_the_same_people() -> None:
    for n in (0, 3, 7, 8, 300):
        image = forgeries.hll(range(n), 12, compact=False)
        header = sketches.check_image(image)
        rewritten = sketches.coupon_image(sketches.coupons_of(image, header), header)
        assert sketches.stored_estimate(rewritten).estimate == n


def test_a_sketch_of_more_people_than_there_are_is_unreadable() -> None:
    with pytest.raises(sketches.UnreadableSketch, match="more than the world's population"):
        sketches.stored_estimate(forgeries.world_beater())


def test_a_sound_union_leaves_out_what_cannot_be_read_and_says_why() -> None:
    good = {f"good-{i}": sketches.serialize(sketches.sketch_from_ids(range(i * 1000, (i + 1) * 1000), 18))
            for i in range(3)}
    bad = {"huge": forgeries.world_beater(), "list": forgeries.overflowing_list(),
           "short": forgeries.hll(range(50_000), 12)[:1000]}
    merged, estimate, left_out = sketches.sound_union({**good, **bad}, 18)
    assert set(left_out) == set(bad)
    assert estimate.estimate == 3000 and merged.lg_config_k == 18  # the lgK-4 forgery did not coarsen the union
    assert sketches.sound_union(good, 18)[2] == {}


def test_the_minimum_upload_precision_is_explained_in_figures() -> None:
    assert sketches.interval_at(12) == (677_752_293, 723_011_890)
    low, high = sketches.interval_at(4)
    assert low < 420_000_000 and high > 1_190_000_000
    assert "lgK 12: 677.8M to 723.0M" in sketches.interval_note(8, 12)

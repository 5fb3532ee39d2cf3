"""Sketch images that broke or gamed a group's figures before uploads were checked whole, for the tests.

Each reproduces a reported case: what a tenant sent, or what the old sandbox then stored.
"""

from __future__ import annotations

import random
import struct
from collections.abc import Iterable, Iterator

from datasketches import hll_sketch, tgt_hll_type

TGT_TYPES = (tgt_hll_type.HLL_4, tgt_hll_type.HLL_6, tgt_hll_type.HLL_8)


def hll(ids: Iterable[object], lg_k: int, tgt: tgt_hll_type = tgt_hll_type.HLL_4, *, compact: bool = True) -> bytes:
    sketch = hll_sketch(lg_k, tgt)
    for user_id in ids:
        sketch.update(user_id)
    return bytes(sketch.serialize_compact() if compact else sketch.serialize_updatable())


def zero_harmonic_sum(lg_k: int = 12, users: int = 50_000, tgt: tgt_hll_type = tgt_hll_type.HLL_8) -> bytes:
    """An HLL-array sketch whose stored harmonic sums (kxq0, kxq1) were mutated to zero: the library copies them
    into a union and reads the count as infinite (``OverflowError: cannot convert float infinity to integer``).
    The old sandbox stored such an upload as it came, and every read of its product and group failed."""
    image = bytearray(hll(range(users), lg_k, tgt, compact=False))
    struct.pack_into("<2d", image, 16, 0.0, 0.0)
    return bytes(image)


def world_beater(lg_k: int = 4) -> bytes:
    """The 48-byte lgK-4 sketch whose registers all read 47 or more: it counts about 10^15 people."""
    image = bytearray(hll(range(1000), lg_k))
    image[6] = 47  # the minimum register value an HLL_4 array adds to every 4-bit register
    return bytes(image)


def overflowing_list() -> bytes:
    """What the old sandbox made of a 40-byte list whose count byte was flipped to 129: a list of 129 coupons,
    which datasketches-cpp copies into an 8-slot array (heap corruption, then an abort of the reading process)."""
    coupons = [(1 << 26) | i for i in range(1, 130)]
    return bytes([2, 1, 7, 18, 3, 8, 129, 0]) + struct.pack(f"<{len(coupons)}I", *coupons)


def mutations(rng: random.Random, image: bytes, other: bytes) -> Iterator[tuple[str, bytes]]:
    """Ways a sketch is damaged on its way: bit flips, a changed byte, truncation, the splice of two sketches."""
    flipped = bytearray(image)
    for _ in range(rng.randint(1, 8)):
        position = rng.randrange(len(flipped))
        flipped[position] ^= 1 << rng.randrange(8)
    yield "bit flips", bytes(flipped)
    changed = bytearray(image)
    changed[rng.randrange(min(len(changed), 48))] = rng.randrange(256)  # the preamble and first registers
    yield "a changed byte", bytes(changed)
    yield "truncation", image[:rng.randrange(len(image))]
    yield "splice", image[:rng.randrange(len(image) + 1)] + other[rng.randrange(len(other) + 1):]

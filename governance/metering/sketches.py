"""Distinct counting with Apache DataSketches HLL sketches, as plain functions over plain values.

Ids are hashed exactly as DataSketches hashes them everywhere (MurmurHash3, default seed 9001): a JSON integer
as a 64-bit integer (Java ``HllSketch.update(long)``), a JSON string as its UTF-8 bytes
(``update(String)``). A sketch a tenant builds from the same ids in Spark, Druid or Java therefore merges with
what Corral builds from id batches, and a person counted by both is counted once.
"""

from __future__ import annotations

import base64
import binascii
import math
import struct
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import TypeVar

from datasketches import hll_sketch, hll_union, tgt_hll_type

from licensing.terms import DEFAULT_MAU_THRESHOLD

HLL_FAMILY_ID = 7
MIN_LG_K, MAX_LG_K = 4, 21
# The coarsest sketch a tenant may upload (docs/metering.md, "Precision of uploads"): a union takes its coarsest
# input's lgK, so this is also the worst precision one upload can impose on its whole group. At lgK 12 the 95%
# interval at 700 million is 677.8M to 723.0M; at lgK 4 it is 416M to 1,190M, which decides nothing.
MIN_UPLOAD_LG_K = 12
# No product, organisation or group can have more distinct users in a day than there are people (UN estimate
# for 2025, rounded up). A stored sketch that reads above it is not a count of anything.
WORLD_POPULATION = 8_200_000_000
# DataSketches writes a register as min(leading zeros, 62) + 1: a value above 63 was never produced by hashing.
MAX_REGISTER_VALUE = 63
# Two storage forms of the same registers (docs/metering.md, "Storage"). A sketch that is still being merged
# into (a part, a rollup of a period still receiving activity) is kept as HLL_8: writing it is a copy, and
# DataSketches merges it in half the time (measured at lgK 18: 2.9 ms against 6.3 ms, plus 3.7 ms to encode
# HLL_4 again). A settled rollup is HLL_4, half the bytes.
HOT_TYPE = tgt_hll_type.HLL_8
COLD_TYPE = tgt_hll_type.HLL_4
HOT_HLL_MODE_BYTE = bytes([2 << 2 | 2])  # preamble byte 7 of an HLL_8 sketch in HLL (register array) mode
# Bounds at two standard deviations: DataSketches' a-priori error bound, covering at least 95% (95.4%).
NUM_STD_DEV = 2
CONFIDENCE = 0.95
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
_OUT_OF_ORDER_FLAG = 0x10
_FAMILY_NAMES = {1: "Theta (alpha)", 2: "Theta (quick-select)", 3: "Theta (compact)", 4: "Theta union",
                 7: "HLL", 8: "quantiles", 9: "Tuple", 10: "frequent items", 15: "KLL", 16: "CPC", 17: "REQ",
                 18: "Count-Min", 20: "t-digest", 21: "Bloom filter"}
_TGT_NAMES = {0: "HLL_4", 1: "HLL_6", 2: "HLL_8"}
_MODE_NAMES = {0: "list", 1: "set", 2: "HLL"}
K = TypeVar("K")


class InvalidIds(ValueError):
    """A batch of user ids that cannot be accepted; the message names the first offending element."""


class InvalidSketch(ValueError):
    """Bytes that are not a usable DataSketches HLL sketch; the message says why."""


class UnreadableSketch(InvalidSketch):
    """A sketch that deserializes but gives no usable figure (an infinite, negative or impossible count)."""


def validate_user_ids(raw: object, *, max_items: int, elements_checked: bool = False) -> list[str | int]:
    """The ids of a batch, each a non-empty string or an integer that fits in 64 bits, or InvalidIds.

    A string's length is bounded only by the request size limit: the hash makes every id the same size.
    ``elements_checked``: a typed decoder already checked each element (governance/metering/fastpath.py).
    """
    if not isinstance(raw, list):
        raise InvalidIds(f"must be a list of strings or integers, got {type(raw).__name__}")
    if not raw:
        raise InvalidIds("must not be empty")
    if len(raw) > max_items:
        raise InvalidIds(f"at most {max_items} ids per request, got {len(raw)}")
    if elements_checked:
        return raw
    # Fast paths in C: a 10,000-id batch is checked in a fraction of the time a loop takes. For strings,
    # join() refuses any element that is not one (80 us against 290 us for collecting the types).
    if type(raw[0]) is str:
        try:
            "".join(raw)
        except TypeError:
            pass
        else:
            if "" not in raw:
                return raw
    elif set(map(type, raw)) == {int}:
        if min(raw) >= INT64_MIN and max(raw) <= INT64_MAX:
            return raw
    _first_bad_id(raw)
    return raw


def _first_bad_id(raw: list[object]) -> None:
    """Raise InvalidIds naming the first element that is not a valid id (the slow path, for the message)."""
    for index, value in enumerate(raw):
        kind = type(value)
        if kind is str:
            if not value:
                raise InvalidIds(f"[{index}] must not be an empty string")
        elif kind is int:
            if not INT64_MIN <= value <= INT64_MAX:  # type: ignore[operator]
                raise InvalidIds(f"[{index}] is an integer outside 64 bits; send such ids as strings")
        else:  # bool is a subclass of int: `type(...) is int` refuses true/false, as it must
            raise InvalidIds(f"[{index}] must be a string or an integer, got {_json_type(value)}")


def _json_type(value: object) -> str:
    return {bool: "boolean", float: "number with a fraction", type(None): "null", dict: "object",
            list: "array"}.get(type(value), type(value).__name__)


def sketch_from_ids(ids: Iterable[str | int], lg_k: int) -> hll_sketch:
    sketch = hll_sketch(lg_k, HOT_TYPE)
    deque(map(sketch.update, ids), maxlen=0)  # the fastest way to drive update() from Python
    return sketch


def decode_sketch(encoded: str) -> bytes:
    try:
        return base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise InvalidSketch("is not valid base64") from exc


@dataclass(frozen=True)
class SketchHeader:
    family: int
    lg_k: int
    tgt_type: str
    mode: str = "HLL"


def read_header(data: bytes) -> SketchHeader:
    """The preamble of a serialized DataSketches sketch, checked to be an HLL sketch Corral can merge."""
    if len(data) < 8:
        raise InvalidSketch(f"is {len(data)} bytes, shorter than any DataSketches sketch")
    family, lg_k, mode = data[2], data[3], data[7]
    if family != HLL_FAMILY_ID:
        name = _FAMILY_NAMES.get(family)
        found = f"a DataSketches {name} sketch" if name else f"not a DataSketches sketch (family byte {family})"
        raise InvalidSketch(f"is {found}; only HLL sketches are accepted")
    if data[1] != 1:
        raise InvalidSketch(f"has HLL serialization version {data[1]}; version 1 is expected")
    if not MIN_LG_K <= lg_k <= MAX_LG_K:
        raise InvalidSketch(f"has lgK {lg_k}; DataSketches allows {MIN_LG_K} to {MAX_LG_K}")
    tgt = (mode >> 2) & 0b11
    if tgt not in _TGT_NAMES:
        raise InvalidSketch("has an unknown HLL target type")
    if mode & 0b11 not in _MODE_NAMES:
        raise InvalidSketch("has an unknown HLL mode")
    return SketchHeader(family=family, lg_k=lg_k, tgt_type=_TGT_NAMES[tgt], mode=_MODE_NAMES[mode & 0b11])


# The serialization format (datasketches-cpp hll/include/HllUtil.hpp): an 8-byte preamble; a list's coupons
# from byte 8, a set's count at 8 and coupons from 12; an HLL array's derived fields at 8-39, registers from 40.
_PRE_INTS = {"list": 2, "set": 3, "HLL": 10}
_COMPACT_FLAG, _EMPTY_FLAG = 0x08, 0x04
_LIST_CAPACITY = 8  # 2^LG_INIT_LIST_SIZE: a list that fills becomes a set (or, below lgK 8, an HLL array)
_LG_INIT_SET_SIZE = 5
_HLL_START = 40


def _set_capacity(lg_arr: int) -> int:
    """Coupons a hash set of 2^lg_arr slots holds before it grows (3/4 full), as datasketches-cpp grows it."""
    return 3 * (1 << lg_arr) // 4


def _hll_array_bytes(tgt_type: str, lg_k: int) -> int:
    k = 1 << lg_k
    return {"HLL_4": k // 2, "HLL_6": (k * 3 >> 2) + 1, "HLL_8": k}[tgt_type]


def check_image(data: bytes) -> SketchHeader:
    """The header of an HLL image whose structure datasketches-cpp can read without reading out of bounds.

    datasketches-cpp 5.2.0 trusts the counts in an image: a list claiming more than 8 coupons is copied into an
    8-slot array (a heap overflow, then an abort), a set's or an exception table's size is a shift by an
    unchecked byte, an exception table on an HLL_8 array is read as if the array were HLL_4. Every count and
    length is checked here, in Python, before the library sees the bytes. (The derived fields of an HLL array,
    its harmonic sums, are not: Corral never takes them from an image, see Union and ``rebuilt``.)
    """
    header = read_header(data)
    size, lg_k, flags = len(data), header.lg_k, data[5]
    compact, empty = bool(flags & _COMPACT_FLAG), bool(flags & _EMPTY_FLAG)
    if data[0] != _PRE_INTS[header.mode]:
        raise InvalidSketch(f"has {data[0]} preamble ints; an HLL sketch in {header.mode} mode has "
                            f"{_PRE_INTS[header.mode]}")
    if header.mode == "list":
        count = data[6]
        if count > _LIST_CAPACITY or (empty and count):
            raise InvalidSketch(f"claims {count} coupons in list mode, which holds at most {_LIST_CAPACITY}"
                                if count > _LIST_CAPACITY else "is flagged empty but claims coupons")
        _need(size, 8 + 4 * (count if compact else _LIST_CAPACITY), f"a list of {count} coupons")
    elif header.mode == "set":
        if lg_k < 8:
            raise InvalidSketch(f"is in set mode at lgK {lg_k}; DataSketches uses set mode only from lgK 8")
        _need(size, 12, "a set")
        (count,) = struct.unpack_from("<I", data, 8)
        most = _set_capacity(lg_k - 3)
        if count > most:
            raise InvalidSketch(f"claims {count} coupons in set mode; at lgK {lg_k} a set holds at most {most}")
        if compact:
            _need(size, 12 + 4 * count, f"a set of {count} coupons")
        else:
            lg_arr = data[4]
            if not _LG_INIT_SET_SIZE <= lg_arr <= lg_k - 3 or count > _set_capacity(lg_arr):
                raise InvalidSketch(f"has a hash set of 2^{lg_arr} slots for {count} coupons at lgK {lg_k}")
            _need(size, 12 + 4 * (1 << lg_arr), f"a hash set of 2^{lg_arr} slots")
    else:
        array_bytes = _hll_array_bytes(header.tgt_type, lg_k)
        _need(size, _HLL_START + array_bytes, f"an lgK {lg_k} {header.tgt_type} array")
        cur_min = data[6]
        (aux_count,) = struct.unpack_from("<I", data, 36)
        k = 1 << lg_k
        if cur_min > MAX_REGISTER_VALUE:
            raise InvalidSketch(f"has a minimum register value of {cur_min}; hashing never sets more than "
                                f"{MAX_REGISTER_VALUE}")
        if aux_count:
            if header.tgt_type != "HLL_4":
                raise InvalidSketch(f"has an exception table on an {header.tgt_type} array; only HLL_4 has one")
            if aux_count > k:
                raise InvalidSketch(f"claims {aux_count} register exceptions for {k} registers")
            lg_aux = data[4]
            if compact:
                _need(size, _HLL_START + array_bytes + 4 * aux_count, f"{aux_count} register exceptions")
            elif not 2 <= lg_aux <= lg_k or aux_count > _set_capacity(lg_aux):
                raise InvalidSketch(f"has an exception table of 2^{lg_aux} slots for {aux_count} exceptions")
            else:
                _need(size, _HLL_START + array_bytes + 4 * (1 << lg_aux), f"an exception table of 2^{lg_aux} slots")
        if header.tgt_type == "HLL_4":
            _check_exceptions(data, lg_k, aux_count, compact)
    return header


_AUX_TOKEN = 0xF
_BYTES_WITHOUT_TOKEN = bytes(b for b in range(256) if b & 0xF != _AUX_TOKEN and b >> 4 != _AUX_TOKEN)


def _check_exceptions(data: bytes, lg_k: int, aux_count: int, compact: bool) -> None:
    """An HLL_4 array marks a register too high for 4 bits with the token 15 and keeps its value in an exception
    table. datasketches-cpp looks every token up without checking: a token with no table is a null pointer
    (a segmentation fault), one missing from the table an exception. Each token must have its entry."""
    registers = data[_HLL_START:_HLL_START + (1 << (lg_k - 1))]
    marked = registers.translate(None, _BYTES_WITHOUT_TOKEN)  # usually empty or a few bytes: no per-byte loop
    tokens = sum((b & 0xF == _AUX_TOKEN) + (b >> 4 == _AUX_TOKEN) for b in marked)
    if tokens != aux_count:
        raise InvalidSketch(f"marks {tokens} registers as exceptions but has {aux_count} in its exception table")
    if not aux_count:
        return
    start = _HLL_START + len(registers)
    entries = struct.unpack_from(f"<{aux_count if compact else 1 << data[4]}I", data, start)
    slots = [entry & ((1 << lg_k) - 1) for entry in entries if entry]
    if len(slots) != aux_count or len(set(slots)) != aux_count:
        raise InvalidSketch(f"has an exception table that does not hold {aux_count} distinct registers")
    for slot in slots:
        if (registers[slot >> 1] >> (4 * (slot & 1))) & 0xF != _AUX_TOKEN:
            raise InvalidSketch(f"has an exception for register {slot}, which is not marked as one")


def _need(size: int, expected: int, what: str) -> None:
    if size < expected:
        raise InvalidSketch(f"is truncated: {what} needs {expected} bytes, got {size}")


def load(data: bytes) -> hll_sketch:
    """A stored sketch, deserialized once its structure is checked (``check_image``), or InvalidSketch."""
    check_image(data)
    try:
        return hll_sketch.deserialize(data)
    except (ValueError, IndexError, RuntimeError, MemoryError, TypeError) as exc:
        raise InvalidSketch(f"does not deserialize as an HLL sketch: {exc}") from exc


def coupons_of(data: bytes, header: SketchHeader) -> list[int]:
    """The coupons of a list- or set-mode image (``check_image`` first), or InvalidSketch when they disagree
    with its count: the library would take the count on trust."""
    compact = bool(data[5] & _COMPACT_FLAG)
    claimed = data[6] if header.mode == "list" else struct.unpack_from("<I", data, 8)[0]
    start = 8 if header.mode == "list" else 12
    slots = claimed if compact else (_LIST_CAPACITY if header.mode == "list" else 1 << data[4])
    coupons = [c for c in struct.unpack_from(f"<{slots}I", data, start) if c]
    if len(coupons) != claimed:
        raise InvalidSketch(f"claims {claimed} coupons but holds {len(coupons)}")
    if len(set(coupons)) != len(coupons):
        raise InvalidSketch("holds the same coupon more than once")
    return coupons


def coupon_image(coupons: list[int], header: SketchHeader) -> bytes:
    """A compact list- or set-mode image of distinct coupons, its counts right by construction (the library
    copies a list's count from the image, and an updatable set's with the slots where its coupons sit)."""
    tgt = {name: value for value, name in _TGT_NAMES.items()}[header.tgt_type]
    flags = _COMPACT_FLAG | (0 if coupons else _EMPTY_FLAG)
    body = struct.pack(f"<{len(coupons)}I", *coupons)
    if len(coupons) < _LIST_CAPACITY:
        return bytes([2, 1, HLL_FAMILY_ID, header.lg_k, 3, flags, len(coupons), tgt << 2]) + body
    lg_arr = max(_LG_INIT_SET_SIZE, (len(coupons) * 4 // 3).bit_length())
    return bytes([3, 1, HLL_FAMILY_ID, header.lg_k, lg_arr, flags, 0, tgt << 2 | 1]) + struct.pack(
        "<I", len(coupons)) + body


def serialize(sketch: hll_sketch, *, cold: bool = False) -> bytes:
    """Compact bytes of ``sketch`` in its storage form: HLL_8 (hot), or HLL_4 when ``cold``."""
    target = COLD_TYPE if cold else HOT_TYPE
    if sketch.tgt_type != target:
        merged = hll_union(sketch.lg_config_k)
        merged.update(sketch)
        sketch = merged.get_result(target)
    return bytes(sketch.serialize_compact())


def tgt_type_of(data: bytes) -> str:
    """The target type (HLL_4, HLL_6, HLL_8) a serialized HLL sketch says it has."""
    return _TGT_NAMES.get((data[7] >> 2) & 0b11, "unknown") if len(data) >= 8 else "unknown"


class Union:
    """A union fed one sketch (or its bytes) at a time, in ascending lgK; ``result()`` is the union.

    datasketches-cpp 5.2.0 (under the Python binding) drops what a union already holds when it downsamples
    to a smaller lgK, because a cached "is empty" flag goes stale; Java is right on the same bytes. Feeding
    the sketches in ascending lgK and reading the estimate after every update that may change the union's lgK
    refreshes that flag, and gives the same registers as Java (tests/governance/test_sketches.py checks it
    against exact counts). Callers that stream sketches from the database order them by lgK for this.

    A union copies its first HLL array whole when it is HLL_8, with the harmonic sums the image claims (HLL_4 and
    HLL_6 arrays are converted register by register, which recomputes them, as merging does). A mutated sum of
    zero read as an infinite count and took a group's figures down, so when a stored HLL_8 image is the only HLL
    array of a union it is merged a second time (``rebuilt``; about 0.6 ms at lgK 18).
    """

    def __init__(self, lg_max_k: int) -> None:
        self._union = hll_union(lg_max_k)
        self._first_lg_k: int | None = None
        self._last_lg_k = 0
        self._arrays = 0  # HLL-array inputs
        self._copied: hll_sketch | None = None  # the first of them, when it came from stored bytes

    def add(self, item: hll_sketch | bytes) -> None:
        stored = isinstance(item, (bytes, bytearray, memoryview))
        sketch = load(bytes(item)) if isinstance(item, (bytes, bytearray, memoryview)) else item
        lg_k = sketch.lg_config_k
        if lg_k < self._last_lg_k:
            raise ValueError(f"sketches must come in ascending lgK: {lg_k} after {self._last_lg_k}")
        self._last_lg_k = lg_k
        if _is_array(sketch):
            self._arrays += 1
            if self._arrays == 1 and stored and sketch.tgt_type == HOT_TYPE:
                self._copied = sketch
        try:
            self._union.update(sketch)
            # Reading the estimate refreshes the stale flag; only an input that may have changed the union's
            # lgK (the first, or one of another lgK) needs it, and it is cheap either way.
            if self._first_lg_k is None:
                self._first_lg_k = lg_k
                self._union.get_estimate()
            elif lg_k != self._first_lg_k:
                self._union.get_estimate()
        except (ValueError, IndexError, RuntimeError, MemoryError) as exc:  # e.g. a list with no free slot
            raise InvalidSketch(f"cannot be merged: {exc}") from exc

    def result(self) -> hll_sketch:
        if self._arrays == 1 and self._copied is not None:
            self._union.update(self._copied)  # merged, where it had been copied: its sums are now recomputed
            self._union.get_estimate()
        return self._union.get_result(HOT_TYPE)


def _is_array(sketch: hll_sketch) -> bool:
    """Whether a sketch is in HLL (register array) mode: its compact size is at least its array's (a list or set
    of the same lgK is always smaller, at most 12 + 3/8 of 2^lgK bytes)."""
    tgt = _TGT_NAMES[{tgt_hll_type.HLL_4: 0, tgt_hll_type.HLL_6: 1, tgt_hll_type.HLL_8: 2}[sketch.tgt_type]]
    return sketch.get_compact_serialization_bytes() >= _HLL_START + _hll_array_bytes(tgt, sketch.lg_config_k)


def union(sketches: Iterable[hll_sketch | bytes], lg_max_k: int) -> hll_sketch:
    """The union of sketches or their bytes (checked by ``load``). Its lgK is the smallest of ``lg_max_k`` and
    the inputs'."""
    items = [bytes(item) if isinstance(item, (bytearray, memoryview)) else item for item in sketches]
    items.sort(key=lambda item: item[3] if isinstance(item, bytes) and len(item) > 3 else _lg_k_of(item))
    merged = Union(lg_max_k)
    for item in items:
        merged.add(item)
    return merged.result()


def _lg_k_of(item: hll_sketch | bytes) -> int:
    return item.lg_config_k if isinstance(item, hll_sketch) else 0  # bytes too short for a header: load refuses


def empty(lg_k: int) -> hll_sketch:
    return hll_sketch(lg_k, HOT_TYPE)


def rebuilt(sketch: hll_sketch, lg_max_k: int) -> hll_sketch:
    """``sketch`` (HLL_8, at most ``lg_max_k``) with every derived field recomputed from its registers.

    A union copies its first HLL-array input whole, with the harmonic sums, minimum and count at the minimum
    that the image claims, and a copied sum of zero reads as an infinite count. Merging the sketch a second
    time goes register by register, after which DataSketches recomputes those fields.
    """
    merged = hll_union(min(lg_max_k, sketch.lg_config_k))
    merged.update(sketch)
    merged.update(sketch)
    merged.get_estimate()  # recomputes them (and refreshes the stale flag, see Union)
    return merged.get_result(HOT_TYPE)


_VALID_REGISTERS = bytes(range(MAX_REGISTER_VALUE + 1))


def impossible_register(sketch: hll_sketch) -> int | None:
    """The largest register value of an HLL-array sketch when it is above MAX_REGISTER_VALUE, else None.

    Such values come only from a forged or corrupted image (an HLL_4 minimum shifted past 49, say). Lists and
    sets hold coupons, whose 6-bit values cannot exceed 63."""
    image = serialize(sketch)  # compact HLL_8: in HLL mode, one byte per register from byte 40
    if image[7] & 0b11 != 2:
        return None
    registers = image[_HLL_START:_HLL_START + (1 << sketch.lg_config_k)]
    if not registers.translate(None, _VALID_REGISTERS):  # all within range, found without a per-byte loop
        return None
    return max(registers)


THRESHOLD = DEFAULT_MAU_THRESHOLD  # the licences' monthly active users limit, for the figures in messages


def interval_at(lg_k: int, count: int = THRESHOLD) -> tuple[int, int]:
    """The 95% interval DataSketches gives a merged lgK ``lg_k`` sketch that reads ``count``."""
    low = count / (1 + hll_union.get_rel_err(False, True, lg_k, NUM_STD_DEV))
    high = count / (1 + hll_union.get_rel_err(True, True, lg_k, NUM_STD_DEV))
    return math.floor(low), math.ceil(high)


def interval_note(lg_k: int, min_lg_k: int) -> str:
    """Why lgK ``lg_k`` is too coarse, in figures: its interval at the threshold against the minimum's."""
    def millions(bounds: tuple[int, int]) -> str:
        return f"{bounds[0] / 1e6:,.1f}M to {bounds[1] / 1e6:,.1f}M"

    return (f"at {THRESHOLD // 1_000_000}M users an lgK {lg_k} sketch's 95% interval is "
            f"{millions(interval_at(lg_k))} (lgK {min_lg_k}: {millions(interval_at(min_lg_k))})")


@dataclass(frozen=True)
class Estimate:
    estimate: int
    lower: int
    upper: int
    lg_k: int
    confidence: float = CONFIDENCE

    @property
    def relative_half_width(self) -> float:
        return (self.upper - self.lower) / 2 / self.estimate if self.estimate else 0.0


def estimate_of(sketch: hll_sketch) -> Estimate:
    """The count with its interval, or UnreadableSketch when the sketch gives no finite, ordered figures. Where
    the sketch is still exact (the interval is narrower than one person), all three figures are the same integer.

    An HLL-mode sketch is read with its out-of-order flag set, so DataSketches uses its composite estimator
    and the error bound of a merged sketch: the HIP estimator a union carries over from coupon-mode inputs is
    biased upwards (about +2% when 10^5-id sketches merge at lgK 18), and a forged HIP value in an uploaded
    sketch could otherwise set the figure.
    """
    if sketch.is_empty():
        return Estimate(0, 0, 0, sketch.lg_config_k)
    image = bytearray(sketch.serialize_updatable())
    if image[7] & 0b11 == 2:
        image[5] |= _OUT_OF_ORDER_FLAG
        sketch = hll_sketch.deserialize(bytes(image))
    value = sketch.get_estimate()
    low, high = sketch.get_lower_bound(NUM_STD_DEV), sketch.get_upper_bound(NUM_STD_DEV)
    if not (math.isfinite(value) and math.isfinite(low) and math.isfinite(high)) or not 0 <= low <= value <= high:
        raise UnreadableSketch(f"gives no usable count (estimate {value!r}, interval {low!r} to {high!r})")
    if high - low < 1:
        exact = round(value)
        return Estimate(exact, exact, exact, sketch.lg_config_k)
    return Estimate(round(value), math.floor(low), math.ceil(high), sketch.lg_config_k)


def stored_estimate(data: bytes) -> Estimate:
    """The figure of one stored sketch, read from its registers (``rebuilt``), or InvalidSketch
    (UnreadableSketch) saying why it cannot be one: it does not deserialize, gives no finite count, or counts
    more people than there are."""
    sketch = load(data)
    estimate = estimate_of(rebuilt(sketch, sketch.lg_config_k))
    if estimate.estimate > WORLD_POPULATION:
        raise UnreadableSketch(f"counts {estimate.estimate:,} distinct users, more than the world's population "
                               f"({WORLD_POPULATION:,})")
    return estimate


def sound_union(images: dict[K, bytes], lg_max_k: int) -> tuple[hll_sketch, Estimate, dict[K, str]]:
    """The union of stored sketches and its estimate, leaving out any that cannot be read; with the reasons.

    The union of everything is tried first (the only cost when all is well). When it cannot be read, or counts
    more people than there are, each sketch is read on its own (``stored_estimate``); if each reads but their
    union still does not, they are added one at a time and any that breaks the union is left out. A finite
    union of readable sketches is the figure, however large.
    """
    merged: hll_sketch | None = None
    estimate: Estimate | None = None
    try:
        merged = union(images.values(), lg_max_k)
        estimate = estimate_of(merged)
        if estimate.estimate <= WORLD_POPULATION:
            return merged, estimate, {}
    except InvalidSketch:
        pass
    unreadable: dict[K, str] = {}
    for key, data in images.items():
        try:
            stored_estimate(data)
        except InvalidSketch as exc:
            unreadable[key] = str(exc)
    if not unreadable and merged is not None and estimate is not None:
        return merged, estimate, {}
    kept: list[bytes] = []
    for key, data in images.items():
        if key in unreadable:
            continue
        try:
            estimate_of(union([*kept, data], lg_max_k))
        except InvalidSketch as exc:
            unreadable[key] = f"its union with the other sketches of the period cannot be read: {exc}"
        else:
            kept.append(data)
    merged = union(kept, lg_max_k)
    return merged, estimate_of(merged), unreadable


def sliding_unions(days: Sequence[hll_sketch], window: int, lg_max_k: int) -> list[hll_sketch]:
    """For each position i, the union of days[max(0, i - window + 1) .. i].

    Van Herk / Gil-Werman: prefix unions within blocks of ``window`` days and suffix unions within the same
    blocks make every window one union of a suffix and a prefix, so a series of n days costs about 3n unions
    instead of n x window.
    """
    n = len(days)
    prefix: list[hll_sketch] = []
    for i in range(n):
        prefix.append(days[i] if i % window == 0 else union([prefix[i - 1], days[i]], lg_max_k))
    suffix: list[hll_sketch | None] = [None] * n
    for i in range(n - 1, -1, -1):
        block_end = i == n - 1 or (i + 1) % window == 0
        suffix[i] = days[i] if block_end else union([days[i], suffix[i + 1]], lg_max_k)  # type: ignore[list-item]
    result = []
    for i in range(n):
        start = i - window + 1
        if start <= 0:  # the window reaches back to day 0, which lies in the first block with day i
            result.append(prefix[i])
            continue
        if start % window == 0:
            result.append(prefix[i])
        else:
            result.append(union([suffix[start], prefix[i]], lg_max_k))  # type: ignore[list-item]
    return result

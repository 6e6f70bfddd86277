"""The compact stored form of a label snapshot (pure, no I/O).

It used to be JSON; it is now a fixed binary record, most of a user's bytes in
Redis being these (BENCHMARKS.md, "memory"). The old JSON form still decodes,
so snapshots written before stay readable; a snapshot that the binary form
cannot hold (features in an order no layout knows) is written as JSON, as before.

Label snapshot, binary (little-endian)::

    u8  0x02, u8 layout (an index into LAYOUTS, the vector's key order)
    f64 taken_at, f32 raw, f32 risk
    2 bits per feature, in the layout's order, packed 4 to a byte (first
        feature in the low bits): 0 = zero, 1 = a whole number 1..255,
        2 = float16, 3 = float32 (beyond float16's range)
    the values of the features not zero, in the same order: u8, f16 or f32

The user id is the key's, the day is ``taken_at``'s. Most features are
counts (zero or small), so a snapshot is ~60 bytes. Other values lose
precision to float16 (3 significant digits), which a scaled logistic model
does not notice. Never reorder FEATURES (:mod:`~services.scorer.core.feature_ids`)
or a layout: add at the end, or add a layout.
"""

from __future__ import annotations

import struct
from functools import lru_cache

import orjson

from services.common.errors import BROKEN_VALUE, UnreadableStored
from services.scorer.core.feature_ids import FEATURES
from services.scorer.core.labels import Snapshot, day_of

# Snapshot layouts: the vector's keys in order. Layout 1 is ``to_vector``'s
# with the default windows; layout 0 is the same before ``revenue_total``. Append only.
LAYOUTS: tuple[tuple[str, ...], ...] = (FEATURES[: FEATURES.index("revenue_total")], FEATURES)
_LAYOUT_ID = {names: i for i, names in enumerate(LAYOUTS)}

SNAPSHOT_MARK = 0x02
_F16_MAX = 65504.0

_SNAP_HEAD = struct.Struct("<BBdff")
_F16 = struct.Struct("<e")
_F32 = struct.Struct("<f")


def encode_snapshot(snap: Snapshot) -> bytes:
    """The stored form of a label snapshot.

    >>> from services.scorer.core.labels import take_snapshot
    >>> features = dict.fromkeys(FEATURES, 0.0) | {"events_7d": 12.0, "tenure_days": 40.5,
    ...     "revenue_90d": 1e6}
    >>> snap = take_snapshot("u1", features, taken_at=90_000.5, raw=0.25, risk=0.125)
    >>> packed = encode_snapshot(snap)
    >>> len(packed), decode_snapshot(packed, "u1") == snap
    (34, True)
    >>> decode_snapshot(orjson.dumps(snap.to_dict()), "u1") == snap  # the JSON form
    True
    """
    layout = _LAYOUT_ID.get(tuple(snap.features))
    if layout is None:
        return orjson.dumps(snap.to_dict())
    codes = bytearray((len(snap.features) + 3) // 4)
    values = bytearray()
    f16, f32 = _F16.pack, _F32.pack
    for i, v in enumerate(snap.features.values()):
        if not v:
            continue
        if 0 < v < 256 and v == int(v):
            code = 1
            values.append(int(v))
        elif -_F16_MAX <= v <= _F16_MAX:
            code = 2
            values += f16(v)
        else:
            code = 3
            values += f32(v)
        codes[i >> 2] |= code << (2 * (i & 3))
    head = _SNAP_HEAD.pack(SNAPSHOT_MARK, layout, snap.taken_at, snap.raw, snap.risk)
    return head + codes + values


def decode_snapshot(data: bytes, user_id: str) -> Snapshot:
    """A stored snapshot, binary or JSON (raw and risk come back as float32 values).

    Raises :class:`UnreadableStored` on bytes that are no snapshot.

    >>> decode_snapshot(b"\\x02\\x07", "u1")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.common.errors.UnreadableStored: stored label snapshot of 'u1' unreadable: ...
    """
    try:
        return _decode_snapshot(data, user_id)
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored label snapshot of {user_id!r} unreadable: {exc}") from None


def _decode_snapshot(data: bytes, user_id: str) -> Snapshot:
    if data[:1] != b"\x02":
        return Snapshot.from_dict(orjson.loads(data))
    _, layout, taken_at, raw, risk = _SNAP_HEAD.unpack_from(data)
    names = LAYOUTS[layout]
    start = _SNAP_HEAD.size
    end = start + (len(names) + 3) // 4
    values, present = _snapshot_plan(layout, data[start:end])
    features = dict.fromkeys(names, 0.0)
    features.update(zip(present, map(float, values.unpack_from(data, end)), strict=True))
    return Snapshot(user_id, taken_at, day_of(taken_at), features, raw, risk)


@lru_cache(maxsize=4096)
def _snapshot_plan(layout: int, codes: bytes) -> tuple[struct.Struct, tuple[str, ...]]:
    """How to read a snapshot's values: one struct for all of them, and their names.

    Few code strings occur (which features are non-zero, and how wide), so each
    is worked out once; a label then costs one ``unpack_from``.

    >>> _snapshot_plan(1, bytes([0b11100100]) + bytes(10))[1]
    ('tenure_days', 'events_1d', 'events_7d')
    """
    fmt, present = ["<"], []
    for i, name in enumerate(LAYOUTS[layout]):
        code = (codes[i >> 2] >> (2 * (i & 3))) & 3
        if code:  # 1: a whole number under 256 in a byte, 2: float16, 3: float32
            fmt.append("Bef"[code - 1])
            present.append(name)
    return struct.Struct("".join(fmt)), tuple(present)

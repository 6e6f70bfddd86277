"""The compact stored forms of a score record and a label snapshot (pure, no I/O).

Both used to be JSON; they are now fixed binary records, most of a user's
bytes in Redis being these (BENCHMARKS.md, "memory"). The old JSON forms
still decode, so entries written before stay readable; a record or snapshot
that a binary form cannot hold (a feature, band or stage this module does not
know) is written as JSON, as before.

Score record, binary (little-endian)::

    u8  0x01            (JSON starts with '{')
    u32 risk * 1e6      (the risk is rounded to 6 decimals anyway)
    u8  score, band, stage, tier    (indexes into BANDS, STAGES, TIERS; 255 = "")
    f64 updated_at
    u8  len, model version (ASCII)
    u8  reasons, then per reason: u8 feature id (FEATURES), i32 contribution * 1e4,
        and the value: i32 value * 1e4, or f64 when the id has bit 7 set

Label snapshot, binary::

    u8  0x02, u8 layout (an index into LAYOUTS, the vector's key order)
    f64 taken_at, f32 raw, f32 risk
    2 bits per feature, in the layout's order, packed 4 to a byte (first
        feature in the low bits): 0 = zero, 1 = a whole number 1..255,
        2 = float16, 3 = float32 (beyond float16's range)
    the values of the features not zero, in the same order: u8, f16 or f32

Alert-policy state (``AlertState``), binary::

    u8  0x03, u8 band, u8 flags (1 armed, 2 last alert, 4 base score, 8 base time)
    f32 last score, f64 last score time, then f64 last alert time, f32 base
    score, f64 base time when their flags are set

The user id is the key's, the day is ``taken_at``'s. Most features are
counts (zero or small), so a snapshot is ~60 bytes. Other values lose
precision to float16 (3 significant digits), which a scaled logistic model
does not notice. Never reorder FEATURES or a layout: add at the end, or add a
layout.
"""

from __future__ import annotations

import math
import struct
from functools import lru_cache
from typing import Any

import orjson

from services.common.errors import BROKEN_VALUE, UnreadableStored
from services.scorer.core.labels import Snapshot, day_of
from services.scorer.core.policy import BANDS, AlertState
from services.scorer.core.segments import STAGES, TIERS

# Feature ids of the stored forms. Append only.
FEATURES: tuple[str, ...] = (
    "recency_days",
    "tenure_days",
    "events_1d",
    "events_7d",
    "events_30d",
    "events_90d",
    "active_days_1d",
    "active_days_7d",
    "active_days_30d",
    "active_days_90d",
    "sessions_30d",
    "mean_session_s",
    "distinct_features_30d",
    "purchases_30d",
    "purchases_90d",
    "revenue_30d",
    "revenue_90d",
    "is_paid",
    "payment_failures_30d",
    "trend_7d_vs_30d",
    "sessions_change",
    "support_tickets_30d",
    "complaints_30d",
    "downgrades_90d",
    "uninstalled",
    "winback_sent_90d",
    "winback_responded_90d",
    "explicit_churn",
    "days_since_return",
    "active_days_total",
    "purchases_total",
    "active_span_days",
    "mean_gap_days",
    "recency_vs_gap",
    "revenue_total",
)
_FEATURE_ID = {name: i for i, name in enumerate(FEATURES)}

# Snapshot layouts: the vector's keys in order. Layout 1 is ``to_vector``'s
# with the default windows; layout 0 is the same before ``revenue_total``. Append only.
LAYOUTS: tuple[tuple[str, ...], ...] = (FEATURES[: FEATURES.index("revenue_total")], FEATURES)
_LAYOUT_ID = {names: i for i, names in enumerate(LAYOUTS)}

RECORD_MARK = 0x01
SNAPSHOT_MARK = 0x02
_NONE = 255
_F16_MAX = 65504.0
_I32 = 2**31 - 1

_HEAD = struct.Struct("<BIBBBBd")
_REASON = struct.Struct("<Bi")
_I32S = struct.Struct("<i")
_F64 = struct.Struct("<d")
_SNAP_HEAD = struct.Struct("<BBdff")
_F16 = struct.Struct("<e")
_F32 = struct.Struct("<f")

_BAND_ID = {b: i for i, b in enumerate(BANDS)}
_STAGE_ID = {s: i for i, s in enumerate(STAGES)}
_TIER_ID = {t: i for i, t in enumerate(TIERS)}


def _index(table: dict[str, int], value: Any) -> int | None:
    if value == "" or value is None:
        return _NONE
    return table.get(value)


def encode_record(record: dict[str, Any]) -> bytes:
    """The stored form of a score record (the dict ``decode_record`` gives back).

    >>> rec = {"risk": 0.734512, "score": 73, "band": "high", "stage": "active",
    ...        "tier": "low", "reasons": [["recency_days", 0.4123, 12.5]],
    ...        "model_version": "logreg-3-ab12cd34", "updated_at": 1767830400.125}
    >>> packed = encode_record(rec)
    >>> len(packed), decode_record(packed) == rec
    (45, True)
    >>> encode_record({**rec, "band": "purple"})[:1]  # unknown to this format: JSON
    b'{'
    """
    ids = [_index(t, record.get(k)) for t, k in ((_BAND_ID, "band"), (_STAGE_ID, "stage"))]
    ids.append(_index(_TIER_ID, record.get("tier")))
    version = str(record.get("model_version", "")).encode()
    reasons = record.get("reasons", [])
    score = record.get("score")
    risk = record.get("risk")
    if (
        None in ids
        or not isinstance(score, int)
        or not 0 <= score <= 254
        or not isinstance(risk, int | float)
        or not 0.0 <= risk <= 1.0
        or len(version) > 255
        or len(reasons) > 255
        or "updated_at" not in record
        or set(record) - _RECORD_KEYS
        or any(f not in _FEATURE_ID for f, _, _ in reasons)
    ):
        return orjson.dumps(record)
    out = [
        _HEAD.pack(RECORD_MARK, round(risk * 1e6), score, *ids, float(record["updated_at"])),
        bytes((len(version),)),
        version,
        bytes((len(reasons),)),
    ]
    for feature, contribution, value in reasons:
        c = max(-_I32, min(_I32, round(contribution * 1e4)))
        v = round(value * 1e4)
        fid = _FEATURE_ID[feature]
        if -_I32 <= v <= _I32 and v / 1e4 == value:
            out += [_REASON.pack(fid, c), _I32S.pack(v)]
        else:
            out += [_REASON.pack(fid | 0x80, c), _F64.pack(value)]
    return b"".join(out)


_RECORD_KEYS = frozenset(
    {"risk", "score", "band", "stage", "tier", "reasons", "model_version", "updated_at"}
)


def decode_record(data: bytes) -> dict[str, Any]:
    """A stored score record, binary or JSON, as a dict (reasons as [feature, c, v]).

    Raises :class:`UnreadableStored` (a ``ValueError``) on bytes that are no record.

    >>> decode_record(b"[1, 2]")
    Traceback (most recent call last):
    ...
    services.common.errors.UnreadableStored: stored score record unreadable: ...
    """
    try:
        return _decode_record(data)
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored score record unreadable: {exc}") from None


def _decode_record(data: bytes) -> dict[str, Any]:
    if data[:1] != b"\x01":
        out = orjson.loads(data)
        if not isinstance(out, dict):
            raise TypeError(f"a JSON {type(out).__name__}, not an object")
        return _checked(out)
    _, risk, score, band, stage, tier, updated = _HEAD.unpack_from(data)
    pos = _HEAD.size
    n = data[pos]
    version = data[pos + 1 : pos + 1 + n].decode()
    pos += 1 + n
    reasons = []
    count, pos = data[pos], pos + 1
    for _ in range(count):
        fid, c = _REASON.unpack_from(data, pos)
        pos += _REASON.size
        if fid & 0x80:
            (value,) = _F64.unpack_from(data, pos)
            pos += 8
        else:
            value = _I32S.unpack_from(data, pos)[0] / 1e4
            pos += 4
        reasons.append([FEATURES[fid & 0x7F], c / 1e4, value])
    return _checked(
        {
            "risk": risk / 1e6,
            "score": score,
            "band": BANDS[band] if band != _NONE else "",
            "stage": STAGES[stage] if stage != _NONE else "",
            "tier": TIERS[tier] if tier != _NONE else "",
            "reasons": reasons,
            "model_version": version,
            "updated_at": updated,
        }
    )


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _checked(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` if every value its readers use has its type (the API formats the time and
    the reasons of whatever decodes); ValueError otherwise."""
    updated: Any = record.get("updated_at")
    if not (_number(updated) and 0 <= updated < 1e11):
        raise ValueError(f"updated_at {updated!r} is no time")
    if not all(_number(record[k]) for k in ("risk", "score") if k in record):
        raise ValueError("risk or score is no number")
    if not all(isinstance(record[k], str) for k in _TEXT_KEYS if k in record):
        raise ValueError("band, stage, tier or model version is no text")
    reasons = record.get("reasons", [])
    if not isinstance(reasons, list) or not all(
        isinstance(r, list)
        and len(r) == 3
        and isinstance(r[0], str)
        and _number(r[1])
        and _number(r[2])
        for r in reasons
    ):
        raise ValueError("reasons are not [feature, contribution, value] triples")
    return record


_TEXT_KEYS = ("band", "stage", "tier", "model_version")


def record_stage(data: bytes | None) -> str | None:
    """The lifecycle stage a stored record names (None without a record).

    >>> record_stage(b'{"stage": "new"}'), record_stage(None)
    ('new', None)

    Raises :class:`UnreadableStored` as :func:`decode_record` does.
    """
    if not data:
        return None
    try:
        if data[:1] == b"\x01":
            stage = data[7]
            return STAGES[stage] if stage != _NONE else ""
        stage_of = orjson.loads(data).get("stage")
        if stage_of is not None and not isinstance(stage_of, str):
            raise TypeError(f"stage {stage_of!r} is no name")
        return stage_of
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored score record unreadable: {exc}") from None


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


_POLICY_HEAD = struct.Struct("<BBBfd")
_F64S = struct.Struct("<d")
POLICY_MARK = 0x03


def _f32_exact(value: float) -> bool:
    return bool(_F32.unpack(_F32.pack(value))[0] == value)


def encode_policy(state: AlertState) -> bytes:
    """The stored form of a user's alert-policy state (JSON when a value would not fit).

    >>> st = AlertState("high", False, 1767830400.5, 81, 1767830460.25, 40, 1767830000.0)
    >>> packed = encode_policy(st)
    >>> len(packed), decode_policy(packed) == st
    (35, True)
    >>> decode_policy(b'["low",true,null,8,1792505599.0,8,1792419199.0]').band  # JSON
    'low'
    """
    band = _BAND_ID.get(state.band)
    scores = [state.last_score] + ([] if state.base_score is None else [state.base_score])
    if band is None or not all(_f32_exact(float(x)) for x in scores):
        return orjson.dumps(
            [getattr(state, f) for f in ("band", "armed", "last_alert_ts", "last_score")]
            + [state.last_score_ts, state.base_score, state.base_ts]
        )
    flags = (
        state.armed
        | (state.last_alert_ts is not None) << 1
        | (state.base_score is not None) << 2
        | (state.base_ts is not None) << 3
    )
    out = [_POLICY_HEAD.pack(POLICY_MARK, band, flags, state.last_score, state.last_score_ts)]
    if state.last_alert_ts is not None:
        out.append(_F64S.pack(state.last_alert_ts))
    if state.base_score is not None:
        out.append(_F32.pack(state.base_score))
    if state.base_ts is not None:
        out.append(_F64S.pack(state.base_ts))
    return b"".join(out)


def decode_policy(data: bytes | None) -> AlertState | None:
    """A stored alert-policy state, binary or JSON; None without one.

    Raises :class:`UnreadableStored` (a ``ValueError``) on bytes that are no such state.

    >>> decode_policy(b"[1]")
    Traceback (most recent call last):
    ...
    services.common.errors.UnreadableStored: stored alert state unreadable: ...
    """
    if not data:
        return None
    try:
        return _decode_policy(data)
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored alert state unreadable: {exc}") from None


def _decode_policy(data: bytes) -> AlertState:
    if data[:1] != b"\x03":
        state = AlertState(*orjson.loads(data))
        numbers = (state.last_score, state.last_score_ts)
        maybe = (state.last_alert_ts, state.base_score, state.base_ts)
        if (
            state.band not in BANDS
            or not isinstance(state.armed, bool)
            or not all(isinstance(x, int | float) for x in numbers)
            or not all(x is None or isinstance(x, int | float) for x in maybe)
        ):
            raise ValueError(f"not an alert state: {data[:80]!r}")
        return state
    _, band, flags, last_score, last_ts = _POLICY_HEAD.unpack_from(data)
    if not (math.isfinite(last_score) and math.isfinite(last_ts)):
        raise ValueError("the last score or its time is not a number")
    pos = _POLICY_HEAD.size
    alert_ts = base_score = base_ts = None
    if flags & 2:
        alert_ts = _F64S.unpack_from(data, pos)[0]
        pos += 8
    if flags & 4:
        base_score = _F32.unpack_from(data, pos)[0]
        pos += 4
    if flags & 8:
        base_ts = _F64S.unpack_from(data, pos)[0]
    return AlertState(
        BANDS[band], bool(flags & 1), alert_ts, last_score, last_ts, base_score, base_ts
    )

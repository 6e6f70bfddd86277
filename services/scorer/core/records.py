"""The compact stored form of a score record (pure, no I/O).

It used to be JSON; it is now a fixed binary record, part of the user's one
string in Redis (BENCHMARKS.md, "memory"). The old JSON form still decodes, so
records written before stay readable; a record that the binary form cannot hold
(a feature, band, stage or tier this module does not know) is written as JSON,
as before.

Score record, binary (little-endian)::

    u8  0x01            (JSON starts with '{')
    u32 risk * 1e6      (the risk is rounded to 6 decimals anyway)
    u8  score, band, stage, tier    (indexes into BANDS, STAGES, TIERS; 255 = "")
    f64 updated_at
    u8  len, model version (ASCII)
    u8  reasons, then per reason: u8 feature id (feature_ids.FEATURES), i32
        contribution * 1e4, and the value: i32 value * 1e4, or f64 when the id has bit 7 set

Label snapshots and the alert-policy state have codecs of their own
(:mod:`~services.scorer.core.snapshot_codec`, :mod:`~services.scorer.core.policy_codec`).
"""

from __future__ import annotations

import math
import struct
from typing import Any

import orjson

from services.common.errors import BROKEN_VALUE, UnreadableStored
from services.scorer.core.feature_ids import FEATURES
from services.scorer.core.policy import BANDS
from services.scorer.core.segments import STAGES, TIERS

_FEATURE_ID = {name: i for i, name in enumerate(FEATURES)}

RECORD_MARK = 0x01
_NONE = 255
_I32 = 2**31 - 1

_HEAD = struct.Struct("<BIBBBBd")
_REASON = struct.Struct("<Bi")
_I32S = struct.Struct("<i")
_F64 = struct.Struct("<d")

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

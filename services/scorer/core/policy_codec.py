"""The compact stored form of a user's alert-policy state, ``AlertState`` (pure, no I/O).

It used to be JSON (a list of the state's fields); it is now a fixed binary
record. The old JSON form still decodes, so states written before stay
readable; a state that the binary form cannot hold (a band this module does not
know, or a score that float32 would round) is written as JSON, as before.

Alert-policy state, binary (little-endian)::

    u8  0x03, u8 band, u8 flags (1 armed, 2 last alert, 4 base score, 8 base time)
    f32 last score, f64 last score time, then f64 last alert time, f32 base
    score, f64 base time when their flags are set
"""

from __future__ import annotations

import math
import struct

import orjson

from services.common.errors import BROKEN_VALUE, UnreadableStored
from services.scorer.core.policy import BANDS, AlertState

_POLICY_HEAD = struct.Struct("<BBBfd")
_F64S = struct.Struct("<d")
_F32 = struct.Struct("<f")
POLICY_MARK = 0x03

_BAND_ID = {b: i for i, b in enumerate(BANDS)}


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

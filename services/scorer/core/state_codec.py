"""The compact bytes of a user's feature state in Redis, and back.

``encode_state`` packs a :class:`~services.scorer.core.features.UserState` into
MessagePack with times relative to ``last_seen``; ``decode_state`` reads every
format ever stored (1 and 2 as JSON, 3 and 4 as MessagePack); ``state_times``
reads three times off the bytes without building the state. The last event type
and the remembered event ids have encodings of their own, in ``state_fields.py``.
Nothing here does I/O.

>>> from datetime import datetime, UTC
>>> from services.common.events import UserEvent
>>> from services.scorer.core.features import FeatureSettings, update_features
>>> e = UserEvent("e1", "u1", "login", datetime(2026, 1, 1, 12, tzinfo=UTC))
>>> state = update_features(None, e, settings=FeatureSettings())
>>> decode_state(encode_state(state)) == state
True
"""

from __future__ import annotations

from typing import Any

import msgpack
import orjson

from services.common.errors import BROKEN_VALUE, UnreadableStored
from services.scorer.core.event_counts import (
    COMMON,
    EVENTS,
    N_COUNTERS,
    PURCHASES,
    REVENUE_C,
    ZEROS,
    Day,
)
from services.scorer.core.features import UserState
from services.scorer.core.state_fields import (
    pack_seen,
    type_code,
    type_name,
    unpack_seen,
    unpack_seen_base64,
)

# 2 added the lifetime counters; 3 is format 2's list in MessagePack, the seen ids as
# raw bytes, a well-known last type as its index in STORED_TYPES (~165 bytes a user
# instead of ~290); 4 adds the lifetime revenue. 1, 2 (JSON) and 3 still decode.
FORMAT_VERSION = 4


def encode_state(state: UserState) -> bytes:
    """Compact bytes for Redis: MessagePack of a packed list, times relative to ``last_seen``.

    The remembered event ids go as one blob (:func:`~.state_fields.pack_seen`).
    This is the scorer's hot path: it is written for speed.

    >>> from datetime import datetime, UTC
    >>> from services.common.events import UserEvent
    >>> from services.scorer.core.features import FeatureSettings, update_features
    >>> e = UserEvent("a", "u", "login", datetime(2026, 1, 5, tzinfo=UTC))
    >>> msgpack.unpackb(encode_state(update_features(None, e, settings=FeatureSettings())))[:5]
    [4, 1767571200, 0, 0, 0]
    """
    ls = state.last_seen
    items = sorted(state.days.items())
    base = prev = items[0][0] if items else 0
    rows: list[list[object]] = []
    for d, (counts, feats) in items:
        # Trailing zeros are implied; most days only use the first few counters.
        n = COMMON if counts[COMMON:] == ZEROS[COMMON:] else N_COUNTERS
        while n and not counts[n - 1]:
            n -= 1
        row: list[object] = [d - prev, *counts[:n]]
        if feats:  # a trailing list, only on the days that have features
            row.append(sorted(feats))
        rows.append(row)
        prev = d
    return _pack_state(
        [
            FORMAT_VERSION,
            ls,
            ls - state.first_seen,
            ls - state.last_active if state.last_active else -1,
            ls - state.engaged_at if state.engaged_at else -1,
            ls - state.churn_at if state.churn_at else -1,
            ls - state.uninstall_at if state.uninstall_at else -1,
            ls - state.signup_ts if state.signup_ts else -1,
            ls - state.plan_at if state.plan_at else -1,
            state.timezone or "",
            state.plan or "",
            type_code(state.last_type),
            base,
            rows,
            pack_seen(state.seen, ls // 3600),
            state.active_days_total,
            state.purchases_total,
            state.revenue_total_c,
        ]
    )


_pack_state = msgpack.Packer().pack


def decode_state(data: bytes | str) -> UserState:
    """Inverse of :func:`encode_state` (bytes, or text from a decoding Redis client).

    Raises :class:`UnreadableStored` (a ``ValueError``) on an unknown format
    version or bytes that are no state. Formats 1 and 2 (JSON) and 3 still
    decode; format 1 (before the lifetime counters): its active days are those
    in the kept history, its purchases the kept ones (lower bounds); formats
    1-3 (before the lifetime revenue): the kept days' revenue, likewise.

    >>> decode_state(b'[2,100,0,0,0,-1,-1,-1,-1,"","","login",0,[[0,1]],"",1,0]').last_seen
    100
    >>> decode_state(b'[9]')
    Traceback (most recent call last):
    ...
    services.common.errors.UnreadableStored: stored feature state unreadable: unknown format 9
    """
    try:
        return _decode_state(data)
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored feature state unreadable: {exc}") from None


def _unpack(data: bytes | str) -> tuple[bool, list[Any] | tuple[Any, ...]]:
    """Whether ``data`` is a JSON state (formats 1, 2), and its packed list; ValueError
    for an unknown format."""
    json = data[:1] in (b"[", "[")
    packed = orjson.loads(data) if json else msgpack.unpackb(data, use_list=False)
    version = packed[0] if isinstance(packed, list | tuple) and packed else None
    if version not in (1, 2, 3, FORMAT_VERSION):
        raise ValueError(f"unknown format {version!r}")
    return json, packed


def _decode_state(data: bytes | str) -> UserState:
    json, packed = _unpack(data)
    version = packed[0]
    _, ls, first, active, engaged, churn, uninstall, signup, plan_at = packed[:9]
    tz, plan, last_type, day, rows, seen_text = packed[9:15]
    days: dict[int, Day] = {}
    empty: frozenset[int] = frozenset()
    for row in rows:
        day += row[0]
        if type(row[-1]) in (list, tuple):
            days[day] = (tuple(row[1:-1]) + ZEROS[len(row) - 2 :], frozenset(row[-1]))
        else:
            days[day] = (tuple(row[1:]) + ZEROS[len(row) - 1 :], empty)
    hour_now = ls // 3600
    if json:
        seen = unpack_seen_base64(seen_text, hour_now)
    else:
        seen = unpack_seen(seen_text, hour_now)
        last_type = type_name(last_type)
    if version == 1:
        n_days = sum(1 for c, _ in days.values() if c[EVENTS])
        n_buys = sum(c[PURCHASES] for c, _ in days.values())
    else:
        n_days, n_buys = packed[15:17]
    revenue = packed[17] if version >= 4 else sum(c[REVENUE_C] for c, _ in days.values())
    return UserState(  # positional: this runs once per event on the hot path
        ls - first,
        ls,
        ls - active if active >= 0 else 0,
        ls - engaged if engaged >= 0 else 0,
        ls - churn if churn >= 0 else 0,
        ls - uninstall if uninstall >= 0 else 0,
        ls - signup if signup >= 0 else 0,
        ls - plan_at if plan_at >= 0 else 0,
        tz or None,
        plan or None,
        last_type,
        days,
        seen,
        n_days,
        n_buys,
        revenue,
    )


def state_times(data: bytes | str) -> tuple[int, int, int]:
    """``(last_seen, last_active, churn_at)`` of a stored state, without decoding its days.

    Label resolution needs only these three; a full :func:`decode_state` builds
    every day's counters and the remembered ids, several times the work.

    >>> from datetime import datetime, UTC
    >>> from services.common.events import UserEvent
    >>> from services.scorer.core.features import FeatureSettings, update_features
    >>> e = UserEvent("a", "u", "login", datetime(2026, 1, 5, tzinfo=UTC))
    >>> s = update_features(None, e, settings=FeatureSettings())
    >>> state_times(encode_state(s)) == (s.last_seen, s.last_active, s.churn_at)
    True
    """
    try:
        _, packed = _unpack(data)
        ls, active, churn = int(packed[1]), int(packed[3]), int(packed[5])
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored feature state unreadable: {exc}") from None
    return ls, ls - active if active >= 0 else 0, ls - churn if churn >= 0 else 0

"""The compact bytes of a user's feature state in Redis, and back.

``encode_state`` packs a :class:`~services.scorer.core.features.UserState` into
MessagePack with times relative to ``last_seen``; ``decode_state`` reads every
format ever stored (1 and 2 as JSON, 3 and 4 as MessagePack); ``state_times``
reads three times off the bytes without building the state. Nothing here does I/O.

>>> from datetime import datetime, UTC
>>> from services.common.events import UserEvent
>>> from services.scorer.core.features import FeatureSettings, update_features
>>> e = UserEvent("e1", "u1", "login", datetime(2026, 1, 1, 12, tzinfo=UTC))
>>> state = update_features(None, e, settings=FeatureSettings())
>>> decode_state(encode_state(state)) == state
True
"""

from __future__ import annotations

import base64
import itertools
import operator
import struct
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

# 2 added the lifetime counters; 3 is format 2's list in MessagePack, the seen ids as
# raw bytes, a well-known last type as its index in _STORED_TYPES (~165 bytes a user
# instead of ~290); 4 adds the lifetime revenue. 1, 2 (JSON) and 3 still decode.
FORMAT_VERSION = 4
# Event types stored as a number in format 3. Append only: the index is stored. Not
# events.KNOWN_TYPES: that set may grow in any order, these indexes never move, and a
# type missing here is stored by its name.
_STORED_TYPES = (
    "signup",
    "login",
    "session_start",
    "session_end",
    "page_view",
    "feature_used",
    "purchase",
    "subscription_started",
    "subscription_renewed",
    "plan_upgraded",
    "plan_downgraded",
    "subscription_cancelled",
    "payment_failed",
    "support_ticket",
    "complaint",
    "notification_opened",
    "uninstall",
    "account_deleted",
    "winback_sent",
    "winback_responded",
)
_STORED_TYPE_ID = {t: i for i, t in enumerate(_STORED_TYPES)}


def encode_state(state: UserState) -> bytes:
    """Compact bytes for Redis: MessagePack of a packed list, times relative to ``last_seen``.

    The remembered event ids go as one string: a marker byte, the 64-bit id
    hashes, then how many hours before ``last_seen`` each was, one byte each
    (``b``), or two when one is older than 255 hours (``h``, a lateness of
    over ten days). This is the scorer's hot path: it is written for speed.

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
    n_seen = len(state.seen)
    backs = list(map(operator.sub, itertools.repeat(ls // 3600, n_seen), state.seen.values()))
    ids = struct.pack(f"<{n_seen}Q", *state.seen)
    if not backs or (min(backs) >= 0 and max(backs) <= 255):
        seen = b"b" + ids + bytes(backs)
    else:
        seen = b"h" + ids + struct.pack(f"<{n_seen}H", *(min(max(b, 0), 65535) for b in backs))
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
            _STORED_TYPE_ID.get(state.last_type, state.last_type),
            base,
            rows,
            seen,
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
        pairs = struct.iter_unpack("<QH", base64.b64decode(seen_text))
        seen = {k: hour_now - back for k, back in pairs}
    else:
        seen = _decode_seen(seen_text, hour_now)
        last_type = _STORED_TYPES[last_type] if isinstance(last_type, int) else last_type
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


def _decode_seen(blob: bytes, hour_now: int) -> dict[int, int]:
    """The remembered ids of format 3: ``b``/``h``, the ids, then the hours back."""
    width = 1 if blob[:1] == b"b" else 2
    n = (len(blob) - 1) // (8 + width)
    ids = struct.unpack_from(f"<{n}Q", blob, 1)
    backs = blob[1 + 8 * n :] if width == 1 else struct.unpack_from(f"<{n}H", blob, 1 + 8 * n)
    return dict(zip(ids, map(operator.sub, itertools.repeat(hour_now, n), backs), strict=True))


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

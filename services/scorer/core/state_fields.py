"""Two fields of the stored feature state that have encodings of their own.

The last event type (:func:`type_code`, :func:`type_name`): from format 3 on, a
well-known type is stored as its index in ``STORED_TYPES``, any other by its
name. The remembered event ids, as one blob (:func:`pack_seen`,
:func:`unpack_seen`): a marker byte, the 64-bit id hashes, then how many hours
before ``last_seen`` each was; formats 1 and 2 stored them in base64
(:func:`unpack_seen_base64`). ``state_codec.py`` lays out the rest of the state
around these. Nothing here does I/O.
"""

from __future__ import annotations

import base64
import itertools
import operator
import struct

# Event types stored as a number in format 3. Append only: the index is stored. Not
# events.KNOWN_TYPES: that set may grow in any order, these indexes never move, and a
# type missing here is stored by its name.
STORED_TYPES = (
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
_STORED_TYPE_ID = {t: i for i, t in enumerate(STORED_TYPES)}


def type_code(name: str) -> int | str:
    """The stored form of an event type: its index in ``STORED_TYPES``, else its name.

    >>> type_code("login"), type_code("custom_event")
    (1, 'custom_event')
    """
    return _STORED_TYPE_ID.get(name, name)


def type_name(code: int | str) -> str:
    """Inverse of :func:`type_code`.

    >>> type_name(1), type_name("custom_event")
    ('login', 'custom_event')
    """
    return STORED_TYPES[code] if isinstance(code, int) else code


def pack_seen(seen: dict[int, int], hour_now: int) -> bytes:
    """The remembered ids (id hash -> hour seen) as one blob, hours relative to ``hour_now``.

    ``b`` then the ids then one byte per id for its hours back; ``h`` and two bytes
    each when one is older than 255 hours (a lateness of over ten days), clamped
    to 0-65535. This is on the scorer's hot path: it is written for speed.

    >>> pack_seen({7: 98}, 100)
    b'b\\x07\\x00\\x00\\x00\\x00\\x00\\x00\\x00\\x02'
    >>> unpack_seen(pack_seen({7: 98, 8: -300}, 100), 100)
    {7: 98, 8: -300}
    """
    n_seen = len(seen)
    backs = list(map(operator.sub, itertools.repeat(hour_now, n_seen), seen.values()))
    ids = struct.pack(f"<{n_seen}Q", *seen)
    if not backs or (min(backs) >= 0 and max(backs) <= 255):
        return b"b" + ids + bytes(backs)
    return b"h" + ids + struct.pack(f"<{n_seen}H", *(min(max(b, 0), 65535) for b in backs))


def unpack_seen(blob: bytes, hour_now: int) -> dict[int, int]:
    """The remembered ids of format 3: ``b``/``h``, the ids, then the hours back."""
    width = 1 if blob[:1] == b"b" else 2
    n = (len(blob) - 1) // (8 + width)
    ids = struct.unpack_from(f"<{n}Q", blob, 1)
    backs = blob[1 + 8 * n :] if width == 1 else struct.unpack_from(f"<{n}H", blob, 1 + 8 * n)
    return dict(zip(ids, map(operator.sub, itertools.repeat(hour_now, n), backs), strict=True))


def unpack_seen_base64(text: str, hour_now: int) -> dict[int, int]:
    """The remembered ids of formats 1 and 2: base64 of (id, hours back) pairs."""
    pairs = struct.iter_unpack("<QH", base64.b64decode(text))
    return {k: hour_now - back for k, back in pairs}

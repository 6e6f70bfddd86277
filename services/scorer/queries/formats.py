"""What the risk API shows: at-risk cursors, RFC 3339 times and score records.

Pure functions over values: the queries of this package read Redis and hand
what they found to these to become the API's answers.
"""

from __future__ import annotations

import base64
import binascii
import math
from datetime import UTC, datetime
from typing import Any

import orjson

from services.scorer.core.records import decode_record


class BadCursor(ValueError):
    """The at-risk cursor is not one this API handed out."""


def encode_cursor(risk: float, user_id: str) -> str:
    """An opaque at-risk cursor: the last risk and user seen.

    >>> decode_cursor(encode_cursor(0.25, "u-1"))
    (0.25, 'u-1')
    """
    return base64.urlsafe_b64encode(orjson.dumps([risk, user_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (risk, user) of a cursor; :class:`BadCursor` when it is not one of ours.

    >>> decode_cursor("nope")
    Traceback (most recent call last):
    ...
    services.scorer.queries.formats.BadCursor: cursor is not valid: pass next_cursor from the previous page
    """  # noqa: E501
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        risk, user_id = orjson.loads(raw)
        risk = float(risk)
        if not isinstance(user_id, str) or not math.isfinite(risk):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("cursor is not valid: pass next_cursor from the previous page") from None
    return risk, user_id


def rfc3339(ts: float) -> str:
    """
    >>> rfc3339(0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def public_record(record: bytes) -> dict[str, Any]:
    """The score record as the API shows it: reasons as objects, times as RFC 3339.

    >>> public_record(b'{"risk":0.7,"reasons":[["recency_days",0.4,12.0]],"updated_at":0}')
    {'risk': 0.7, 'reasons': [{'feature': 'recency_days', 'contribution': 0.4, 'value': 12.0}], 'updated_at': '1970-01-01T00:00:00Z'}
    """  # noqa: E501
    out = decode_record(record)
    out["reasons"] = [
        {"feature": f, "contribution": c, "value": v} for f, c, v in out.get("reasons", [])
    ]
    if "updated_at" in out:
        out["updated_at"] = rfc3339(float(out["updated_at"]))
    return out

"""The messages churnwatch writes: churn alerts, win-back actions, dead letters.

Each is a frozen dataclass whose ``to_dict()`` is the wire form of its schema
in ``schemas/`` (times as RFC 3339 with ``Z``) and whose ``from_dict()`` reads
an already schema-valid mapping back. ``tests/unit/test_schemas.py`` checks
that fields and schemas agree.

>>> seg = Segment(stage="at-risk", tier="high")
>>> Segment.from_dict(seg.to_dict()) == seg
True
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Self, get_args, get_origin, get_type_hints

from services.common.events import parse_time

SCHEMA_VERSION = 1
MAX_PAYLOAD_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; refuses naive datetimes.

    >>> from datetime import timedelta, timezone
    >>> format_time(datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))))
    '2026-01-02T03:04:05Z'
    """
    if value.tzinfo is None:
        raise ValueError(f"datetime {value.isoformat()} has no time zone; use an aware datetime")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _digest(*parts: str) -> str:
    # The separator cannot occur in ids, so ("a", "bc") and ("ab", "c") differ.
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def make_alert_id(user_id: str, band: str, occurred_at_bucket: int | str) -> str:
    """Deterministic alert id: the same user, band and time bucket give the same id.

    >>> a = make_alert_id("u-48213", "high", 20455)
    >>> len(a), a == make_alert_id("u-48213", "high", "20455")
    (24, True)
    >>> a == make_alert_id("u-48213", "critical", 20455)
    False
    """
    return _digest(user_id, band, str(occurred_at_bucket))


def make_action_id(alert_id: str, channel: str) -> str:
    """Deterministic action id: one alert and channel give one action.

    >>> make_action_id("a1", "email") == make_action_id("a1", "email")
    True
    >>> make_action_id("a1", "email") == make_action_id("a1", "sms")
    False
    """
    return _digest(alert_id, channel)


def _wire(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _wire(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, tuple | list):
        return [_wire(v) for v in value]
    return value


def _unwire(hint: Any, value: Any, path: str) -> Any:
    if hint is datetime:
        return parse_time(value, path=path)
    if hint is int:
        return int(value)  # JSON Schema counts 3.0 as an integer
    if isinstance(hint, type) and issubclass(hint, _Part):
        return hint.from_dict(value)
    if get_origin(hint) is tuple:
        return tuple(_unwire(get_args(hint)[0], v, path) for v in value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


class _Part:
    """Wire conversion driven by the dataclass fields, so a new field cannot be forgotten."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        out: dict[str, Any] = _wire(self)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Read an already schema-valid wire form; absent optional fields take their defaults."""
        hints = _HINTS.get(cls) or _HINTS.setdefault(cls, get_type_hints(cls))
        names = [f.name for f in fields(cls) if f.name in raw]  # type: ignore[arg-type]
        return cls(**{n: _unwire(hints[n], raw[n], n) for n in names})


class _Message(_Part):
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The wire form, with ``schema_version``."""
        return {"schema_version": SCHEMA_VERSION, **super().to_dict()}


@dataclass(frozen=True, slots=True)
class Reason(_Part):
    """A feature that pushes the risk up: name, label, contribution and value."""

    feature: str
    label: str
    contribution: float
    value: float


@dataclass(frozen=True, slots=True)
class Segment(_Part):
    """Lifecycle stage and value tier."""

    stage: str
    tier: str


@dataclass(frozen=True, slots=True)
class ChurnAlert(_Message):
    """A user's risk moved up into a high band or rose sharply (schema churn-alert v1)."""

    alert_id: str
    user_id: str
    risk: float
    score: int
    band: str
    trigger: str
    segment: Segment
    reasons: tuple[Reason, ...]
    model_version: str
    horizon_days: int
    occurred_at: datetime
    previous_band: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class WinbackAction(_Message):
    """What the notifier did about one alert on one channel (schema winback-action v1)."""

    action_id: str
    alert_id: str
    user_id: str
    channel: str
    playbook: str
    status: str
    at: datetime
    offer: str | None = None
    template: str | None = None
    reason: str | None = None


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every record on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class Record:
    """A raw Kafka record as a worker received it (what a dead letter's ``Source`` names)."""

    key: bytes | None
    value: bytes
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True, slots=True)
class Source(_Part):
    """Where a dead-lettered message came from; partition, offset and key are None for HTTP."""

    topic: str
    partition: int | None
    offset: int | None
    key: str | None


@dataclass(frozen=True, slots=True)
class DeadLetter(_Message):
    """A message churnwatch could not process, with the reason (schema dead-letter v1)."""

    reason: str
    stage: str
    source: Source
    payload: str
    at: datetime
    error_path: str = ""
    payload_encoding: str = "utf-8"
    truncated: bool = False

    def payload_bytes(self) -> bytes:
        """The original bytes (only the first 64 KiB when ``truncated``)."""
        if self.payload_encoding == "base64":
            return base64.b64decode(self.payload)
        return self.payload.encode("utf-8")


def dead_record(record: Record, reason: str | BaseException, *, stage: str) -> DeadLetter:
    """The dead letter of a Kafka record a worker refuses, naming where it came from."""
    return dead_letter(
        record.value,
        reason,
        stage=stage,
        topic=record.topic,
        partition=record.partition,
        offset=record.offset,
        key=record.key,
    )


def dead_letter(
    payload: bytes,
    reason: str | BaseException,
    *,
    stage: str,
    topic: str,
    partition: int | None,
    offset: int | None,
    key: bytes | str | None,
    error_path: str = "",
    at: datetime | None = None,
) -> DeadLetter:
    """Wrap a rejected message; an exception's ``path`` fills ``error_path`` when not given.

    >>> d = dead_letter(b"\\xff\\x00", "not JSON", stage="ingest", topic="user-events",
    ...                 partition=0, offset=7, key=b"u1")
    >>> d.payload, d.payload_encoding, d.payload_bytes()
    ('/wA=', 'base64', b'\\xff\\x00')
    """
    if isinstance(reason, BaseException):
        error_path = error_path or str(getattr(reason, "path", "") or "")
        reason = str(reason) or type(reason).__name__
    kept = payload[:MAX_PAYLOAD_BYTES]
    try:
        payload.decode("utf-8")
    except UnicodeDecodeError:
        text, encoding = base64.b64encode(kept).decode("ascii"), "base64"
    else:  # a cut may split a character; drop only that partial tail
        text, encoding = kept.decode("utf-8", errors="ignore"), "utf-8"
    if isinstance(key, bytes):
        key = key.decode("utf-8", errors="replace")
    key = key[:1024] if key is not None else None
    return DeadLetter(
        reason=(reason or "unspecified")[:MAX_REASON_CHARS],
        stage=stage,
        source=Source(topic=topic, partition=partition, offset=offset, key=key),
        payload=text,
        at=at or datetime.now(UTC),
        error_path=error_path[:256],
        payload_encoding=encoding,
        truncated=len(payload) > MAX_PAYLOAD_BYTES,
    )

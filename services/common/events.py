"""The user activity event (schema v1) as a Python value.

The JSON Schema in ``schemas/user-event.v1.json`` is the wire contract; this
module is the typed view the services compute with. ``tests/unit`` checks that
the two agree.

>>> e = parse_event({"event_id": "e1", "user_id": "u1", "type": "login",
...                  "occurred_at": "2026-01-02T03:04:05+01:00"})
>>> e.occurred_at.isoformat()
'2026-01-02T02:04:05+00:00'
>>> e.type, e.amount
('login', 0.0)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from services.common.errors import InvalidEvent

SCHEMA_VERSION = 1
# One encoded event at most; larger ones are refused at ingest and dead-lettered by
# the scorer (the dead-letter topic keeps the first 64 KiB of a refused message).
MAX_EVENT_BYTES = 64 * 1024

KNOWN_TYPES = frozenset(
    {
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
    }
)


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every event on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class UserEvent:
    """One user activity event, times always timezone-aware UTC."""

    event_id: str
    user_id: str
    type: str
    occurred_at: datetime
    received_at: datetime | None = None
    properties: dict[str, Any] = field(default_factory=dict)
    context: dict[str, Any] = field(default_factory=dict)

    # Event time as a UNIX timestamp (seconds): read many times per event on the
    # scorer's hot path, so computed once.
    ts: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        self.ts = self.occurred_at.timestamp()

    @property
    def amount(self) -> float:
        value = self.properties.get("amount", 0.0)
        return float(value) if isinstance(value, int | float) else 0.0


def parse_time(value: Any, *, path: str) -> datetime:
    """Parse an RFC 3339 timestamp with a zone into an aware UTC datetime.

    >>> parse_time("2026-03-01T00:00:00Z", path="occurred_at").isoformat()
    '2026-03-01T00:00:00+00:00'
    >>> parse_time("2026-03-01T00:00:00", path="occurred_at")
    Traceback (most recent call last):
    ...
    services.common.errors.InvalidEvent: occurred_at must carry a time zone (e.g. 'Z' or '+02:00')
    """
    if not isinstance(value, str):
        raise InvalidEvent(f"{path} must be an RFC 3339 string", path=path)
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        raise InvalidEvent(
            f"{path} is not an RFC 3339 timestamp: {value[:40]!r}", path=path
        ) from None
    if parsed.tzinfo is UTC:  # "Z" and "+00:00" parse to the UTC singleton: nothing to do
        return parsed
    if parsed.tzinfo is None:
        raise InvalidEvent(f"{path} must carry a time zone (e.g. 'Z' or '+02:00')", path=path)
    return parsed.astimezone(UTC)


def parse_event(raw: dict[str, Any]) -> UserEvent:
    """Build a :class:`UserEvent` from an already schema-valid mapping.

    Raises :class:`InvalidEvent` for what the schema cannot say (time zones).
    The event takes ``raw``'s properties and context as they are (no copies: the
    scorer makes one event per record, from a mapping it decoded itself).
    """
    received = raw.get("received_at")
    return UserEvent(
        str(raw["event_id"]),
        str(raw["user_id"]),
        str(raw["type"]),
        parse_time(raw["occurred_at"], path="occurred_at"),
        parse_time(received, path="received_at") if received else None,
        raw.get("properties") or {},
        raw.get("context") or {},
    )


def event_to_dict(event: UserEvent) -> dict[str, Any]:
    """The wire form of an event (inverse of :func:`parse_event`)."""
    out: dict[str, Any] = {
        "schema_version": SCHEMA_VERSION,
        "event_id": event.event_id,
        "user_id": event.user_id,
        "type": event.type,
        "occurred_at": event.occurred_at.isoformat().replace("+00:00", "Z"),
        "properties": event.properties,
        "context": event.context,
    }
    if event.received_at is not None:
        out["received_at"] = event.received_at.isoformat().replace("+00:00", "Z")
    return out


def check_size(value: bytes) -> None:
    """Refuse an encoded event over :data:`MAX_EVENT_BYTES`.

    >>> check_size(b"{}")
    >>> check_size(b"x" * (MAX_EVENT_BYTES + 1))  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.common.errors.InvalidEvent: event is 65537 bytes encoded, over the limit of 65536 ...
    """
    if len(value) > MAX_EVENT_BYTES:
        raise InvalidEvent(
            f"event is {len(value)} bytes encoded, over the limit of {MAX_EVENT_BYTES} bytes "
            "(64 KiB): keep large data out of properties"
        )

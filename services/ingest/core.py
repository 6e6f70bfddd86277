"""Pure request handling of the ingest service: parse, validate, stamp.

Nothing here talks to Kafka or HTTP; :mod:`services.ingest.events` does.

>>> items = parse_body(b'{"a": 1}\\n{"b": 2}\\n', "application/x-ndjson", max_events=10)
>>> items
[{'a': 1}, {'b': 2}]
>>> try:
...     parse_body(b'[1, 2', "application/json", max_events=10)
... except BadRequest as exc:
...     print(exc.status, exc)
400 body is not valid JSON: unexpected end of data: line 1 column 6 (char 5)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from services.common.errors import ChurnwatchError, InvalidEvent
from services.common.events import check_size, parse_time
from services.common.schemas import validate

JSON_TYPES = ("application/json",)
NDJSON_TYPES = ("application/x-ndjson", "application/ndjson", "application/jsonl")


class BadRequest(ChurnwatchError):
    """The request as a whole cannot be taken; ``status`` is the HTTP status."""

    def __init__(self, message: str, *, status: int = 400) -> None:
        super().__init__(message)
        self.status = status


def parse_body(body: bytes, content_type: str, *, max_events: int) -> list[Any]:
    """Decode one event, a JSON array of events, or NDJSON into a list."""
    media = content_type.split(";")[0].strip().lower()
    if media in NDJSON_TYPES:
        items = []
        for lineno, line in enumerate(body.splitlines(), start=1):
            if not line.strip():
                continue
            try:
                items.append(orjson.loads(line))
            except orjson.JSONDecodeError as exc:
                raise BadRequest(f"line {lineno} is not valid JSON: {exc}") from None
            if len(items) > max_events:
                break
    elif media in JSON_TYPES or media == "":
        try:
            decoded = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise BadRequest(f"body is not valid JSON: {exc}") from None
        items = decoded if isinstance(decoded, list) else [decoded]
    else:
        raise BadRequest(
            f"content type {media!r} is not supported: send application/json "
            "(one event or an array) or application/x-ndjson (one event per line)",
            status=415,
        )
    if len(items) > max_events:
        raise BadRequest(
            f"too many events in one request: the limit is {max_events}; split the batch",
            status=413,
        )
    return items


@dataclass
class Checked:
    """The outcome of checking a batch: what can be produced and what cannot."""

    records: list[tuple[int, bytes, bytes]] = field(default_factory=list)  # index, key, value
    event_ids: list[str] = field(default_factory=list)
    rejected: list[dict[str, Any]] = field(default_factory=list)


def stamp_now(now: datetime | None = None) -> str:
    """``received_at`` as churnwatch writes it: UTC, milliseconds, ``Z``.

    >>> stamp_now(datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC))
    '2026-01-02T03:04:05.678Z'
    """
    return (now or datetime.now(UTC)).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def prepare_event(item: Any, stamp: str) -> tuple[bytes, bytes]:
    """Validate one event, stamp it, and encode it as a Kafka (key, value) pair.

    Raises :class:`InvalidEvent` naming the first field to fix. ``item`` is
    stamped in place (``received_at``, ``schema_version``).

    >>> event = {"event_id": "e1", "user_id": "u1", "type": "login",
    ...          "occurred_at": "2026-01-01T00:00:00Z"}
    >>> key, value = prepare_event(event, "2026-01-01T00:00:01.000Z")
    >>> key, orjson.loads(value)["received_at"]
    (b'u1', '2026-01-01T00:00:01.000Z')
    >>> try:
    ...     prepare_event({"user_id": "u1"}, "2026-01-01T00:00:01.000Z")
    ... except InvalidEvent as exc:
    ...     print(exc.path)
    event_id
    """
    errors = validate("user-event", item)
    if errors:
        first = errors[0]
        raise InvalidEvent(first.message, path=first.path)
    # The schema's pattern cannot see impossible dates such as 2026-02-30.
    parse_time(item["occurred_at"], path="occurred_at")
    item["received_at"] = stamp
    item.setdefault("schema_version", 1)
    value = orjson.dumps(item)
    check_size(value)
    return item["user_id"].encode(), value


def check_items(items: Sequence[Any], *, now: datetime | None = None) -> Checked:
    """Validate each item against the event schema and stamp ``received_at``.

    >>> out = check_items([{"event_id": "e1", "user_id": "u1", "type": "login",
    ...                     "occurred_at": "2026-01-01T00:00:00Z"}, {"user_id": "u2"}],
    ...                   now=datetime(2026, 1, 1, tzinfo=UTC))
    >>> [(i, k) for i, k, _ in out.records]
    [(0, b'u1')]
    >>> out.rejected[0]["index"], out.rejected[0]["path"]
    (1, 'event_id')
    """
    stamp = stamp_now(now)
    out = Checked()
    records, event_ids = out.records, out.event_ids
    for index, item in enumerate(items):
        try:
            key, value = prepare_event(item, stamp)
        except InvalidEvent as exc:
            out.rejected.append({"index": index, "path": exc.path, "message": exc.message})
            continue
        records.append((index, key, value))
        event_ids.append(item["event_id"])
    return out

"""Dead letters: what churnwatch could not process, with the reason and where it came from.

:func:`dead_letter` wraps a refused payload as a :class:`DeadLetter` (schema
dead-letter v1), keeping at most its first 64 KiB; :func:`dead_record` does it
for a :class:`Record`, a raw Kafka record as a worker received it. They are
apart from the alert and action types (:mod:`services.common.messages`, which
re-exports them): another topic's schema, made on the services' error paths.
"""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import UTC, datetime

from services.common.wire import _Message, _Part

MAX_PAYLOAD_BYTES = 64 * 1024
MAX_REASON_CHARS = 1000


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

"""A micro-batch's first step: its records decoded, validated and grouped by user.

Decoding (:func:`decode_batch`) does no I/O and keeps no state. The live
worker's consumer runs it ahead, on the next batch while the one before is
handled (:class:`ScoreAheadStep`), and starts scoring that batch's users then
(:meth:`BatchScorer.score_ahead <services.scorer.pipeline.BatchScorer.score_ahead>`):
:class:`Ahead` and :class:`Scored` are what that leaves with the decoded batch
for its turn.
"""

from __future__ import annotations

import asyncio
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import orjson

from services.common.errors import InvalidEvent
from services.common.events import UserEvent, check_size, parse_event
from services.common.messages import DeadLetter, Record, dead_record
from services.common.schemas import validate
from services.scorer.outcome import Outcome
from services.scorer.rows import UserWrite

if TYPE_CHECKING:
    from services.scorer.pipeline import BatchScorer


def decode_record(record: Record) -> UserEvent:
    """Bytes → validated event, or InvalidEvent saying what is wrong."""
    if not record.value:
        raise InvalidEvent("empty message")
    check_size(record.value)
    try:
        raw = orjson.loads(record.value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"not valid JSON: {exc}") from None
    if isinstance(raw, dict) and raw.get("schema_version", 1) != 1:
        raise InvalidEvent(
            f"unknown schema_version {raw.get('schema_version')!r}; this scorer reads 1",
            path="schema_version",
        )
    errors = validate("user-event", raw)
    if errors:
        raise InvalidEvent(errors[0].message, path=errors[0].path)
    return parse_event(raw)


@dataclass(slots=True)
class Decoded:
    """A micro-batch's events by user, in arrival order, and the records refused;
    ``ahead``: those of its users scored while the batch before was handled."""

    by_user: dict[str, list[tuple[Record, UserEvent]]]
    dead: list[DeadLetter]
    ahead: Ahead | None = None


@dataclass(slots=True)
class Scored:
    """Some users of a batch scored: what to write, and what they add to the batch's outcome
    (``users``: every user scored, also those whose events changed nothing and write
    nothing)."""

    users: frozenset[str]
    writes: list[UserWrite]
    out: Outcome


@dataclass(slots=True)
class Ahead:
    """Users scored before their batch's turn, and the scorer's ``epoch`` when their rows
    were read; ``go``: set when the CPU is theirs (the batch in hand waits on its write)."""

    scored: asyncio.Future[Scored]
    epoch: int
    go: asyncio.Event


def decode_batch(records: list[Record]) -> Decoded:
    """Decode and validate a micro-batch, grouping its events by user (no I/O, no state).

    >>> good = Record(b"u", b'{"event_id": "e", "user_id": "u", "type": "login",'
    ...               b' "occurred_at": "2026-01-02T03:04:05Z"}', "t", 0, 0)
    >>> out = decode_batch([good, Record(None, b"{", "t", 0, 1)])
    >>> list(out.by_user), [d.source.offset for d in out.dead]
    (['u'], [1])
    """
    by_user: dict[str, list[tuple[Record, UserEvent]]] = defaultdict(list)
    dead = []
    for record in records:
        try:
            event = decode_record(record)
        except InvalidEvent as exc:
            dead.append(dead_record(record, exc, stage="scorer"))
            continue
        by_user[event.user_id].append((record, event))
    return Decoded(by_user, dead)


class ScoreAheadStep:
    """The consumer's ``prepare`` step for a live worker: decode the next batch and start
    scoring its users (:meth:`~services.scorer.pipeline.BatchScorer.score_ahead`) while the
    one before is handled.

    The batch prepared before this one is the batch in hand (the consumer handles
    one at a time, in order, and prepares the next before it waits for the one in
    hand), so its users are left to be read and scored at their turn. ``scorer``
    gives the worker's scorer, or None before it is ready (then the batch is only
    decoded).
    """

    def __init__(self, scorer: Callable[[], BatchScorer | None]) -> None:
        self.scorer = scorer
        self._in_hand: set[str] = set()

    def __call__(self, records: list[Record]) -> Decoded:
        decoded = decode_batch(records)
        scorer = self.scorer()
        if scorer is not None:
            scorer.score_ahead(decoded, skip=self._in_hand)
        self._in_hand = set(decoded.by_user)
        return decoded

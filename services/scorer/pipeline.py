"""One micro-batch through the scorer: decode → features → score → policy → write.

This module holds the orchestration and nothing that knows Kafka or Faust: the
worker's batch handler (:mod:`services.scorer.app`) hands it raw records and publishes what it
returns. The store is a port, so the fast tests run it on a fake.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

import orjson

from services.common.clock import Clock
from services.common.errors import InvalidEvent, StoreUnavailable, UnreadableStored
from services.common.events import UserEvent, check_size, parse_event
from services.common.messages import ChurnAlert, DeadLetter, Record, dead_record
from services.common.schemas import validate
from services.scorer.core.features import FeatureSettings, fold_events
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.rows import StoredUser, UserWrite
from services.scorer.scoring import (
    ScoringCore,
    needs_rescore,
    previous_stage,
    readable,
    rescore_interval,
)
from services.scorer.user_writes import cohort_marks, user_write, utc_day, winback_outcome

log = logging.getLogger("churnwatch.scorer")


class UserStore(Protocol):
    async def load(self, user_ids: list[str]) -> dict[str, StoredUser]: ...

    async def save(self, writes: list[UserWrite]) -> None: ...


@dataclass
class Outcome:
    alerts: list[ChurnAlert] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    events: int = 0
    users: int = 0
    duplicates: int = 0
    newest_ts: float = 0.0  # newest event time in the batch (for the event-time lag)
    bands: Counter[str] = field(default_factory=Counter)
    redis_s: dict[str, float] = field(default_factory=dict)  # round-trip time by operation
    winbacks: Counter[str] = field(default_factory=Counter)  # "<playbook>:<group>" won back
    # Stored values that could not be read, by kind: "state" (that user's events were
    # dead-lettered), "policy" or "record" (dropped: see scoring.readable).
    unreadable: Counter[str] = field(default_factory=Counter)

    def add(self, part: Outcome) -> None:
        """Fold in what some of the batch's users gave (their events are counted already)."""
        self.alerts += part.alerts
        self.dead += part.dead
        self.duplicates += part.duplicates
        self.unreadable.update(part.unreadable)
        self.newest_ts = max(self.newest_ts, part.newest_ts)
        self.bands.update(part.bands)
        self.winbacks.update(part.winbacks)


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
    scoring its users (:meth:`BatchScorer.score_ahead`) while the one before is handled.

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


class BatchScorer:
    def __init__(
        self,
        *,
        store: UserStore,
        core: ScoringCore,
        clock: Clock,
        features: FeatureSettings,
        rescore_every_s: float = 0.0,
        rescore_spread: float = 0.0,
        winback_window_s: float = 14 * 86_400,
    ) -> None:
        self.store = store
        self.core = core
        self.clock = clock
        self.features = features
        self.rescore_every_s = rescore_every_s
        self.rescore_spread = rescore_spread
        self.winback_window_s = winback_window_s
        # Bumped after every write to users' rows outside the batches (the live sweep's
        # re-scores): users scored ahead from rows read before it are scored again.
        self.epoch = 0
        self._next: Ahead | None = None  # the latest batch's, let go when one's write is out
        # No batch in hand, or it has sent its write: the next batch prepared may be
        # scored at once (it takes this; a later one waits for that one's write).
        self._free = True

    def score_ahead(self, decoded: Decoded, *, skip: set[str]) -> None:
        """Start reading the rows of ``decoded``'s users, but those in ``skip``, and scoring them.

        The consumer decodes the next batch while the one in hand is handled,
        which spends a third of its time waiting on Redis (its read, and its
        write, which Redis runs on its own core). Scoring the next batch's users
        during that write fills the wait with work. ``skip`` is the
        batch in hand: its users' rows change when it saves, so they are read
        and scored at their turn. Rows of other users change only by the live
        sweep's re-scores (they take ``state_lock`` and bump :attr:`epoch`;
        users scored from rows read before are then scored again) or by other
        processes (the notifier's win-back mark, an erase through the API),
        whose writes a batch could already miss between its read and its
        write; scoring ahead widens that window by the batch before's handling.
        What is scored ahead is written with its batch, or dropped with it.

        The rows are read at once, but the scoring waits for ``go``: set when
        the batch in hand has sent its write (scored then, the users fill the
        write's wait rather than hold up the batch's own work), at the latest
        when that batch is done, or when a later batch is prepared (this one
        was dropped), or at this batch's turn. Under light load the batch in
        hand may be past its write when this one is prepared (or there is
        none): its users are then scored as soon as their rows are in. They
        are scored at the clock's time when ``go`` is set, a batch's handling
        earlier than at their turn. A batch dropped after its users were
        scored has fed them to the RFM quantiles' sample, as will their
        scoring by the batch's next owner (a few users more in a running
        sample; the same happens to any redelivered batch).
        """
        if self._next is not None:
            self._next.go.set()  # a batch prepared and never handled: let its task end
        users = [u for u in decoded.by_user if u not in skip]
        if users:
            go = asyncio.Event()
            if self._free:
                self._free = False
                go.set()
            scored = asyncio.ensure_future(self._score_read(decoded.by_user, users, go))
            scored.add_done_callback(_quiet)  # a batch dropped by a rebalance never awaits it
            decoded.ahead = self._next = Ahead(scored, self.epoch, go)

    async def _score_read(
        self,
        by_user: dict[str, list[tuple[Record, UserEvent]]],
        users: list[str],
        go: asyncio.Event,
    ) -> Scored:
        rows = await self.store.load(users)
        await go.wait()
        out = Outcome()
        writes = self._score({u: by_user[u] for u in users}, rows, self.clock.now(), out)
        return Scored(frozenset(users), writes, out)

    async def _scored_ahead(self, decoded: Decoded) -> Scored | None:
        """The users scored ahead, if their rows are still current (else None); used once:
        a batch retried after a failed write reads and scores every user again (the
        write may have landed in part, and what did land must not be written twice)."""
        ahead, decoded.ahead = decoded.ahead, None
        if ahead is None:
            return None
        ahead.go.set()
        try:
            scored = await ahead.scored
        except StoreUnavailable:
            return None  # read again in the batch, where an outage is the batch's to wait out
        return scored if ahead.epoch == self.epoch else None

    def _dead(self, record: Record, exc: Exception) -> DeadLetter:
        return dead_record(record, exc, stage="scorer")

    async def handle(self, records: list[Record], decoded: Decoded | None = None) -> Outcome:
        """Score one micro-batch; ``decoded`` is :func:`decode_batch` of ``records`` when the
        consumer decoded it ahead, with those of its users scored ahead (:meth:`score_ahead`).
        """
        decoded = decoded or decode_batch(records)
        out = Outcome(events=len(records), dead=list(decoded.dead))
        by_user = decoded.by_user
        observe = getattr(self.clock, "observe", None)
        if observe is not None:
            for items in by_user.values():
                for _, event in items:
                    observe(event.ts)
        if not by_user:
            return out
        started = time.perf_counter()
        writes: list[UserWrite] = []
        rest = by_user
        own = decoded.ahead
        ahead = await self._scored_ahead(decoded)
        if ahead is not None:
            writes += ahead.writes
            out.add(ahead.out)
            rest = {u: items for u, items in by_user.items() if u not in ahead.users}
        rows = await self.store.load(list(rest)) if rest else {}
        out.redis_s["load"] = time.perf_counter() - started
        writes += self._score(rest, rows, self.clock.now(), out)
        out.users = len(writes)
        released = False
        try:
            if writes:
                started = time.perf_counter()
                saved = asyncio.ensure_future(self.store.save(writes))
                await asyncio.sleep(0)  # the write's first step: out on the socket
                self._release(own)  # the next batch's users are scored meanwhile
                released = True
                await saved
                out.redis_s["save"] = time.perf_counter() - started
        finally:
            if not released:
                self._release(own)
        return out

    def _release(self, own: Ahead | None) -> None:
        """The batch in hand (``own``: what of it was scored ahead) needs the CPU no more:
        the batch prepared after it is scored now, or, if none is yet, the next one
        prepared is scored at once."""
        nxt, self._next = self._next, None
        if nxt is not None and nxt is not own:
            nxt.go.set()
        else:
            self._free = True

    def _score(
        self,
        by_user: dict[str, list[tuple[Record, UserEvent]]],
        rows: dict[str, StoredUser],
        now: float,
        out: Outcome,
    ) -> list[UserWrite]:
        """Apply each user's events to their stored state and score those that need it:
        the writes, with late events, duplicates, bands, alerts and win-backs in ``out``."""
        writes: list[UserWrite] = []
        for uid, items in by_user.items():
            row, dropped = readable(rows[uid])
            if dropped:
                out.unreadable.update(dropped)
            try:
                before = decode_state(row.features) if row.features else None
            except UnreadableStored as exc:
                # Corrupt, or a newer version's format: this user's events wait in the
                # dead-letter topic, the state stays as it is, the other users go on.
                out.dead += [self._dead(record, exc) for record, _ in items]
                out.unreadable["state"] += 1
                continue
            if len(items) > 1:
                items.sort(key=_event_time)
            folded = fold_events(before, [e for _, e in items], settings=self.features)
            out.duplicates += folded.duplicates
            if folded.late:
                record_of = {id(e): r for r, e in items}
                out.dead += [self._dead(record_of[id(e)], exc) for e, exc in folded.late]
            state = folded.state
            if state is None or state is before:
                continue
            out.newest_ts = max(out.newest_ts, float(state.last_seen))
            days = tuple(sorted({utc_day(int(e.ts // 86_400)) for _, e in items}))
            types = {e.type for _, e in items}
            outcome, counter = None, ""
            if row.winback is not None:
                outcome, counter = winback_outcome(
                    row.winback, [e for _, e in items], now=now, window_s=self.winback_window_s
                )
                if outcome == "won":
                    out.winbacks[counter] += 1
            every_s = rescore_interval(uid, self.rescore_every_s, self.rescore_spread)
            # A dropped record or policy is replaced now, not at the next re-score.
            if not dropped and not needs_rescore(row.policy, types, now, every_s=every_s):
                writes.append(
                    UserWrite(
                        uid,
                        encode_state(state),
                        None,
                        None,
                        float(state.last_active or state.last_seen),
                        None,
                        active_days=days,
                        winback=outcome,
                        winback_counter=counter,
                        cohort_marks=cohort_marks(state, days),
                    )
                )
                continue
            result = self.core.score_user(uid, state, row, now=now)
            out.bands[result.band] += 1
            write = user_write(
                uid, state, result, active_days=days, previous=previous_stage(row.record, dropped)
            )
            write.winback, write.winback_counter = outcome, counter
            writes.append(write)
            if result.alert is not None:
                out.alerts.append(result.alert)
        return writes


def _quiet(future: asyncio.Future[Scored]) -> None:
    """Retrieve a score-ahead's error, so that one nobody awaits is not logged as lost."""
    if not future.cancelled():
        future.exception()


def _event_time(pair: tuple[Record, UserEvent]) -> float:
    return pair[1].ts

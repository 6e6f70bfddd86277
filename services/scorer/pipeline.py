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
from datetime import UTC, datetime
from functools import lru_cache
from typing import Protocol

import orjson

from services.common.clock import Clock
from services.common.errors import InvalidEvent, LateEvent, StoreUnavailable
from services.common.events import UserEvent, check_size, parse_event
from services.common.messages import ChurnAlert, DeadLetter, Record, dead_record
from services.common.schemas import validate
from services.notifier.core.guardrails import won_back
from services.scorer.adapters.redis_store import StoredUser, UserWrite
from services.scorer.core.features import CHURN_TYPES, FeatureSettings, UserState, update_features
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.scoring import (
    ScoringCore,
    UserScore,
    needs_rescore,
    previous_stage,
    rescore_interval,
)

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
    ``read_ahead``: its users' rows, being read while the batch before is handled."""

    by_user: dict[str, list[tuple[Record, UserEvent]]]
    dead: list[DeadLetter]
    read_ahead: ReadAhead | None = None


@dataclass(slots=True)
class ReadAhead:
    """Rows read before the batch's turn, and the scorer's ``epoch`` when the read began."""

    rows: asyncio.Future[dict[str, StoredUser]]
    epoch: int


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


class ReadAheadStep:
    """The consumer's ``prepare`` step for a live worker: decode the next batch and start
    reading its rows (:meth:`BatchScorer.read_ahead`) while the one before is handled.

    The batch prepared before this one is the batch in hand (the consumer handles
    one at a time, in order, and prepares the next before it waits for the one in
    hand), so its users are left to be read at their turn. ``scorer`` gives the
    worker's scorer, or None before it is ready (then the batch is only decoded).
    """

    def __init__(self, scorer: Callable[[], BatchScorer | None]) -> None:
        self.scorer = scorer
        self._in_hand: set[str] = set()

    def __call__(self, records: list[Record]) -> Decoded:
        decoded = decode_batch(records)
        scorer = self.scorer()
        if scorer is not None:
            scorer.read_ahead(decoded, skip=self._in_hand)
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
        # re-scores): rows read ahead before it may be stale and are read again.
        self.epoch = 0

    def read_ahead(self, decoded: Decoded, *, skip: set[str]) -> None:
        """Start reading the rows of ``decoded``'s users, but those in ``skip``.

        The consumer decodes the next batch while the one in hand is handled;
        reading its rows then too takes the read's Redis round trip off the
        worker's path (Redis works on its own core meanwhile). ``skip`` is the
        batch in hand: its users' rows change when it saves, so they are read
        at their turn. Rows of other users change only by the live sweep's
        re-scores (they take ``state_lock`` and bump :attr:`epoch`, and rows
        read before are then read again) or by other processes (the notifier's
        win-back mark, an erase through the API), whose writes a batch could
        already miss between its read and its write; the read ahead widens
        that window by the batch before's handling.
        """
        users = [u for u in decoded.by_user if u not in skip]
        if users:
            rows = asyncio.ensure_future(self.store.load(users))
            rows.add_done_callback(_quiet)  # a batch dropped by a rebalance never awaits it
            decoded.read_ahead = ReadAhead(rows, self.epoch)

    async def _rows(self, decoded: Decoded) -> dict[str, StoredUser]:
        """The batch's users' rows: those read ahead if still current, the rest read now."""
        rows: dict[str, StoredUser] = {}
        ahead = decoded.read_ahead
        if ahead is not None:
            try:
                got = await ahead.rows
            except StoreUnavailable:
                got = {}  # read again below, where an outage is the batch's to wait out
            if ahead.epoch == self.epoch:
                rows = got
        missing = [u for u in decoded.by_user if u not in rows]
        if missing:
            rows.update(await self.store.load(missing))
        return rows

    def _dead(self, record: Record, exc: Exception) -> DeadLetter:
        return dead_record(record, exc, stage="scorer")

    async def handle(self, records: list[Record], decoded: Decoded | None = None) -> Outcome:
        """Score one micro-batch; ``decoded`` is :func:`decode_batch` of ``records`` when the
        consumer decoded it ahead (while the batch before waited on Redis)."""
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
        stored = await self._rows(decoded)
        out.redis_s["load"] = time.perf_counter() - started
        now = self.clock.now()
        writes: list[UserWrite] = []
        for uid, items in by_user.items():
            row = stored[uid]
            before = decode_state(row.features) if row.features else None
            state = before
            if len(items) > 1:
                items.sort(key=_event_time)
            for record, event in items:
                try:
                    updated = update_features(state, event, settings=self.features)
                except LateEvent as exc:
                    out.dead.append(self._dead(record, exc))
                    continue
                if updated is state:  # this event_id was applied before
                    out.duplicates += 1
                state = updated
            if state is None or state is before:
                continue
            out.newest_ts = max(out.newest_ts, float(state.last_seen))
            days = tuple(sorted({_utc_day(int(e.ts // 86_400)) for _, e in items}))
            types = {e.type for _, e in items}
            outcome, counter = None, ""
            if row.winback is not None:
                outcome, counter = winback_outcome(
                    row.winback, [e for _, e in items], now=now, window_s=self.winback_window_s
                )
                if outcome == "won":
                    out.winbacks[counter] += 1
            every_s = rescore_interval(uid, self.rescore_every_s, self.rescore_spread)
            if not needs_rescore(row.policy, types, now, every_s=every_s):
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
                uid, state, result, active_days=days, previous=previous_stage(row.record)
            )
            write.winback, write.winback_counter = outcome, counter
            writes.append(write)
            if result.alert is not None:
                out.alerts.append(result.alert)
        out.users = len(writes)
        if writes:
            started = time.perf_counter()
            await self.store.save(writes)
            out.redis_s["save"] = time.perf_counter() - started
        return out


def _quiet(future: asyncio.Future[dict[str, StoredUser]]) -> None:
    """Retrieve a read-ahead's error, so that one nobody awaits is not logged as lost."""
    if not future.cancelled():
        future.exception()


def _event_time(pair: tuple[Record, UserEvent]) -> float:
    return pair[1].ts


@lru_cache(maxsize=1024)
def _utc_day(day: int) -> str:
    """``YYYYMMDD`` of a UTC day number (the daily HLL's name), cached: days repeat a lot.

    >>> _utc_day(20_000)
    '20241004'
    """
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")


def user_write(
    uid: str,
    state: UserState,
    result: UserScore,
    *,
    active_days: tuple[str, ...] = (),
    previous: str | None = None,
) -> UserWrite:
    """What to store for one scored user."""
    return UserWrite(
        user_id=uid,
        features=encode_state(state),
        policy=result.policy,
        record=result.record,
        last_active=float(state.last_active or state.last_seen),
        risk=result.risk,
        snapshot=result.snapshot,
        snapshot_day=result.snapshot_day,
        alert=orjson.dumps(result.alert.to_dict()) if result.alert else None,
        alert_id=result.alert.alert_id if result.alert else "",
        cohort_marks=cohort_marks(state, active_days),
        stage=result.stage,
        previous_stage=previous,
        active_days=active_days,
        label_due=result.label_due,
    )


def winback_outcome(
    decision: bytes | None, events: list[UserEvent], *, now: float, window_s: float
) -> tuple[str | None, str]:
    """Resolve the notifier's latest win-back decision for a user, if this batch settles it.

    "won": the user was active within the window after the decision (treated or
    control alike, so the uplift is known); "expired": the window passed first.
    Returns the outcome and the counter key prefix to add it to.

    >>> wb = orjson.dumps({"at": 100.0, "playbook": "p", "group": "treated"})
    >>> e = UserEvent("e", "u", "login", datetime.fromtimestamp(200.0, UTC))
    >>> winback_outcome(wb, [e], now=200.0, window_s=1000)
    ('won', 'p:treated')
    >>> winback_outcome(wb, [], now=2000.0, window_s=1000)
    ('expired', 'p:treated')
    >>> winback_outcome(None, [e], now=200.0, window_s=1000)
    (None, '')
    """
    if decision is None:
        return None, ""
    wb = orjson.loads(decision)
    at, key = float(wb["at"]), f"{wb['playbook']}:{wb['group']}"
    active = [e.ts for e in events if e.type not in CHURN_TYPES and e.ts > at]
    if active and won_back(at, min(active), window_days=window_s / 86_400):
        return "won", key
    if now > at + window_s:
        return "expired", key
    return None, key


RETENTION_DAYS = (0, 1, 7, 30)


def cohort_marks(state: UserState, active_days: tuple[str, ...]) -> tuple[str, ...]:
    """The signup-cohort retention marks that this batch's active days earn the user.

    >>> from services.common.events import UserEvent
    >>> from services.scorer.core.features import FeatureSettings, update_features
    >>> s = update_features(None, UserEvent("e", "u", "signup",
    ...     datetime(2026, 1, 1, 9, tzinfo=UTC)), settings=FeatureSettings())
    >>> cohort_marks(s, ("20260101", "20260102", "20260105", "20260108"))
    ('20260101:d0', '20260101:d1', '20260101:d7')
    """
    signup = int((state.signup_ts or state.first_seen) // 86_400)
    marks = []
    for day in active_days:
        k = _day_number(day) - signup
        if k in RETENTION_DAYS:
            marks.append(f"{_utc_day(signup)}:d{k}")
    return tuple(marks)


@lru_cache(maxsize=1024)
def _day_number(day: str) -> int:
    """The UTC day number of ``YYYYMMDD`` (inverse of :func:`_utc_day`), cached.

    >>> _day_number(_utc_day(20_000))
    20000
    """
    return int(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp() // 86_400)

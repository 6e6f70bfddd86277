"""The scorer in replay mode: event time drives everything, so a replay is repeatable.

Live, a micro-batch is scored once per user at the wall clock, and a timer
re-scores silent users every minute. Replaying history that way would make
results depend on how records happen to be batched. In replay mode instead:

- the clock is the stream's event time (one partition, so one total order);
- every event is scored at its own time, as it would have been live;
- the silent-user sweep and label resolution run at fixed ticks of event
  time (multiples of ``sweep_interval_s``), between the events before and
  after the tick.

So the same file gives the same alerts, ids and times, however Kafka batches it.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from services.common.errors import InvalidEvent, LateEvent, UnreadableStored
from services.common.events import UserEvent
from services.scorer.core.features import UserState, update_features
from services.scorer.core.state_codec import decode_state
from services.scorer.decoding import Decoded, decode_record
from services.scorer.pipeline import BatchScorer, Outcome, Record
from services.scorer.rows import StoredUser, UserWrite
from services.scorer.scoring import UserScore, previous_stage, readable
from services.scorer.user_writes import user_write

Sweep = Callable[[float], Awaitable[Outcome]]


def next_tick(ts: float, interval: float) -> float:
    """The first tick strictly after ``ts``.

    >>> next_tick(3599.0, 3600.0), next_tick(3600.0, 3600.0)
    (3600.0, 7200.0)
    """
    return (ts // interval + 1) * interval


class ReplayScorer(BatchScorer):
    """A :class:`BatchScorer` that scores per event and sweeps at event-time ticks."""

    sweep: Sweep | None = None
    interval: float = 3600.0
    tick: float | None = None

    async def handle(self, records: list[Record], decoded: Decoded | None = None) -> Outcome:
        # Per event in arrival order, sweeping between: a batch decoded ahead is not used.
        out = Outcome(events=len(records))
        segment: list[tuple[Record, UserEvent]] = []
        for record in records:
            try:
                event = decode_record(record)
            except InvalidEvent as exc:
                out.dead.append(self._dead(record, exc))
                continue
            if self.tick is None:
                self.tick = next_tick(event.ts, self.interval)
            while event.ts >= self.tick:
                await self._flush(segment, out)
                segment = []
                if self.sweep is not None:
                    swept = await self.sweep(self.tick)
                    out.alerts += swept.alerts
                    out.unreadable.update(swept.unreadable)
                self.tick += self.interval
            segment.append((record, event))
        await self._flush(segment, out)
        observe = getattr(self.clock, "observe", None)
        if observe is not None and records and segment:
            observe(max(e.ts for _, e in segment))
        return out

    async def _flush(self, segment: list[tuple[Record, UserEvent]], out: Outcome) -> None:
        if not segment:
            return
        users = list(dict.fromkeys(e.user_id for _, e in segment))
        stored = await self.store.load(users)
        rows: dict[str, StoredUser] = {}
        dropped: dict[str, list[str]] = {}
        states: dict[str, UserState | None] = {}
        unreadable: dict[str, UnreadableStored] = {}
        for uid, row in stored.items():
            rows[uid], dropped[uid] = readable(row)
            out.unreadable.update(dropped[uid])
            try:
                states[uid] = decode_state(row.features) if row.features else None
            except UnreadableStored as exc:  # as live: its events wait in the dead letters
                unreadable[uid] = exc
                out.unreadable["state"] += 1
        last: dict[str, tuple[UserState, UserScore, set[str]]] = {}
        for record, event in segment:
            uid = event.user_id
            if rows[uid].erased:  # a backfill's history of a user erased since it was read
                out.erased += 1
                continue
            if uid in unreadable:
                out.dead.append(self._dead(record, unreadable[uid]))
                continue
            before = states[uid]
            try:
                state = update_features(before, event, settings=self.features)
            except LateEvent as exc:
                out.dead.append(self._dead(record, exc))
                continue
            if state is before:
                out.duplicates += 1
                continue
            result = self.core.score_user(uid, state, rows[uid], now=event.ts)
            states[uid] = state
            row = rows[uid]
            rows[uid] = StoredUser(
                None, result.policy, result.record, result.snapshot_day or row.snapshot_day
            )
            days = last[uid][2] if uid in last else set()
            days.add(event.occurred_at.strftime("%Y%m%d"))
            last[uid] = (state, _keep_snapshot(result, last.get(uid)), days)
            if result.alert is not None:
                out.alerts.append(result.alert)
        writes: list[UserWrite] = [
            user_write(
                uid,
                state,
                result,
                active_days=tuple(sorted(days)),
                previous=previous_stage(stored[uid].record, dropped[uid]),
            )
            for uid, (state, result, days) in last.items()
        ]
        out.users += len(writes)
        if writes:
            await self.store.save(writes)


def _keep_snapshot(
    result: UserScore, previous: tuple[object, UserScore, set[str]] | None
) -> UserScore:
    """The last result of a segment, carrying the segment's snapshot if an earlier event took it.

    Segments never span a UTC midnight (ticks divide the day), so there is at
    most one snapshot per user per segment.
    """
    if result.snapshot is not None or previous is None or previous[1].snapshot is None:
        return result
    prev = previous[1]
    return UserScore(
        result.risk,
        result.policy,
        result.record,
        result.alert,
        prev.snapshot,
        prev.snapshot_day,
        prev.label_due
        if result.label_due is None
        else min(result.label_due, prev.label_due or result.label_due),
    )

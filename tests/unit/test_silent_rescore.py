"""The sweep's cadence for silent users: daily through inactivity + horizon, then slower.

``Runtime.sweep_at`` on an in-memory store (the ports it uses: users by last
activity, the user rows, the label snapshots), driven day by day.
"""

from __future__ import annotations

import asyncio
import dataclasses
from typing import Any

import orjson
import pytest

from services.common.clock import ManualClock
from services.common.errors import StoreUnavailable
from services.scorer import metrics
from services.scorer.app import batch_handler, count_unreadable
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.scorer.pipeline import BatchScorer, Record, decode_batch
from services.scorer.rows import StoredUser, UserWrite
from services.scorer.runtime import Runtime
from services.scorer.sweeps import silence_marks
from services.scorer.wiring import make_core
from services.sim.generator import DAY, SimUser, event

T0 = 1_780_000_000.0


class MemoryStore:
    """Just what the sweep and label resolution need, in memory."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredUser] = {}
        self.lastseen: dict[str, float] = {}
        self.snaps: dict[str, list[bytes]] = {}
        self.due: dict[str, float] = {}
        self.rescored: list[tuple[float, str]] = []
        self.now = 0.0

    async def load(self, user_ids: list[str]) -> dict[str, StoredUser]:
        return {u: self.rows.get(u, StoredUser(None, None, None, None)) for u in user_ids}

    async def save(self, writes: list[UserWrite]) -> None:
        for w in writes:
            old = self.rows.get(w.user_id, StoredUser(None, None, None, None))
            day = old.snapshot_day
            if w.snapshot is not None:
                self.snaps.setdefault(w.user_id, []).append(w.snapshot)
                day = w.snapshot_day
            self.rows[w.user_id] = StoredUser(w.features, w.policy, w.record, day)
            self.lastseen[w.user_id] = w.last_active
            self.rescored.append((self.now, w.user_id))
            if w.label_due is not None:
                self.due[w.user_id] = min(self.due.get(w.user_id, w.label_due), w.label_due)

    async def silent_between(self, ranges: list[tuple[float, float]]) -> list[str]:
        return [u for lo, hi in ranges for u, ts in self.lastseen.items() if lo <= ts < hi]

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        return [u for u, due in self.due.items() if due <= now][:limit]

    async def load_snapshots(self, user_ids: list[str]) -> dict[str, Any]:
        return {u: (self.rows[u].features, list(self.snaps.get(u, []))) for u in user_ids}

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        for uid, (dropped, due) in remaining.items():
            self.snaps[uid] = self.snaps.get(uid, [])[dropped:]
            if due is None:
                self.due.pop(uid, None)
            else:
                self.due[uid] = due


def make_runtime(**overrides: Any) -> tuple[Runtime, MemoryStore, ManualClock]:
    settings = ScorerSettings(
        scorer_inactivity_days=30, scorer_horizon_days=14, scorer_learner="inline", **overrides
    )
    runtime, store, clock = Runtime(settings), MemoryStore(), ManualClock(T0)
    runtime.clock = clock
    runtime.store = store  # type: ignore[assignment]
    runtime.core = make_core(settings)
    runtime._scorer = BatchScorer(
        store=store, core=runtime.core, clock=clock, features=FeatureSettings()
    )
    return runtime, store, clock


def buy_once_then_go_silent(runtime: Runtime, store: MemoryStore, clock: ManualClock, days: int):
    user = SimUser("gone-1", "fading", "UTC", "basic", 1.0)
    raw = orjson.dumps(event(user, "purchase", T0 - 3600, 1, amount=10.0))

    async def scenario() -> None:
        scorer = await runtime.scorer()
        await scorer.handle([Record(b"gone-1", raw, "user-events", 0, 0)])
        await runtime.sweep_at(T0)
        for day in range(1, days + 1):
            clock.set(T0 + day * DAY)
            store.now = clock.now()
            await runtime.sweep_at(clock.now())

    asyncio.run(scenario())


def rescored_days(store: MemoryStore) -> list[int]:
    return [round((ts - T0) / DAY) for ts, _ in store.rescored if ts > T0]


def test_silence_marks_are_daily_then_every_n_days_until_the_state_expires() -> None:
    assert silence_marks(3, every=7, until=20) == [1, 2, 3, 10, 17]
    assert silence_marks(3, every=0, until=400) == [1, 2, 3]
    assert silence_marks(44, every=7, until=400)[-1] == 394


def test_a_long_silent_user_is_rescored_weekly_past_inactivity_plus_horizon() -> None:
    runtime, store, clock = make_runtime(scorer_long_silent_every_days=7)
    buy_once_then_go_silent(runtime, store, clock, days=100)
    # So the stored score is as of day 100 (within a week), not as of day 44.
    assert rescored_days(store) == [*range(1, 45), 51, 58, 65, 72, 79, 86, 93, 100]


def test_without_the_slow_cadence_rescoring_stops_at_inactivity_plus_horizon() -> None:
    runtime, store, clock = make_runtime(scorer_long_silent_every_days=0)
    buy_once_then_go_silent(runtime, store, clock, days=100)
    assert rescored_days(store) == list(range(1, 45))


def test_long_silent_snapshots_learn_that_the_user_stayed_gone() -> None:
    runtime, store, clock = make_runtime(scorer_long_silent_every_days=7)
    learned: list[tuple[float, int]] = []
    model = runtime.core.model
    original = model.learn

    def spy(x: dict[str, float], y: bool | int) -> None:
        learned.append((x["recency_days"], int(y)))
        original(x, y)

    model.learn = spy  # type: ignore[method-assign]
    buy_once_then_go_silent(runtime, store, clock, days=120)
    late = [(r, y) for r, y in learned if r > 44]
    # Snapshots past the daily window: weekly, each learned y=1 a horizon later.
    assert late and all(y == 1 for _, y in late)
    assert max(r for r, _ in late) >= 90
    assert len(store.snaps["gone-1"]) <= 2  # only those of the last horizon wait


class GatedStore(MemoryStore):
    """Holds its next ``load`` until ``gate`` opens: a sweep caught between read and write."""

    def __init__(self) -> None:
        super().__init__()
        self.gate: asyncio.Event | None = None

    async def load(self, user_ids: list[str]) -> dict[str, StoredUser]:
        gate, self.gate = self.gate, None
        rows = await super().load(user_ids)
        if gate is not None:
            await gate.wait()
        return rows

    async def published(self, alert_ids: list[str]) -> None: ...


def test_a_live_sweep_and_a_batch_of_the_same_user_never_overwrite_each_other() -> None:
    runtime, _, clock = make_runtime()
    store = GatedStore()
    runtime.store = store  # type: ignore[assignment]
    runtime._scorer = BatchScorer(
        store=store, core=runtime.core, clock=clock, features=FeatureSettings()
    )
    user = SimUser("busy-1", "loyal", "UTC", "basic", 1.0)

    async def publish(outcome: Any) -> None: ...

    handler = batch_handler(runtime, publish)
    first = orjson.dumps(event(user, "purchase", T0 - 3600, 1, amount=10.0))
    later = orjson.dumps(event(user, "login", T0 + DAY, 2))

    async def scenario() -> None:
        await handler([Record(b"busy-1", first, "user-events", 0, 0)])
        await runtime.sweep_at(T0)
        clock.set(T0 + 1.1 * DAY)  # the user's recency crossed a day: the sweep wants it
        store.gate = gate = asyncio.Event()
        sweep = asyncio.create_task(runtime.sweep())
        await asyncio.sleep(0.01)  # the sweep has read its users and waits at the gate
        batch = asyncio.create_task(handler([Record(b"busy-1", later, "user-events", 0, 1)]))
        await asyncio.sleep(0.05)  # a batch free to run now would write before the sweep
        gate.set()
        await asyncio.gather(sweep, batch)

    asyncio.run(scenario())
    state = decode_state(store.rows["busy-1"].features or b"")
    assert to_vector(state, clock.now())["events_7d"] == 2.0, "the sweep lost the batch's event"


def test_users_scored_ahead_of_a_silent_rescore_are_scored_again() -> None:
    runtime, store, clock = make_runtime()
    buy_once_then_go_silent(runtime, store, clock, days=0)  # scored at T0
    user = SimUser("gone-1", "fading", "UTC", "basic", 1.0)
    login = Record(b"gone-1", orjson.dumps(event(user, "login", T0 + DAY + 10, 2)), "t", 0, 1)

    async def scenario() -> int:
        scorer = await runtime.scorer()
        scorer.rescore_every_s = 60.0  # ordinary activity re-scores a user once a minute
        decoded = decode_batch([login])
        clock.set(T0 + DAY - 5)
        scorer.score_ahead(decoded, skip=set())  # as while the batch before is handled
        assert decoded.ahead is not None
        decoded.ahead.go.set()  # the batch before's write is out
        assert sum((await decoded.ahead.scored).out.bands.values()) == 1  # from a day-old score
        clock.set(T0 + DAY)
        await runtime.sweep_at(T0 + DAY)  # one day silent: re-scored
        clock.set(T0 + DAY + 10)
        out = await scorer.handle([login], decoded)
        assert out.users == 1  # scored again, not dropped
        return sum(out.bands.values())

    # The batch starts again from the sweep's score, 10 s old, so the login does not
    # re-score; scored ahead from the row before the sweep, it did (a day-old score).
    assert asyncio.run(scenario()) == 0
    state = decode_state(store.rows["gone-1"].features or b"")
    assert state.last_active == int(T0 + DAY + 10)  # the login is in the stored state


def test_a_silent_user_whose_state_is_unreadable_is_skipped_and_counted() -> None:
    """The sweep goes on past a corrupt state (or a newer version's) instead of stopping
    the worker; its labels wait where they are, and both are counted."""
    runtime, store, clock = make_runtime()
    users = [SimUser(f"quiet-{i}", "fading", "UTC", "basic", 1.0) for i in range(2)]
    batch = [
        Record(u.user_id.encode(), orjson.dumps(event(u, "login", T0 - 3600, i)), "e", 0, i)
        for i, u in enumerate(users)
    ]
    state_errors = metrics.UNREADABLE.labels("state")
    snapshot_errors = metrics.UNREADABLE.labels("snapshots")
    before = (state_errors._value.get(), snapshot_errors._value.get())

    async def scenario() -> None:
        scorer = await runtime.scorer()
        await scorer.handle(batch)
        await runtime.sweep_at(T0)
        row = store.rows[users[0].user_id]
        store.rows[users[0].user_id] = dataclasses.replace(
            row, features=b"\x95\x05\x01\x02\x03\x04"
        )
        for day in (1, 15):  # re-scored at day 1; the snapshots' horizon ends by day 15
            clock.set(T0 + day * DAY)
            store.now = clock.now()
            count_unreadable(await runtime.sweep_at(clock.now()))  # as the live timer does

    asyncio.run(scenario())
    assert [uid for ts, uid in store.rescored if ts > T0] == [users[1].user_id] * 2
    assert state_errors._value.get() == before[0] + 2
    assert snapshot_errors._value.get() == before[1] + 1
    assert len(store.snaps[users[0].user_id]) == 1  # still there, due a day later
    assert store.due[users[0].user_id] == T0 + 16 * DAY
    assert store.due[users[1].user_id] > T0 + 16 * DAY  # read: waits for its inactivity


def test_a_backlog_of_due_labels_is_learned_in_one_sweep_a_round_at_a_time() -> None:
    """More users due than a round takes: the rounds follow each other until none is due,
    not one round per sweep interval (at full load, one label per ten events)."""
    runtime, store, clock = make_runtime()
    runtime.label_users = 3
    users = [SimUser(f"gone-{i}", "fading", "UTC", "basic", 1.0) for i in range(8)]

    def batch(kind: str, at: float, start: int) -> list[Record]:
        return [
            Record(u.user_id.encode(), orjson.dumps(event(u, kind, at, start + i)), "e", 0, i)
            for i, u in enumerate(users)
        ]

    rounds: list[int] = []
    due = store.users_with_labels_due

    async def counted(now: float, *, limit: int) -> list[str]:
        found = await due(now, limit=limit)
        rounds.append(len(found))
        return found

    store.users_with_labels_due = counted  # type: ignore[method-assign]

    async def scenario() -> Any:
        scorer = await runtime.scorer()
        await scorer.handle(batch("login", T0 - 3600, 0))  # a snapshot each
        clock.set(T0 + DAY)
        # A cancellation after the snapshot: every user's label is due at once.
        await scorer.handle(batch("subscription_cancelled", T0 + DAY - 3600, 10))
        return await runtime.learn(T0 + DAY + 60)

    counted_rounds = metrics.LABEL_ROUNDS._value.get()
    learned = asyncio.run(scenario())
    assert (learned.positives, learned.negatives) == (8, 0)
    assert rounds == [3, 3, 2]
    assert metrics.LABEL_ROUNDS._value.get() == counted_rounds + 3
    assert all(due > T0 + DAY + 60 for due in store.due.values())


def test_a_silent_user_whose_alert_state_is_unreadable_is_rescored_without_it() -> None:
    runtime, store, clock = make_runtime()
    user = SimUser("quiet-p", "fading", "UTC", "basic", 1.0)
    raw = orjson.dumps(event(user, "login", T0 - 3600, 0))

    async def scenario() -> Any:
        scorer = await runtime.scorer()
        await scorer.handle([Record(b"quiet-p", raw, "e", 0, 0)])
        await runtime.sweep_at(T0)
        store.rows["quiet-p"] = dataclasses.replace(store.rows["quiet-p"], policy=b"\x03")
        clock.set(T0 + DAY)
        return await runtime.rescore_silent(T0 + DAY)

    out = asyncio.run(scenario())
    assert out.users == 1 and out.unreadable == {"policy": 1}
    assert store.rows["quiet-p"].policy != b"\x03"


def test_a_sweep_that_redis_failed_part_way_is_run_again_over_the_same_span() -> None:
    """Before, the sweep moved its mark first: a failure skipped its silent users until
    their next mark (a day later at the earliest)."""
    runtime, store, clock = make_runtime()
    user = SimUser("quiet-r", "fading", "UTC", "basic", 1.0)
    raw = orjson.dumps(event(user, "login", T0 - 3600, 0))
    silent_between = store.silent_between
    failures = [StoreUnavailable("Redis read failed: connection reset")]

    async def flaky(ranges: list[tuple[float, float]]) -> list[str]:
        if failures:
            raise failures.pop()
        return await silent_between(ranges)

    store.silent_between = flaky  # type: ignore[method-assign]

    async def scenario() -> Any:
        scorer = await runtime.scorer()
        await scorer.handle([Record(b"quiet-r", raw, "e", 0, 0)])
        await runtime.sweep_at(T0)
        clock.set(T0 + DAY)
        with pytest.raises(StoreUnavailable):
            await runtime.rescore_silent(T0 + DAY)
        return await runtime.rescore_silent(T0 + DAY + 60)  # the retry

    out = asyncio.run(scenario())
    assert out.users == 1


def test_labels_that_redis_stops_are_left_due_and_the_rescores_go_out() -> None:
    runtime, store, clock = make_runtime()
    users = [SimUser(f"gone-s{i}", "fading", "UTC", "basic", 1.0) for i in range(2)]
    logins = [
        Record(u.user_id.encode(), orjson.dumps(event(u, "login", T0 - 3600, i)), "e", 0, i)
        for i, u in enumerate(users)
    ]
    cancels = [
        Record(
            u.user_id.encode(), orjson.dumps(event(u, "subscription_cancelled", T0, i)), "e", 0, i
        )
        for i, u in enumerate(users, start=10)
    ]
    errors = metrics.STORE_ERRORS._value.get()

    async def down(now: float, *, limit: int) -> list[str]:
        raise StoreUnavailable("Redis read failed: connection refused")

    async def scenario() -> Any:
        scorer = await runtime.scorer()
        await scorer.handle(logins)
        clock.set(T0 + 60)
        await scorer.handle(cancels)  # every label due now
        store.users_with_labels_due = down  # type: ignore[method-assign]
        clock.set(T0 + 120)
        return await runtime.sweep()

    asyncio.run(scenario())
    assert metrics.STORE_ERRORS._value.get() == errors + 1
    assert sorted(store.due) == [u.user_id for u in users]  # still due, nothing trimmed
    assert all(len(store.snaps[u.user_id]) == 1 for u in users)


def test_an_inline_sweep_stops_learning_once_the_worker_closes() -> None:
    """After the final checkpoint, labels learned would be trimmed but never saved: the
    sweep stops at its next chunk and leaves them due."""
    from services.scorer.labelling import SnapshotRows
    from services.scorer.learner import InlineLearner, LearnerClosed

    learner = InlineLearner()
    model = make_core(ScorerSettings()).model
    chunks: list[SnapshotRows] = [{}, {}]

    async def scenario() -> None:
        task = asyncio.ensure_future(
            learner.resolve(model, chunks, now=T0, settings=make_core(ScorerSettings()).labels)
        )
        learner.close()
        with pytest.raises(LearnerClosed):
            await task

    asyncio.run(scenario())


def test_alerts_of_a_sweep_that_failed_part_way_go_out_with_its_retry() -> None:
    """The first chunk's re-scores were stored (their alerts in the outbox) when the second
    chunk's write failed; the retry finds them alerted already, so it is the first try's
    alerts that must go out, not be dropped with the failed try's outcome."""
    runtime, store, clock = make_runtime()
    runtime.sweep_chunk = 1
    users = [SimUser(f"quiet-a{i}", "fading", "UTC", "basic", 1.0) for i in range(2)]
    logins = [
        Record(u.user_id.encode(), orjson.dumps(event(u, "login", T0 - 3600, i)), "e", 0, i)
        for i, u in enumerate(users)
    ]
    save = store.save
    calls: list[int] = []

    async def second_write_fails(writes: list[UserWrite]) -> None:
        calls.append(len(writes))
        if len(calls) == 2:
            raise StoreUnavailable("Redis write failed: connection reset")
        await save(writes)

    async def scenario() -> Any:
        scorer = await runtime.scorer()
        await scorer.handle(logins)
        await runtime.sweep_at(T0)
        for day in range(1, 7):  # quiet until day 7, when both cross into "medium"
            clock.set(T0 + day * DAY)
            assert not (await runtime.rescore_silent(clock.now())).alerts
        store.save = second_write_fails  # type: ignore[method-assign]
        clock.set(T0 + 7 * DAY)
        with pytest.raises(StoreUnavailable):
            await runtime.rescore_silent(clock.now())
        return await runtime.rescore_silent(clock.now())  # the timer's retry

    out = asyncio.run(scenario())
    assert sorted(a.user_id for a in out.alerts) == [u.user_id for u in users]

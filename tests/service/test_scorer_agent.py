"""The scorer's batch consumer, its handler and the micro-batch step, in memory.

The first tests run the real ``BatchConsumer`` and the worker's batch handler
on a fake of aiokafka's consumer (batches out, commits recorded) with Faust's
topic sends captured: what is committed when, around a failure and a
rebalance. The others call ``BatchScorer.handle``, what the handler runs on
every batch, on a fake of the ``UserStore`` port that records each call, so
they can say how many round trips a batch costs and what was written.
"""

from __future__ import annotations

import asyncio
from typing import Any
from unittest import mock

import faust
import orjson
import pytest

from services.common.batch_consumer import BatchConsumer
from services.common.clock import ManualClock
from services.common.errors import StoreUnavailable
from services.scorer.app import batch_handler, make_publisher
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings
from services.scorer.core.policy_codec import decode_policy
from services.scorer.core.records import decode_record
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.scorer.decoding import ScoreAheadStep
from services.scorer.pipeline import BatchScorer, Outcome, Record
from services.scorer.replay_mode import ReplayScorer
from services.scorer.rows import ANY_STAGE, StoredUser, UserWrite
from services.scorer.wiring import make_core
from services.sim.generator import DAY, SimUser, event

T0 = 1_780_000_000.0


class FakeStore:
    """The ``UserStore`` port in memory, counting round trips."""

    def __init__(self) -> None:
        self.rows: dict[str, StoredUser] = {}
        self.loads: list[list[str]] = []
        self.saves: list[list[UserWrite]] = []

    async def load(self, user_ids: list[str]) -> dict[str, StoredUser]:
        self.loads.append(list(user_ids))
        return {u: self.rows.get(u, StoredUser(None, None, None, None)) for u in user_ids}

    async def save(self, writes: list[UserWrite]) -> None:
        self.saves.append(list(writes))
        for w in writes:
            # As in Redis: a write without a score (not re-scored) keeps the last one.
            old = self.rows.get(w.user_id, StoredUser(None, None, None, None))
            self.rows[w.user_id] = StoredUser(
                w.features,
                w.policy or old.policy,
                w.record or old.record,
                w.snapshot_day if w.snapshot_day is not None else old.snapshot_day,
            )


def make_scorer(store: FakeStore, clock: ManualClock) -> BatchScorer:
    return BatchScorer(
        store=store, core=make_core(ScorerSettings()), clock=clock, features=FeatureSettings()
    )


def records(values: list[Any], *, start: int = 0) -> list[Record]:
    out = []
    for i, value in enumerate(values):
        raw = value if isinstance(value, bytes) else orjson.dumps(value)
        key = str(value["user_id"]).encode() if isinstance(value, dict) else None
        out.append(Record(key, raw, "user-events", 0, start + i))
    return out


def handle(scorer: BatchScorer, values: list[Any], *, start: int = 0) -> Outcome:
    return asyncio.run(scorer.handle(records(values, start=start)))


USERS = [SimUser(f"svc-{i}", "loyal", "Europe/Berlin", "premium", 1.0) for i in range(3)]


class FakeRuntime:
    """What the batch handler needs from ``Runtime``, around a scorer on the fake store."""

    def __init__(self, scorer: BatchScorer) -> None:
        self._scorer = scorer
        self.outcomes: list[Outcome] = []
        self.state_lock = asyncio.Lock()

    async def scorer(self) -> BatchScorer:
        return self._scorer

    async def after_batch(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)


class FakeKafka:
    """aiokafka's consumer as the batch consumer uses it: batches out, commits in."""

    def __init__(self, batches: list[list[Record]]) -> None:
        self.batches = list(batches)
        self.commits: list[dict[tuple[str, int], int]] = []
        self.listener: Any = None
        self.drained = asyncio.Event()
        self.ends: dict[tuple[str, int], int] = {}  # log end offsets, as a fetch reports them
        self.unassigned: set[tuple[str, int]] = set()  # aiokafka asserts on these

    async def start(self) -> None: ...

    async def stop(self) -> None: ...

    def subscribe(self, topics: list[str], *, listener: Any) -> None:
        self.listener = listener

    async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
        if not self.batches:
            self.drained.set()
            await asyncio.sleep(timeout_ms / 1000)
            return {}
        batch = self.batches.pop(0)
        return {("t", 0): [mock.Mock(**vars_of(r)) for r in batch]}

    async def commit(self, offsets: dict[Any, Any]) -> None:
        self.commits.append({(tp.topic, tp.partition): om.offset for tp, om in offsets.items()})

    def highwater(self, tp: Any) -> int | None:
        assert (tp.topic, tp.partition) not in self.unassigned, "Partition is not assigned"
        return self.ends.get((tp.topic, tp.partition))


def vars_of(record: Record) -> dict[str, Any]:
    return {f: getattr(record, f) for f in Record.__dataclass_fields__}


def run_consumer(consumer: BatchConsumer, kafka: FakeKafka) -> None:
    async def scenario() -> None:
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        await asyncio.wait_for(kafka.drained.wait(), 10)
        await consumer.stop()
        await asyncio.wait_for(task, 10)

    asyncio.run(scenario())


def test_a_micro_batch_is_scored_its_dead_letters_sent_and_then_committed() -> None:
    store = FakeStore()
    runtime = FakeRuntime(make_scorer(store, ManualClock(T0 + 3600)))
    settings = ScorerSettings()
    values: list[Any] = [event(u, "login", T0 + k, k) for k in range(3) for u in USERS]
    kafka = FakeKafka([records([*values, b"{bad"], start=40)])
    app = faust.App("test-scorer", broker="memory://")
    topics = [app.topic(t, value_serializer="raw") for t in (settings.topic_alerts, "dlq")]
    sent: list[tuple[str, dict[str, Any]]] = []

    async def capture(topic: faust.topics.Topic, *args: Any, **kwargs: Any) -> asyncio.Future[None]:
        sent.append((topic.get_topic_name(), kwargs))
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.set_result(None)
        return done

    handler = batch_handler(runtime, make_publisher(*topics))  # type: ignore[arg-type]
    consumer = BatchConsumer(
        settings, topic="t", group="g", handler=handler, max_records=100, consumer=kafka
    )
    with mock.patch.object(faust.topics.Topic, "send", capture):
        run_consumer(consumer, kafka)

    assert len(runtime.outcomes) == 1 and runtime.outcomes[0].events == 10
    assert len(store.loads) == 1 and sorted(store.loads[0]) == [u.user_id for u in USERS]
    assert len(store.saves) == 1 and len(store.saves[0]) == 3
    assert [name for name, _ in sent] == ["dlq"]
    dead = orjson.loads(sent[0][1]["value"])
    assert dead["stage"] == "scorer" and "JSON" in dead["reason"] and dead["payload"] == "{bad"
    assert kafka.commits == [{("user-events", 0): 50}]


def test_nothing_is_committed_when_the_handler_fails() -> None:
    async def fail(records: list[Record], prepared: Any) -> None:
        raise RuntimeError("boom")

    kafka = FakeKafka([records([b"x"])])
    consumer = BatchConsumer(
        ScorerSettings(), topic="t", group="g", handler=fail, max_records=10, consumer=kafka
    )

    async def scenario() -> None:
        await consumer.start()
        try:
            await consumer.run()
        except RuntimeError:
            return
        raise AssertionError("the handler's error must stop the consumer")

    asyncio.run(scenario())
    assert kafka.commits == []


def test_a_rebalance_waits_for_the_batch_in_hand_to_be_committed() -> None:
    release = asyncio.Event()
    order: list[str] = []

    async def slow(records: list[Record], prepared: Any) -> None:
        order.append("handling")
        await release.wait()
        order.append("handled")

    kafka = FakeKafka([records([b"x"], start=7)])
    consumer = BatchConsumer(
        ScorerSettings(), topic="t", group="g", handler=slow, max_records=10, consumer=kafka
    )

    async def scenario() -> None:
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        while not order:
            await asyncio.sleep(0.01)
        revoke = asyncio.create_task(kafka.listener.on_partitions_revoked([]))
        await asyncio.sleep(0.05)
        assert not revoke.done(), "the revoke must wait for the batch in hand"
        release.set()
        await asyncio.wait_for(revoke, 5)
        order.append(f"revoked after {len(kafka.commits)} commit(s)")
        await consumer.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert order == ["handling", "handled", "revoked after 1 commit(s)"]
    assert kafka.commits == [{("user-events", 0): 8}]


def test_the_lag_is_the_log_end_minus_what_was_handed_over() -> None:
    """What /metrics reports as churnwatch_scorer_consumer_lag: no request to Kafka."""

    async def note(records: list[Record], prepared: Any) -> None: ...

    kafka = FakeKafka([records([b"a", b"b"]), records([b"c"], start=2)])
    kafka.ends[("user-events", 0)] = 10  # ten events on the partition, three fetched
    consumer = BatchConsumer(
        ScorerSettings(), topic="t", group="g", handler=note, max_records=10, consumer=kafka
    )
    assert consumer.lag() == 0  # not started
    run_consumer(consumer, kafka)
    assert consumer.lag() == 7
    kafka.ends[("user-events", 0)] = 3
    assert consumer.lag() == 0
    # Read by the metrics server's thread: a partition revoked meanwhile is skipped.
    kafka.ends[("user-events", 0)] = 10
    kafka.unassigned.add(("user-events", 0))
    assert consumer.lag() == 0
    kafka.unassigned.clear()
    assert consumer.lag() == 7
    kafka.ends[("user-events", 0)] = 50
    # Revoked: the partition may be someone else's now; its backlog is not this member's.
    asyncio.run(kafka.listener.on_partitions_revoked([]))
    assert consumer.lag() == 0


def test_records_fetched_before_a_rebalance_are_not_handled_after_it() -> None:
    handled: list[list[int]] = []

    async def note(records: list[Record], prepared: Any) -> None:
        handled.append([r.offset for r in records])

    class RebalancingKafka(FakeKafka):
        async def getmany(self, *, timeout_ms: int, max_records: int) -> dict[Any, list[Any]]:
            got = await super().getmany(timeout_ms=timeout_ms, max_records=max_records)
            if got and not self.batches:  # the second part of one batch: a rebalance came
                await self.listener.on_partitions_revoked([])
            return got

    kafka = RebalancingKafka([records([b"a", b"b"]), records([b"c"], start=2)])
    consumer = BatchConsumer(
        ScorerSettings(),
        topic="t",
        group="g",
        handler=note,
        max_records=10,
        fill_within_s=0.01,
        consumer=kafka,
    )
    run_consumer(consumer, kafka)
    # Offsets 0 and 1 belong to the revoked assignment: they come again from the last
    # commit (nothing was committed for them), never handled by this member now.
    assert handled == [[2]]
    assert kafka.commits == [{("user-events", 0): 3}]


def test_one_load_and_one_save_per_batch_with_events_coalesced_per_user() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 3600)
    scorer = make_scorer(store, clock)
    batch = [event(u, "session_start", T0 + k * 60, k) for k in range(5) for u in USERS]

    out = handle(scorer, batch)

    assert (out.events, out.users, out.duplicates, out.dead) == (15, 3, 0, [])
    assert len(store.loads) == 1 and sorted(store.loads[0]) == [u.user_id for u in USERS]
    assert len(store.saves) == 1 and len(store.saves[0]) == 3
    for u in USERS:
        vector = to_vector(decode_state(store.rows[u.user_id].features or b""), clock.now())
        assert vector["sessions_30d"] == 5.0
        assert decode_record(store.rows[u.user_id].record or b"{}")["band"]


def test_bad_records_are_dead_lettered_with_the_reason_and_the_batch_goes_on() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 3600)
    scorer = make_scorer(store, clock)
    good = event(USERS[0], "login", T0, 1)
    bad: list[Any] = [
        b"{not json",
        {**event(USERS[1], "login", T0, 2), "user_id": 5},
        {**event(USERS[1], "login", T0, 3), "schema_version": 2},
        b"",
        {**event(USERS[1], "login", T0, 4), "occurred_at": "2026-01-01T00:00:00"},
    ]

    out = handle(scorer, [good, *bad], start=100)

    assert out.users == 1 and len(store.saves) == 1
    by_offset = {d.source.offset: d for d in out.dead}
    assert sorted(by_offset) == [101, 102, 103, 104, 105]
    assert "JSON" in by_offset[101].reason
    assert by_offset[102].error_path == "user_id"
    assert by_offset[103].error_path == "schema_version" and "2" in by_offset[103].reason
    assert "empty" in by_offset[104].reason
    assert by_offset[105].error_path == "occurred_at"
    assert all(d.stage == "scorer" and d.source.topic == "user-events" for d in out.dead)
    assert by_offset[101].payload_bytes() == b"{not json"


def test_a_batch_of_only_bad_records_touches_no_store() -> None:
    store = FakeStore()
    out = handle(make_scorer(store, ManualClock(T0)), [b"", b"[]"])
    assert len(out.dead) == 2 and store.loads == [] and store.saves == []


def test_redelivered_events_are_counted_as_duplicates_and_change_nothing() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 3600)
    scorer = make_scorer(store, clock)
    batch = [event(u, "page_view", T0 + k, k) for k in range(3) for u in USERS]
    handle(scorer, batch)
    before = dict(store.rows)

    again = handle(scorer, batch)

    assert (again.duplicates, again.users, again.dead) == (9, 0, [])
    assert len(store.saves) == 1, "a batch of duplicates must not write"
    assert store.rows == before


def test_duplicates_within_one_batch_count_once() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 3600)
    scorer = make_scorer(store, clock)
    e = event(USERS[0], "purchase", T0, 1, amount=10.0)
    handle(scorer, [e, e, e])
    state = decode_state(store.rows[USERS[0].user_id].features or b"")
    assert to_vector(state, clock.now())["revenue_30d"] == 10.0


def test_a_duplicate_next_to_a_new_event_is_counted() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 3600)
    scorer = make_scorer(store, clock)
    first = event(USERS[0], "login", T0, 1)
    handle(scorer, [first])
    out = handle(scorer, [first, event(USERS[0], "login", T0 + 60, 2)])
    assert out.duplicates == 1


def test_events_later_than_the_tolerance_are_dead_lettered_and_others_applied() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 10 * DAY)
    scorer = make_scorer(store, clock)
    user = USERS[0]
    handle(scorer, [event(user, "login", T0 + 5 * DAY, 1)])

    out = handle(
        scorer,
        [event(user, "login", T0 + 2 * DAY, 2), event(user, "login", T0 + 4 * DAY, 3)],
        start=10,
    )

    assert [d.source.offset for d in out.dead] == [10]
    assert out.dead[0].error_path == "occurred_at" and "older than" in out.dead[0].reason
    state = decode_state(store.rows[user.user_id].features or b"")
    assert to_vector(state, clock.now())["events_30d"] == 2.0


def test_a_user_whose_stored_state_is_unreadable_has_its_events_dead_lettered() -> None:
    """A state in a newer version's format (a rollback) or corrupt: that user's events
    go to the dead-letter topic, the state stays as it is, the other users go on."""
    store, clock = FakeStore(), ManualClock(T0 + 1 * DAY)
    scorer = make_scorer(store, clock)
    broken, fine = USERS[0], USERS[1]
    future = b"\x95\x05\x01\x02\x03\x04"  # MessagePack of [5, 1, 2, 3, 4]: format 5
    store.rows[broken.user_id] = StoredUser(future, None, None, None)

    out = handle(
        scorer,
        [
            event(broken, "login", T0, 1),
            event(fine, "login", T0, 2),
            event(broken, "session_start", T0 + 60, 3),
        ],
        start=20,
    )

    assert [d.source.offset for d in out.dead] == [20, 22]
    assert all("stored feature state unreadable: unknown format 5" in d.reason for d in out.dead)
    assert store.rows[broken.user_id].features == future
    assert [w.user_id for w in store.saves[-1]] == [fine.user_id]
    assert out.unreadable == {
        "state": 1
    }  # the handler counts it: churnwatch_scorer_unreadable_total


def test_a_user_whose_alert_state_and_record_are_unreadable_is_scored_without_them() -> None:
    """Both are the scorer's own writes (corrupt, or a newer version's after a rollback):
    the user is scored as if the policy and the segments saw it first, the unreadable
    values are replaced and counted, and its events are not set aside."""
    store, clock = FakeStore(), ManualClock(T0 + 1 * DAY)
    scorer = make_scorer(store, clock)
    scorer.rescore_every_s = 3600.0  # ordinary activity alone is not re-scored for an hour
    user = USERS[0]
    handle(scorer, [event(user, "login", T0, 1)])
    row = store.rows[user.user_id]
    store.rows[user.user_id] = StoredUser(row.features, b"\x03\x01", b"[1, 2]", None)

    out = handle(scorer, [event(user, "payment_failed", T0 + 60, 2)], start=1)

    assert out.dead == []
    assert out.unreadable == {"policy": 1, "record": 1}
    assert store.saves[-1][0].previous_stage == ANY_STAGE  # out of every other stage's index
    stored = store.rows[user.user_id]
    assert decode_state(stored.features).last_seen == int(T0 + 60)
    assert decode_record(stored.record)["band"] in ("low", "medium", "high", "critical")
    assert decode_policy(stored.policy) is not None
    # A record alone, and ordinary activity within the re-score interval: scored anyway,
    # so that the record is replaced now.
    policy = store.rows[user.user_id].policy
    store.rows[user.user_id] = StoredUser(store.rows[user.user_id].features, policy, b"[]", None)
    out = handle(scorer, [event(user, "login", T0 + 90, 3)], start=2)
    assert out.unreadable == {"record": 1} and out.users == 1
    assert decode_record(store.rows[user.user_id].record)["stage"]


def test_an_unreadable_record_is_replaced_even_when_the_batch_brings_nothing_new() -> None:
    """A batch of duplicates alone changes no state, but what could not be read is
    rewritten at once: counted once, not again at every batch that brings the user."""
    store, clock = FakeStore(), ManualClock(T0 + 1 * DAY)
    scorer = make_scorer(store, clock)
    user = USERS[0]
    login = event(user, "login", T0, 1)
    handle(scorer, [login])
    row = store.rows[user.user_id]
    store.rows[user.user_id] = StoredUser(row.features, row.policy, b"[]", None)

    first = handle(scorer, [login], start=1)
    again = handle(scorer, [login], start=2)

    assert first.duplicates == again.duplicates == 1
    assert first.unreadable == {"record": 1} and first.users == 1
    assert decode_record(store.rows[user.user_id].record)["stage"]
    assert again.unreadable == {} and again.users == 0
    assert store.rows[user.user_id].features == row.features  # the state is unchanged


def test_replay_mode_sets_aside_unreadable_stored_values_as_the_live_scorer_does() -> None:
    store, clock = FakeStore(), ManualClock(T0 + 1 * DAY)
    replay = ReplayScorer(
        store=store, core=make_core(ScorerSettings()), clock=clock, features=FeatureSettings()
    )
    broken, fine = USERS[0], USERS[1]
    handle(replay, [event(broken, "login", T0, 1), event(fine, "login", T0, 2)])
    store.rows[broken.user_id] = StoredUser(b"\x95\x05\x01\x02\x03\x04", None, None, None)
    row = store.rows[fine.user_id]
    store.rows[fine.user_id] = StoredUser(row.features, b"\x03", row.record, row.snapshot_day)

    out = handle(
        replay, [event(broken, "login", T0 + 60, 3), event(fine, "login", T0 + 60, 4)], start=2
    )

    assert [d.source.offset for d in out.dead] == [2]
    assert out.unreadable == {"state": 1, "policy": 1}
    assert decode_policy(store.rows[fine.user_id].policy) is not None


async def until_logged(events: list[str], entry: str) -> None:
    """Let the consumer run until ``entry`` is in ``events`` (or about 2 s went by)."""
    for _ in range(200):
        if entry in events:
            return
        await asyncio.sleep(0.01)


def consumer_on(kafka: FakeKafka, handler: Any, **options: Any) -> BatchConsumer:
    """A batch consumer of topic "t" on the fake ``kafka``, batches of up to 10 records."""
    return BatchConsumer(
        ScorerSettings(),
        topic="t",
        group="g",
        handler=handler,
        max_records=10,
        consumer=kafka,
        **options,
    )


def run_released(
    consumer: BatchConsumer, kafka: FakeKafka, log: list[str], entry: str, release: asyncio.Event
) -> None:
    """Run the consumer until ``entry`` is logged, then set ``release`` and let it drain and
    stop (``release`` holds a batch as a Redis wait would)."""

    async def scenario() -> None:
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        await until_logged(log, entry)
        release.set()
        await asyncio.wait_for(kafka.drained.wait(), 5)
        await consumer.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())


def test_a_commit_flies_while_the_next_batch_is_handled_and_lands_before_a_revoke() -> None:
    events: list[str] = []
    gate = asyncio.Event()

    class SlowCommits(FakeKafka):
        async def commit(self, offsets: dict[Any, Any]) -> None:
            events.append(f"commit {len(self.commits)} sent")
            await gate.wait()
            await super().commit(offsets)
            events.append(f"commit {len(self.commits) - 1} landed")

    async def note(records: list[Record], prepared: Any) -> None:
        events.append(f"handle {records[0].offset}")

    kafka = SlowCommits([records([b"a"]), records([b"b"], start=1), records([b"c"], start=2)])
    consumer = BatchConsumer(
        ScorerSettings(), topic="t", group="g", handler=note, max_records=10, consumer=kafka
    )

    async def scenario() -> None:
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        await until_logged(events, "handle 1")
        await asyncio.sleep(0.05)
        assert "handle 1" in events, "the next batch is handled while a commit is in flight"
        # Batch 1 was handled while batch 0's commit was in flight; batch 1's commit
        # waits for batch 0's (in order), and batch 2 for batch 1.
        assert "commit 0 landed" not in events and "handle 2" not in events
        revoke = asyncio.create_task(kafka.listener.on_partitions_revoked([]))
        await asyncio.sleep(0.05)
        assert not revoke.done(), "a revoke waits for the commit in flight"
        gate.set()
        await asyncio.wait_for(revoke, 5)
        await asyncio.wait_for(kafka.drained.wait(), 5)
        await consumer.stop()
        await asyncio.wait_for(task, 5)

    asyncio.run(scenario())
    assert events.index("handle 1") < events.index("commit 0 landed")
    assert events.index("commit 0 landed") < events.index("commit 1 sent")
    # Batch 2 was fetched (and decoded ahead) before the revoke: it is dropped, not
    # handled, and its offset is not committed; its owner reads it again.
    assert "handle 2" not in events
    assert kafka.commits == [{("user-events", 0): n} for n in (1, 2)]


def test_the_next_batch_is_prepared_while_one_is_handled_and_handed_over_with_it() -> None:
    events: list[str] = []
    release = asyncio.Event()

    def prepare(records: list[Record]) -> str:
        events.append(f"prepare {records[0].offset}")
        return f"prepared {records[0].offset}"

    async def handle(records: list[Record], prepared: Any) -> None:
        events.append(f"handle {records[0].offset} with {prepared}")
        if records[0].offset == 0:
            await release.wait()  # as a batch waits on Redis
        events.append(f"done {records[0].offset}")

    kafka = FakeKafka([records([b"a"]), records([b"b"], start=1)])
    consumer = BatchConsumer(
        ScorerSettings(),
        topic="t",
        group="g",
        handler=handle,
        prepare=prepare,
        max_records=10,
        consumer=kafka,
    )

    run_released(consumer, kafka, events, "prepare 1", release)
    each = [f"{step} {n}" for n in (0, 1) for step in ("prepare", "done")]
    assert sorted(events) == sorted([*each, "handle 0 with prepared 0", "handle 1 with prepared 1"])
    assert events.index("prepare 1") < events.index("done 0")  # while batch 0 waits
    assert events.index("done 0") < events.index("handle 1 with prepared 1")  # then in turn
    assert kafka.commits == [{("user-events", 0): 1}, {("user-events", 0): 2}]


def test_the_next_batchs_users_are_scored_while_one_is_handled_but_not_its_own() -> None:
    log: list[str] = []
    release = asyncio.Event()

    class SlowStore(FakeStore):
        async def load(self, user_ids: list[str]) -> dict[str, StoredUser]:
            log.append(f"load {sorted(user_ids)}")
            return await super().load(user_ids)

        async def save(self, writes: list[UserWrite]) -> None:
            log.append(f"save {sorted(w.user_id for w in writes)}")
            await release.wait()  # the batch in hand waits on Redis
            await super().save(writes)
            log.append(f"saved {sorted(w.user_id for w in writes)}")

    store = SlowStore()
    scorer = make_scorer(store, ManualClock(T0 + 3600))
    score_user = scorer.core.score_user

    def logged(uid: str, *args: Any, **kw: Any) -> Any:
        log.append(f"score {uid}")
        return score_user(uid, *args, **kw)

    scorer.core.score_user = logged  # type: ignore[method-assign]
    a, b, c = USERS
    first = records([event(a, "login", T0, 1), event(b, "login", T0, 1)])
    second = records([event(b, "login", T0 + 60, 2), event(c, "login", T0 + 60, 1)], start=2)
    kafka = FakeKafka([first, second])
    consumer = consumer_on(kafka, scorer.handle, prepare=ScoreAheadStep(lambda: scorer))

    run_released(consumer, kafka, log, "score svc-2", release)
    # svc-2 is scored once the first batch's write is out and before it lands (its row
    # read by then, when exactly is the event loop's order); svc-1, whose row that write
    # changes, is read and scored only after it lands.
    assert log.index("load ['svc-2']") < log.index("saved ['svc-0', 'svc-1']")
    assert [entry for entry in log if entry != "load ['svc-2']"] == [
        "load ['svc-0', 'svc-1']",
        "score svc-0",
        "score svc-1",
        "save ['svc-0', 'svc-1']",
        "score svc-2",
        "saved ['svc-0', 'svc-1']",
        "load ['svc-1']",
        "score svc-1",
        "save ['svc-1', 'svc-2']",
        "saved ['svc-1', 'svc-2']",
    ]
    features = store.rows["svc-1"].features
    assert features is not None and len(decode_state(features).seen) == 2  # both events


def test_a_batch_retried_after_a_failed_write_reads_and_scores_its_users_again() -> None:
    class LandsThenFails(FakeStore):
        failed = False

        async def save(self, writes: list[UserWrite]) -> None:
            await super().save(writes)
            if not self.failed:  # a timeout after Redis ran the write
                self.failed = True
                raise StoreUnavailable("timed out")

    scorer = make_scorer(LandsThenFails(), ManualClock(T0 + 3600))
    batch = records([event(USERS[0], "login", T0, 1)])

    async def scenario() -> Outcome:
        decoded = ScoreAheadStep(lambda: scorer)(batch)
        with pytest.raises(StoreUnavailable):
            await scorer.handle(batch, decoded)
        return await scorer.handle(batch, decoded)  # as the handler's retry does

    out = asyncio.run(scenario())
    # The login landed with the failed write: the retry finds it applied and writes
    # nothing (its users' writes scored ahead, from the rows before, would apply it twice).
    assert (out.users, out.duplicates) == (0, 1)


def test_a_batch_prepared_and_never_handled_lets_its_scoring_end() -> None:
    scorer = make_scorer(FakeStore(), ManualClock(T0 + 3600))
    a, b, _ = USERS

    async def scenario() -> frozenset[str]:
        step = ScoreAheadStep(lambda: scorer)
        dropped = step(records([event(a, "login", T0, 1)]))  # revoked before its turn
        step(records([event(b, "login", T0, 1)], start=1))
        assert dropped.ahead is not None
        scored = await asyncio.wait_for(dropped.ahead.scored, 2)  # not left pending
        return scored.users

    assert asyncio.run(scenario()) == {a.user_id}


def test_a_batch_prepared_after_the_one_in_hand_wrote_is_scored_at_once() -> None:
    """Light load: nothing holds the CPU, so its users are scored without waiting for
    their turn; the batch prepared after it waits for its write, as under load."""
    scorer = make_scorer(FakeStore(), ManualClock(T0 + 3600))
    step = ScoreAheadStep(lambda: scorer)
    a, b, c = USERS

    async def scenario() -> bool:
        first = records([event(a, "login", T0, 1)])
        await scorer.handle(first, step(first))  # done: nothing in hand
        second = step(records([event(b, "login", T0, 1)], start=1))
        assert second.ahead is not None
        await asyncio.wait_for(asyncio.shield(second.ahead.scored), 2)  # before its turn
        third = step(records([event(c, "login", T0, 1)], start=2))
        assert third.ahead is not None
        await asyncio.sleep(0.05)
        return third.ahead.scored.done()

    assert asyncio.run(scenario()) is False  # waits for the second one's write


def spaced_commits(
    every_s: float, ending: str
) -> tuple[list[dict[tuple[str, int], int]], list[dict[tuple[str, int], int]]]:
    """Three one-record batches through a consumer that commits at most every ``every_s``:
    the commits made once they are handled, and those made by the end of ``ending`` (a
    wait past the interval, a revoke, or a stop)."""
    events: list[str] = []

    async def note(records: list[Record], prepared: Any) -> None:
        events.append(f"handle {records[0].offset}")

    kafka = FakeKafka([records([b"a"]), records([b"b"], start=1), records([b"c"], start=2)])
    consumer = consumer_on(kafka, note, commit_every_s=every_s)
    handled: list[dict[tuple[str, int], int]] = []

    async def scenario() -> None:
        await consumer.start()
        task = asyncio.create_task(consumer.run())
        await until_logged(events, "handle 2")
        await asyncio.sleep(0.01)
        handled.extend(kafka.commits)
        if ending == "wait":
            for _ in range(100):  # the first commit went out at once, the next one is due then
                if len(kafka.commits) > 1:
                    break
                await asyncio.sleep(every_s / 10)
        elif ending == "revoke":
            await kafka.listener.on_partitions_revoked([])
        ended.extend(kafka.commits)  # before the stop, which commits what still waits
        await consumer.stop()
        await asyncio.wait_for(task, 5)
        if ending == "stop":
            ended[:] = kafka.commits

    ended: list[dict[tuple[str, int], int]] = []
    asyncio.run(scenario())
    return handled, ended


def test_offsets_wait_for_the_commit_interval_then_go_out_without_a_new_batch() -> None:
    handled, commits = spaced_commits(0.2, "wait")
    # The first batch commits at once; the two handled within the interval wait, merged,
    # and are sent when it is up although no batch came after them.
    assert handled == [{("user-events", 0): 1}]
    assert commits == [{("user-events", 0): 1}, {("user-events", 0): 3}]


def test_a_revoke_commits_the_offsets_still_waiting_before_the_partitions_go() -> None:
    handled, commits = spaced_commits(60.0, "revoke")
    assert handled == [{("user-events", 0): 1}]
    assert commits == [{("user-events", 0): 1}, {("user-events", 0): 3}]


def test_a_stop_commits_the_offsets_still_waiting() -> None:
    handled, commits = spaced_commits(60.0, "stop")
    assert handled == [{("user-events", 0): 1}]
    assert commits == [{("user-events", 0): 1}, {("user-events", 0): 3}]


def rescores_per_second(spread: float) -> list[int]:
    """200 users first scored in the same second, then one login each a second for
    two minutes: how many of them each second's batch re-scores."""
    users = [SimUser(f"wave-{i}", "loyal", "UTC", "premium", 1.0) for i in range(200)]
    store, clock = FakeStore(), ManualClock(T0)
    scorer = BatchScorer(
        store=store,
        core=make_core(ScorerSettings()),
        clock=clock,
        features=FeatureSettings(),
        rescore_every_s=60.0,
        rescore_spread=spread,
    )
    counts = []
    for k in range(121):
        clock.set(T0 + k)
        outcome = handle(scorer, [event(u, "login", T0 + k, k) for u in users], start=k * 200)
        counts.append(sum(outcome.bands.values()))
    return counts


def test_users_first_scored_together_do_not_come_due_together() -> None:
    waves = rescores_per_second(0.0)
    assert waves[0] == 200 and waves[60] == 200 and waves[120] == 200  # the wave
    assert sum(waves) == 600
    spread = rescores_per_second(0.5)
    assert spread[0] == 200
    # Each user once more 60-90 s later (the next time falls past the two minutes),
    # and no second carries more than a small share of them.
    assert sum(spread[60:91]) == sum(spread[1:]) == 200
    assert max(spread[1:]) <= 20

"""A replay in process (``services.offline_replay``): the scorer's replay code on the
in-memory store. Its equality with a replay through Kafka and Redis is checked on the
real stack in ``tests/e2e/test_replay.py``."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson

from services.common.events import UserEvent, parse_time
from services.offline_replay import relearn, replay_in_process, replay_settings
from services.replay_scores import score_rows, stamp
from services.scorer.adapters.memory_store import MemoryUserStore, SortedIndex
from services.scorer.adapters.redis_layout import shard_of
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings, update_features
from services.scorer.core.model import ChurnModel
from services.scorer.core.river_pipeline import ModelSettings
from services.scorer.core.state_codec import encode_state
from services.scorer.rows import UserWrite
from services.scorer.wiring import policy_settings
from services.sim.generator import history, make_users

START = 1_780_000_000.0


def lines(users: int = 30, days: int = 60) -> list[tuple[float, bytes]]:
    events = []
    for user in make_users(users, seed=3):
        events += history(user, start=START, days=days, seed=3)
    out = [(parse_time(e["occurred_at"], path="t").timestamp(), orjson.dumps(e)) for e in events]
    return sorted(out, key=lambda pair: pair[0])


def test_offline_replay_learns_and_scores_every_user_at_each_cut() -> None:
    history_ = lines()
    cuts = [START + 50 * 86_400, START + 60 * 86_400]
    result = replay_in_process(history_, cuts=cuts, progress=lambda _: None)
    assert result.events == sum(1 for ts, _ in history_ if ts < cuts[-1])
    first, last = result.models[cuts[0]], result.models[cuts[1]]
    assert 0 < first.learned < last.learned  # labels resolved and were learned
    rows = result.scores[cuts[1]]
    assert {r["user_id"] for r in rows} == {u.user_id for u in make_users(30, seed=3)}
    assert {r["as_of"] for r in rows} == {stamp(cuts[1])}
    assert result.alerts and result.dead == 0


def test_offline_replay_does_not_depend_on_batch_size() -> None:
    """Replay mode scores per event and sweeps at event-time ticks, so how the stream is
    cut into micro-batches (Kafka's business) changes nothing: the premise of using this
    path for the pipeline's figures."""
    history_ = lines(users=20, days=50)
    cut = START + 50 * 86_400
    big = replay_in_process(history_, cuts=[cut], progress=lambda _: None)
    small = replay_in_process(
        history_, cuts=[cut], settings=replay_settings(scorer_batch_size=7), progress=lambda _: None
    )
    assert big.scores == small.scores
    assert big.models[cut].version == small.models[cut].version  # the same labels, in order


def test_memory_store_index_order_is_redis_scan_order() -> None:
    """Shard by shard, by score within a shard, then by member, cut at the limit: the
    order ``SCAN_SHARDS`` returns, which decides the order labels are learned in."""
    ix = SortedIndex(shards=8)
    members = [f"u{i}" for i in range(40)]
    for i, m in enumerate(members):
        ix.add(m, float(i % 5))
    expected = sorted(members, key=lambda m: (shard_of(m, 8), float(int(m[1:]) % 5), m))
    assert ix.up_to(10.0) == expected
    assert ix.up_to(10.0, limit=7) == expected[:7]
    assert ix.up_to(1.0) == [m for m in expected if int(m[1:]) % 5 <= 1]
    assert ix.between([(1.0, 2.0), (4.0, 9.0)]) == [m for m in expected if int(m[1:]) % 5 in (1, 4)]


def test_memory_store_keeps_what_put_user_keeps() -> None:
    store = MemoryUserStore(index_shards=4)

    def write(**kw: object) -> UserWrite:
        base: dict[str, object] = {"user_id": "u", "features": b"F", "policy": None}
        base |= {"record": None, "last_active": 10.0, "risk": None}
        return UserWrite(**(base | kw))  # type: ignore[arg-type]

    async def scenario() -> None:
        await store.save([write(policy=b"P", record=b"R", snapshot=b"s1", snapshot_day=3)])
        await store.save([write(features=b"G", label_due=50.0)])  # not re-scored: keeps P, R
        await store.save([write(features=b"G", snapshot=b"s2", snapshot_day=4, label_due=70.0)])
        row = (await store.load(["u"]))["u"]
        assert (row.features, row.policy, row.record, row.snapshot_day) == (b"G", b"P", b"R", 4)
        assert await store.load_snapshots(["u"]) == {"u": (b"G", [b"s1", b"s2"])}
        assert await store.users_with_labels_due(50.0, limit=10) == ["u"]
        await store.keep_snapshots({"u": (1, 90.0)})
        assert await store.load_snapshots(["u"]) == {"u": (b"G", [b"s2"])}
        assert await store.users_with_labels_due(89.0, limit=10) == []
        await store.keep_snapshots({"u": (1, None)})
        assert await store.users_with_labels_due(1e9, limit=10) == []

    asyncio.run(scenario())


def test_relearn_on_the_recorded_labels_gives_the_replays_scores() -> None:
    """The model sees a replay only through learn() and score(): the recorded label
    stream and vectors give a model's scores without replaying (model-only changes)."""
    history_ = lines(users=20, days=50)
    cut = START + 50 * 86_400
    result = replay_in_process(history_, cuts=[cut], progress=lambda _: None, record=True)
    assert len(result.labels) == result.models[cut].learned > 0
    published = {row["user_id"]: row["risk"] for row in result.scores[cut]}
    assert relearn(result.labels, result.vectors[cut]) == published
    other = relearn(
        result.labels, result.vectors[cut], settings=ModelSettings(prior_weight_labels=0)
    )
    assert other != published


def test_score_rows_band_by_the_scorer_policy() -> None:
    """scores.csv's band is the one the worker would give, custom thresholds included."""
    seen = datetime(2026, 1, 1, tzinfo=UTC)
    state = update_features(None, UserEvent("e1", "u1", "login", seen), settings=FeatureSettings())
    stored = [("u1", encode_state(state), None)]
    as_of = seen.timestamp() + 40 * 86_400  # silent for 40 days: the prior's high risk
    [default] = score_rows(stored, as_of=as_of, model=ChurnModel())
    strict = policy_settings(
        ScorerSettings(scorer_band_high=99, scorer_band_critical=100, scorer_rearm_below=50)
    )
    [custom] = score_rows(stored, as_of=as_of, model=ChurnModel(), policy=strict)
    assert default["score"] == custom["score"] < 99
    assert default["band"] in ("high", "critical") and custom["band"] == "medium"

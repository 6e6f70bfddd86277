"""Stored formats: what an older churnwatch wrote still loads, and moves on its next write.

The layout before the compact one (docs/operations.md, "Upgrading the Redis
layout"): the user's hash ``P:{uid}:u`` with ``f`` (feature state, JSON),
``p``, ``r`` (JSON score record) and ``sd``; snapshots in the list
``P:{uid}:snap`` (deflated JSON); one unsharded sorted set each for last
activity and label due times. Each test runs on one Redis and on a cluster.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from services.common.events import UserEvent
from services.common.redis_client import async_redis, sync_redis
from services.common.settings import CommonSettings
from services.scorer.adapters.redis_store import (
    INDEX_SHARDS,
    RedisUserStore,
    join_user,
    pack_snapshot,
    shard_of,
    split_user,
    user_key,
)
from services.scorer.core.feature_ids import FEATURES
from services.scorer.core.features import FeatureSettings, apply_batch
from services.scorer.core.labels import take_snapshot
from services.scorer.core.records import decode_record, encode_record
from services.scorer.core.snapshot_codec import decode_snapshot, encode_snapshot
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.queries import RiskQueries
from services.scorer.rows import UserWrite
from tests.unit.test_features import as_json

pytestmark = pytest.mark.integration

NOW = 1_790_000_000.0
DAY = 86_400
OLD_RECORD = orjson.dumps(
    {
        "risk": 0.81,
        "score": 81,
        "band": "high",
        "stage": "at-risk",
        "tier": "low",
        "reasons": [["recency_days", 0.4, 9.0]],
        "model_version": "w1@7",
        "updated_at": NOW,
    }
)
OLD_POLICY = b'["high",false,null,81,1790000000.0,81,1790000000.0]'
WINBACK = b'{"at": 1790000000.0, "playbook": "p", "group": "treated"}'


@pytest.fixture(params=["redis", "redis-cluster"])
def settings(request: pytest.FixtureRequest) -> CommonSettings:
    name = "redis_cluster" if request.param == "redis-cluster" else "stack"
    base: CommonSettings = request.getfixturevalue(name)
    return base.model_copy(update={"key_prefix": f"t{uuid.uuid4().hex[:8]}"})


@pytest.fixture
def sync(settings: CommonSettings) -> Iterator[Any]:
    r = sync_redis(settings.redis_url, cluster=settings.redis_cluster)
    yield r
    r.close()


def run(settings: CommonSettings, body: Any) -> Any:
    async def main() -> Any:
        client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
        store = RedisUserStore(client, prefix=settings.key_prefix, user_ttl_s=3600)
        try:
            return await body(store, RiskQueries(client, prefix=settings.key_prefix))
        finally:
            await client.aclose()

    return asyncio.run(main())


def old_state_json() -> tuple[bytes, bytes]:
    """A feature state as format 2 stored it (JSON, seen ids in base64), and as now."""
    events = [
        UserEvent(f"e{i}", "u1", "login", datetime.fromtimestamp(NOW - i * 3600, UTC))
        for i in range(3)
    ]
    state, _ = apply_batch(None, events, settings=FeatureSettings())
    assert state is not None
    return as_json(state), encode_state(state)


def old_snapshot() -> bytes:
    snap = take_snapshot("u1", dict.fromkeys(FEATURES, 1.5), taken_at=NOW - DAY, raw=0.1, risk=0.2)
    return pack_snapshot(orjson.dumps(snap.to_dict()))


def write_old_layout(sync: Any, prefix: str) -> bytes:
    old_features, _ = old_state_json()
    hash_key = user_key(prefix, "u1")
    sync.hset(
        hash_key,
        mapping={
            "f": old_features,
            "p": OLD_POLICY,
            "r": OLD_RECORD,
            "sd": int(NOW // DAY) - 1,
            "wbid": "a1",
            "wb": WINBACK,
        },
    )
    sync.rpush(user_key(prefix, "u1", "snap"), old_snapshot())
    sync.zadd(f"{prefix}:lastseen", {"u1": NOW})
    sync.zadd(f"{prefix}:snapdue", {"u1": NOW + DAY})
    sync.zadd(f"{prefix}:atrisk:at-risk", {"u1": 0.81})
    return old_features


def test_an_old_format_user_still_loads_and_is_found(settings: CommonSettings, sync: Any) -> None:
    prefix = settings.key_prefix
    old_features = write_old_layout(sync, prefix)

    async def body(store: RedisUserStore, queries: RiskQueries) -> None:
        row = (await store.load(["u1"]))["u1"]
        assert (row.features, row.policy, row.record) == (old_features, OLD_POLICY, OLD_RECORD)
        assert row.snapshot_day == int(NOW // DAY) - 1 and row.winback == WINBACK
        assert decode_state(row.features or b"").last_seen == int(NOW)
        assert await store.silent_between([(NOW - 1, NOW + 1)]) == ["u1"]
        assert await store.users_with_labels_due(NOW + 2 * DAY, limit=10) == ["u1"]
        features, snaps = (await store.load_snapshots(["u1"]))["u1"]
        assert features == old_features
        assert decode_snapshot(snaps[0], "u1").features == dict.fromkeys(FEATURES, 1.5)
        user = await queries.user("u1")
        assert user is not None and user["band"] == "high" and user["percentile"] == 100.0
        assert user["reasons"][0]["feature"] == "recency_days"
        page = await queries.at_risk(limit=5)
        assert [row["user_id"] for row in page["items"]] == ["u1"]

    run(settings, body)


def test_the_next_write_moves_an_old_user_into_the_new_layout(
    settings: CommonSettings, sync: Any
) -> None:
    prefix = settings.key_prefix
    write_old_layout(sync, prefix)
    _, features = old_state_json()
    snap = take_snapshot("u1", dict.fromkeys(FEATURES, 3.0), taken_at=NOW, raw=0.3, risk=0.4)
    # Not re-scored (no record, no policy): they are carried over from the old hash.
    write = UserWrite(
        "u1",
        features,
        None,
        None,
        NOW + 60,
        None,
        snapshot=encode_snapshot(snap),
        snapshot_day=int(NOW // DAY),
        label_due=NOW + 14 * DAY,
    )

    async def body(store: RedisUserStore, queries: RiskQueries) -> None:
        await store.save([write])
        row = (await store.load(["u1"]))["u1"]
        assert (row.features, row.policy, row.record) == (features, OLD_POLICY, OLD_RECORD)
        assert row.snapshot_day == int(NOW // DAY) and row.winback == WINBACK
        # The old list's snapshot first (older), then the new one in the user's string.
        _, snaps = (await store.load_snapshots(["u1"]))["u1"]
        assert [decode_snapshot(s, "u1").risk for s in snaps] == pytest.approx([0.2, 0.4])
        assert await store.silent_between([(NOW, NOW + 120)]) == ["u1"]
        assert await store.users_with_labels_due(NOW + 2 * DAY, limit=10) == ["u1"]
        await store.keep_snapshots({"u1": (1, NOW + 14 * DAY)})
        _, snaps = (await store.load_snapshots(["u1"]))["u1"]
        assert [decode_snapshot(s, "u1").risk for s in snaps] == pytest.approx([0.4])
        assert await store.users_with_labels_due(NOW + 2 * DAY, limit=10) == []
        await store.keep_snapshots({"u1": (1, None)})
        assert (await store.load_snapshots(["u1"]))["u1"] == (features, [])
        user = await queries.user("u1")
        assert user is not None and user["band"] == "high"

    run(settings, body)
    # The old hash keeps only the notifier's fields; the old list and index entries are gone.
    assert sync.hgetall(user_key(prefix, "u1")) == {b"wbid": b"a1", b"wb": WINBACK}
    assert not sync.exists(user_key(prefix, "u1", "snap"))
    assert sync.zscore(f"{prefix}:lastseen", "u1") is None
    shard = shard_of("u1", INDEX_SHARDS)
    assert sync.zscore(f"{prefix}:lastseen:{shard}", "u1") == NOW + 60
    assert sync.zscore(f"{prefix}:snapdue", "u1") is None
    assert sync.ttl(user_key(prefix, "u1")) > 0  # the notifier's hash expires with the user


def test_the_script_builds_the_string_join_user_describes(
    settings: CommonSettings, sync: Any
) -> None:
    prefix = settings.key_prefix
    _, features = old_state_json()
    record = b"\x01" + b"r" * 40
    snaps = [b"\x02" + bytes([i]) * 30 for i in range(3)]
    writes = [
        UserWrite("u2", features, b"[1]", record, NOW, 0.5, snapshot=snaps[0], snapshot_day=10),
        UserWrite("u2", features, None, None, NOW, None, snapshot=snaps[1], snapshot_day=11),
        UserWrite("u2", features, b"[2]", record, NOW, 0.5, snapshot=snaps[2], snapshot_day=12),
        UserWrite("u2", features, None, None, NOW, None),
    ]

    async def body(store: RedisUserStore, queries: RiskQueries) -> None:
        for w in writes:
            await store.save([w])
        await store.keep_snapshots({"u2": (1, None)})

    run(settings, body)
    blob = sync.get(user_key(prefix, "u2", "s"))
    assert blob == join_user(
        features=features, record=record, policy=b"[2]", snapshot_day=12, snapshots=snaps[1:]
    )
    assert split_user(blob).snapshots == snaps[1:]
    assert decode_record(OLD_RECORD)["band"] == "high"  # JSON records still decode


def test_paging_the_sharded_at_risk_indexes_gives_every_user_once_in_order(
    settings: CommonSettings, sync: Any
) -> None:
    """Ties in risk across stages and shards, and an old unsharded stage index."""
    _, features = old_state_json()
    stages = ["active", "at-risk", "dormant"]
    users = {f"p{i:02d}": ((0.1, 0.5, 0.9)[i % 3], stages[i % 7 % 3]) for i in range(60)}
    writes = []
    for uid, (risk, stage) in users.items():
        rec = encode_record(
            {
                "risk": risk,
                "score": round(risk * 100),
                "band": "high",
                "stage": stage,
                "tier": "low",
                "reasons": [],
                "model_version": "m",
                "updated_at": NOW,
            }
        )
        writes.append(UserWrite(uid, features, b"[]", rec, NOW, risk, stage=stage))
    old_uid = "p99"  # written before the sharding: in P:atrisk:<stage> only
    sync.zadd(f"{settings.key_prefix}:atrisk:dormant", {old_uid: 0.5})
    users[old_uid] = (0.5, "dormant")
    writes.append(UserWrite(old_uid, features, b"[]", writes[0].record, NOW, None))

    async def body(store: RedisUserStore, queries: RiskQueries) -> list[list[str]]:
        await store.save(writes)
        pages, cursor = [], None
        while True:
            page = await queries.at_risk(limit=7, cursor=cursor)
            pages.append([row["user_id"] for row in page["items"]])
            cursor = page["next_cursor"]
            if cursor is None:
                return pages

    pages = run(settings, body)
    got = [uid for page in pages for uid in page]
    assert got == sorted(users, key=lambda u: (users[u][0], u), reverse=True)
    assert all(len(page) == 7 for page in pages[:-1])

    async def one(store: RedisUserStore, queries: RiskQueries) -> Any:
        return await queries.user("p04"), await queries.at_risk(limit=100, stage="at-risk")

    user, stage_page = run(settings, one)
    risk, stage = users["p04"]
    same_stage = [u for u, (_, st) in users.items() if st == stage]
    below = [u for u in same_stage if users[u][0] <= risk]
    assert stage == "at-risk" and 0 < len(below) < len(same_stage)
    assert user["percentile"] == round(100 * len(below) / len(same_stage), 2)
    assert sorted(row["user_id"] for row in stage_page["items"]) == sorted(same_stage)

"""An erased user's later events do not bring the user back, on real Kafka and Redis;
nor does a backfill, which also leaves out what a stopped one applied.

The erase (the risk API's DELETE, ``AdminCommands.erase``) leaves the guard
``P:{uid}:erased`` for 14 days. Events of the user that reach the scorer under
it (still on the topic, redelivered after a crash, or sent by a product that
has not stopped) are dropped and counted, not stored again; the other users of
the same batches go on. Then the race the guard closes in the store: a batch
that read the user before the erase and writes after it writes nothing of the
user. Both on one Redis and on a Redis Cluster (where the guard is read in the
user's own slot, declared to the script). The memory store keeps the guard as
Redis does: ``test_memory_store_contract``.
"""

from __future__ import annotations

import asyncio
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.backfill_history import to_apply
from services.common.events import UserEvent
from services.common.redis_client import async_redis, sync_redis
from services.launcher import Services
from services.notifier.adapters.redis_directory import erased_key
from services.scorer.adapters.redis_store import RedisUserStore, split_user, user_key
from services.scorer.api.commands import AdminCommands
from services.scorer.core.features import FeatureSettings, apply_batch
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.rows import UserWrite
from services.sim.generator import event, make_users
from tests.conftest import Isolated, left_after_erase, scraped, wait_for
from tests.integration.test_features_redis import produce

pytestmark = pytest.mark.integration


def last_seen(r: Any, prefix: str, uid: str) -> int:
    blob = r.get(user_key(prefix, uid, "s"))
    return decode_state(split_user(blob, snapshots=False).features).last_seen if blob else 0


def erased_events_counted(isolated: Isolated) -> float:
    return scraped(isolated.url("scorer"), "churnwatch_scorer_erased_events_total")


def test_events_after_an_erase_are_dropped_and_counted(
    isolated_each: Isolated, tmp_path: Path
) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    gone, stays = make_users(2, seed=5)
    now = time.time()

    def stored(uid: str) -> bool:
        return bool(r.exists(user_key(prefix, uid, "s")))

    services = Services(isolated.settings, isolated.env, names=("scorer",), logs=tmp_path)
    try:
        services.start()
        produce(
            isolated,
            [
                event(gone, "signup", now - 3_600, 1),
                event(gone, "login", now - 3_000, 2),
                event(stays, "signup", now - 3_600, 3),
            ],
        )
        wait_for(lambda: stored(gone.user_id) and stored(stays.user_id), services=services)

        answer = asyncio.run(erase(isolated, gone.user_id))
        assert "s" in answer["removed_keys"]

        # The erased user's events come on; the other user's last event marks the end.
        produce(
            isolated,
            [
                event(gone, "login", now - 600, 4),
                event(gone, "page_view", now - 500, 5),
                event(gone, "login", now - 3_000, 2),  # a redelivered one (same event_id)
                event(stays, "login", now - 400, 6),
            ],
        )
        # Two users, maybe two partitions: each has its own signal that it was handled.
        wait_for(lambda: last_seen(r, prefix, stays.user_id) == int(now - 400), services=services)
        wait_for(lambda: erased_events_counted(isolated) == 3, services=services)
        assert left_after_erase(r, prefix, gone.user_id) == []
        services.check()
    finally:
        services.stop()
    assert "Traceback" not in (tmp_path / "scorer.log").read_text()


def test_a_batch_that_read_the_user_before_the_erase_writes_nothing_of_it(
    isolated_each: Isolated,
) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    cluster = isolated.settings.redis_cluster

    async def scenario() -> dict[str, Any]:
        client = async_redis(isolated.settings.redis_url, cluster=cluster)
        store = RedisUserStore(client, prefix=prefix, user_ttl_s=3600, worker="w1")
        try:
            await store.save([write("e1"), write("e2")])
            read = await store.load(["e1", "e2"])  # the batch reads both ...
            await erase(isolated, "e1")  # ... the API erases one ...
            assert (await store.load(["e1"]))["e1"].erased
            await store.save([write("e1", alert=b"A"), write("e2", alert=b"B")])  # ... it writes
            return {
                "read": read,
                "after": await store.load(["e1", "e2"]),
                "last_seen": await store.silent_between([(0.0, 1e12)]),
            }
        finally:
            await client.aclose()

    found = asyncio.run(scenario())
    assert not found["read"]["e1"].erased and found["read"]["e1"].features == b"Fe1"
    assert found["after"]["e1"].erased and found["after"]["e1"].features is None
    assert found["after"]["e2"].features == b"Fe2" and not found["after"]["e2"].erased
    r = sync_redis(isolated.settings.redis_url, cluster=cluster)
    assert left_after_erase(r, prefix, "e1") == []  # nor its alert history
    assert r.lrange(user_key(prefix, "e2", "alerts"), 0, -1) == [b"B"]
    if not cluster:  # one Redis: the batch's index entries leave the user out too
        assert found["last_seen"] == ["e2"]
    assert r.exists(erased_key(prefix, "e1"))


def write(uid: str, alert: bytes | None = None) -> UserWrite:
    return UserWrite(
        uid,
        f"F{uid}".encode(),
        b"P",
        b"R",
        100.0,
        0.5,
        alert=alert,
        alert_id=f"a-{uid}" if alert else "",
        stage="active",
    )


async def erase(isolated: Isolated, user_id: str) -> dict[str, Any]:
    """What the risk API's ``DELETE /v1/users/{id}`` does."""
    settings = isolated.settings
    client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
    try:
        return await AdminCommands(client, prefix=settings.key_prefix).erase(user_id)
    finally:
        await client.aclose()


def test_a_user_still_in_the_old_hash_is_not_taken_for_erased(isolated: Isolated) -> None:
    """State wins over a guard (a half-done erase on a cluster can leave both): the user
    is read and written as usual, not dropped at every batch."""
    prefix = isolated.settings.key_prefix
    r = sync_redis(isolated.settings.redis_url)
    r.hset(user_key(prefix, "old1"), mapping={"f": b"Fold", "r": b"R"})
    r.set(erased_key(prefix, "old1"), "1", ex=60)

    async def scenario() -> tuple[Any, Any]:
        client = async_redis(isolated.settings.redis_url)
        store = RedisUserStore(client, prefix=prefix, user_ttl_s=3600)
        try:
            read = (await store.load(["old1"]))["old1"]
            await store.save([write("old1")])
            return read, (await store.load(["old1"]))["old1"]
        finally:
            await client.aclose()

    read, after = asyncio.run(scenario())
    assert not read.erased and read.features == b"Fold"
    assert not after.erased and after.features == b"Fold1"


def test_backfill_leaves_out_erased_users_and_what_was_applied(isolated: Isolated) -> None:
    prefix = isolated.settings.key_prefix
    r = sync_redis(isolated.settings.redis_url)
    r.set(erased_key(prefix, "gone"), "1", ex=60)
    state, _ = apply_batch(
        None,
        [UserEvent("k1", "kept", "login", datetime.fromtimestamp(1_000, UTC))],
        settings=FeatureSettings(),
    )
    assert state is not None
    r.hset(user_key(prefix, "kept"), mapping={"f": encode_state(state), "r": b"R"})
    r.set(user_key(prefix, "broken", "s"), b"\xc1\x05")  # a damaged user string

    def line(uid: str, ts: float | None) -> tuple[float, bytes]:
        when = "garbage" if ts is None else datetime.fromtimestamp(ts, UTC).isoformat()
        return (
            float("-inf") if ts is None else ts,
            orjson.dumps({"user_id": uid, "occurred_at": when}),
        )

    lines = [
        line("gone", None),  # its time unreadable, its user erased: left out all the same
        line("kept", None),  # kept: the scorer dead-letters it with the reason
        line("gone", 500.0),
        line("kept", 999.0),  # before the stored state's last event: applied already
        line("kept", 1_000.0),  # that second: kept, the scorer knows it by id
        line("broken", 10.0),  # a user string that cannot be read: kept, for the scorer
        line("new", 20.0),
        line("kept", 2_000.0),
    ]
    kept, erased, applied = to_apply(lines, r, prefix)
    assert (erased, applied) == (2, 1)
    assert kept == [lines[1], lines[4], lines[5], lines[6], lines[7]]

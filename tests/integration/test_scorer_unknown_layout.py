"""A user string the scorer cannot read stops nothing, on real Kafka and Redis.

``P:{uid}:s`` holds a user's score record, policy state, features and
snapshots behind a layout byte (``\\xc1``). A newer version's layout read after
a rollback, or a damaged string, is set aside like an unreadable feature state:
the user's events go to the dead-letter topic with the reason, the string is
left as it is (a roll forward reads it), and the other users of the same
batches go on. Before, the batch's read raised and the worker exited. The
label round passes over such a user too; the risk API answers a 500 that names
the value for that user, and leaves the user out of the at-risk list (before,
the whole list failed).
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import httpx
import pytest

from services.common.auth import RedisKeyStore, create_key
from services.common.redis_client import async_redis, sync_redis
from services.launcher import Services
from services.scorer.adapters.redis_layout import INDEX_SHARDS, shard_key
from services.scorer.adapters.redis_store import RedisUserStore, user_key
from services.scorer.core.labels import LabelSettings
from services.scorer.labelling import label_chunk
from services.sim.generator import event, make_users
from tests.conftest import Isolated, scraped, wait_for
from tests.integration.test_features_redis import dead_letters, produce
from tests.integration.test_scorer_erase_guard import last_seen

pytestmark = pytest.mark.integration

NEWER = b"\xc2\x00\x01a newer version's layout"


def unreadable_states(isolated: Isolated) -> float:
    series = 'churnwatch_scorer_unreadable_total{kind="state"}'
    return scraped(isolated.url("scorer"), series)


def test_a_user_string_of_another_layout_is_set_aside(
    isolated_each: Isolated, tmp_path: Path
) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    newer, other = make_users(2, seed=9)
    r.set(user_key(prefix, newer.user_id, "s"), NEWER)
    now = time.time()
    # Read first by the risk API too: it was in the at-risk index (scored before the rollback).
    r.zadd(shard_key(f"{prefix}:atrisk:active", newer.user_id, INDEX_SHARDS), {newer.user_id: 0.99})
    settings = isolated.settings
    keys = RedisKeyStore(settings.redis_url, key_prefix=prefix, cluster=settings.redis_cluster)
    read = create_key(keys, scopes=["read"])
    services = Services(isolated.settings, isolated.env, names=("scorer", "api"), logs=tmp_path)
    try:
        services.start()
        produce(
            isolated,
            [
                event(newer, "login", now - 600, 1),
                event(other, "signup", now - 600, 2),
                event(newer, "page_view", now - 500, 3),
                event(other, "login", now - 400, 4),
            ],
        )
        wait_for(lambda: last_seen(r, prefix, other.user_id) == int(now - 400), services=services)
        dead = dead_letters(isolated, 2)
        assert [d["source"]["key"] for d in dead] == [newer.user_id] * 2
        assert all("unreadable" in d["reason"] and d["stage"] == "scorer" for d in dead), dead
        wait_for(lambda: unreadable_states(isolated) >= 1, services=services)
        bearer = {"Authorization": f"Bearer {read}"}
        api = httpx.Client(base_url=isolated.url("api"), headers=bearer)
        answer = api.get(f"/v1/users/{newer.user_id}")
        assert answer.status_code == 500 and "user string unreadable" in answer.json()["error"]
        listed = api.get("/v1/at-risk", params={"limit": 50})
        assert listed.status_code == 200, listed.text
        users = [item["user_id"] for item in listed.json()["items"]]
        assert other.user_id in users and newer.user_id not in users
        services.check()
    finally:
        services.stop()
    assert r.get(user_key(prefix, newer.user_id, "s")) == NEWER  # left for a roll forward

    async def snapshots() -> dict[str, tuple[bytes | None, list[bytes]]]:
        client = async_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
        try:
            store = RedisUserStore(client, prefix=prefix, user_ttl_s=3600)
            return await store.load_snapshots([newer.user_id])
        finally:
            await client.aclose()

    unreadable: list[tuple[str, str]] = []
    remaining = label_chunk(
        asyncio.run(snapshots()),
        now=now,
        settings=LabelSettings(),
        labels=[],
        unreadable=unreadable,
    )
    assert [uid for uid, _ in unreadable] == [newer.user_id]
    assert remaining[newer.user_id][0] == 0  # nothing of it dropped: due again a day later

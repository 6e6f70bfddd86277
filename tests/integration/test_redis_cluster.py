"""The scorer's store and the risk API on a three-master Redis Cluster.

The cluster is the session's own (``redis_cluster`` in tests/conftest.py, the
code of ``churnwatch stack up --redis-cluster``). Users are written with
``RedisUserStore.save`` through a cluster client, so their keys spread over the
masters while the shared indexes sit in other slots; the API then answers
/v1/stats (DAU/WAU/MAU over the day HLLs), the at-risk list, a user, the model
figures (found by SCAN on every master) and an erase.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient

from services.common.auth import RedisKeyStore, create_key
from services.common.events import UserEvent
from services.common.redis_client import async_redis, sync_redis
from services.common.settings import CommonSettings
from services.notifier.adapters.redis_directory import RedisDirectory
from services.notifier.adapters.redis_queues import failed_key, failed_lease_key
from services.scorer.adapters.redis_store import INDEX_SHARDS, RedisUserStore, shard_of
from services.scorer.api import build_api
from services.scorer.config import ApiSettings
from services.scorer.core.features import FeatureSettings, apply_batch
from services.scorer.core.state_codec import encode_state
from services.scorer.rows import UserWrite
from tests.conftest import left_after_erase
from tests.service.test_risk_api import failed_delivery

pytestmark = pytest.mark.integration

NOW = time.time()
# user -> (risk, band, stage, days since last active)
USERS = {
    "c1": (0.95, "critical", "at-risk", 0),
    "c2": (0.80, "high", "dormant", 0),
    "c3": (0.70, "high", "at-risk", 3),
    "c4": (0.50, "medium", "active", 6),
    "c5": (0.20, "low", "loyal", 12),
    "c6": (0.10, "low", "loyal", 40),
}


def _writes() -> list[UserWrite]:
    writes = []
    for uid, (risk, band, stage, ago) in USERS.items():
        when = datetime.fromtimestamp(NOW, UTC) - timedelta(days=ago)
        state, _ = apply_batch(
            None, [UserEvent(f"{uid}-e", uid, "login", when)], settings=FeatureSettings()
        )
        assert state is not None
        record = {
            "risk": risk,
            "score": round(risk * 100),
            "band": band,
            "stage": stage,
            "tier": "high",
            "reasons": [["recency_days", 0.4, float(ago)]],
            "model_version": "cw1@2",
            "updated_at": NOW,
        }
        writes.append(
            UserWrite(
                user_id=uid,
                features=encode_state(state),
                policy=b"[]",
                record=orjson.dumps(record),
                last_active=float(state.last_active),
                risk=risk,
                stage=stage,
                snapshot=b'{"s": 1}',
                snapshot_day=int(NOW // 86400),
                active_days=(when.strftime("%Y%m%d"),),
                label_due=NOW + 86400,
            )
        )
    return writes


async def _seed(settings: CommonSettings, prefix: str) -> None:
    client = async_redis(settings.redis_url, cluster=True)
    store = RedisUserStore(client, prefix=prefix, user_ttl_s=3600, worker="cw1")
    writes = _writes()
    await store.save(writes)
    alert = orjson.dumps({"alert_id": "a1", "user_id": "c1", "band": "critical"})
    won = replace(writes[1], snapshot=None, winback="won", winback_counter="pb:treated")
    await store.save([replace(writes[0], alert=alert, alert_id="a1", snapshot=None), won])
    assert await store.outbox() == [alert]
    await store.published(["a1"])
    assert await store.outbox() == []
    assert sorted(await store.users_with_labels_due(NOW + 2 * 86400, limit=10)) == sorted(USERS)
    snaps = await store.load_snapshots(["c1", "c2"])
    assert [len(s) for _, s in snaps.values()] == [1, 1]
    await store.keep_snapshots({"c1": (1, None), "c2": (0, NOW + 3 * 86400)})
    assert sorted(await store.users_with_labels_due(NOW + 2 * 86400, limit=10)) == sorted(
        set(USERS) - {"c1", "c2"}
    )
    await client.set(f"{prefix}:winback:pb:treated:treated", 4)
    await store.save_quality("cw1", orjson.dumps({"model_version": "cw1@2", "saved_at": NOW}))
    await client.aclose()


class Api:
    def __init__(self, client: TestClient, prefix: str, read: str, admin: str) -> None:
        self.client, self.prefix, self.read, self.admin = client, prefix, read, admin

    def get(self, path: str) -> dict[str, Any]:
        reply = self.client.get(path, headers={"Authorization": f"Bearer {self.read}"})
        assert reply.status_code == 200, reply.text
        body: dict[str, Any] = reply.json()
        return body


@pytest.fixture(scope="module")
def api(redis_cluster: CommonSettings) -> Iterator[Api]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    asyncio.run(_seed(redis_cluster, prefix))
    keys = RedisKeyStore(redis_cluster.redis_url, key_prefix=prefix, cluster=True)
    read = create_key(keys, scopes=["read"], name="cluster-read")
    admin = create_key(keys, scopes=["admin"], name="cluster-admin")
    settings = ApiSettings(
        redis_url=redis_cluster.redis_url, redis_cluster=True, key_prefix=prefix, env="production"
    )
    # the seed's day, even when the run crosses midnight
    with TestClient(build_api(settings, clock=lambda: NOW)) as client:
        yield Api(client, prefix, read, admin)
    r = sync_redis(redis_cluster.redis_url, cluster=True)
    for key in list(r.scan_iter(match=f"{prefix}:*", count=1000)):
        r.delete(key)
    r.close()


def test_keys_spread_over_the_masters(api: Api, redis_cluster: CommonSettings) -> None:
    r = sync_redis(redis_cluster.redis_url, cluster=True)
    holding = [n for n in r.get_primaries() if r.dbsize(target_nodes=n)]
    assert len(holding) >= 2, "the test data sit on one master: it proves nothing"
    r.close()


def test_stats_on_a_cluster(api: Api) -> None:
    body = api.get("/v1/stats")
    assert body["active_users"] == {"dau": 2, "wau": 4, "mau": 5}
    assert body["users_by_stage"]["at-risk"] == 2 and body["users_by_stage"]["loyal"] == 2
    assert body["winback"] == {"pb": {"treated": {"treated": 4, "won": 1, "win_rate": 0.25}}}


def test_at_risk_user_and_model_on_a_cluster(api: Api) -> None:
    top = api.get("/v1/at-risk?limit=3")
    assert [row["user_id"] for row in top["items"]] == ["c1", "c2", "c3"]
    page = api.get(f"/v1/at-risk?limit=3&cursor={top['next_cursor']}")
    assert [row["user_id"] for row in page["items"]] == ["c4", "c5", "c6"]
    assert [row["user_id"] for row in api.get("/v1/at-risk?stage=at-risk")["items"]] == [
        "c1",
        "c3",
    ]
    user = api.get("/v1/users/c3")
    assert user["band"] == "high" and user["percentile"] == 50.0
    (worker,) = api.get("/v1/model")["workers"]
    assert worker["worker"] == "cw1" and worker["model_version"] == "cw1@2"


def test_erase_on_a_cluster(api: Api, redis_cluster: CommonSettings) -> None:
    gone = api.client.delete("/v1/users/c6", headers={"X-API-Key": api.admin}).json()
    assert "s" in gone["removed_keys"] and "lastseen" in gone["removed_from_indexes"]
    r = sync_redis(redis_cluster.redis_url, cluster=True)
    assert left_after_erase(r, api.prefix, "c6") == []
    shard = shard_of("c6", INDEX_SHARDS)
    assert r.zscore(f"{api.prefix}:lastseen:{shard}", "c6") is None
    r.close()


def test_erase_on_a_cluster_forgets_failed_deliveries(
    api: Api, redis_cluster: CommonSettings
) -> None:
    """The failed store, its leases and the user's keys sit in different slots."""

    async def fail_deliveries() -> None:
        client = async_redis(redis_cluster.redis_url, cluster=True)
        directory = RedisDirectory(client, prefix=api.prefix)
        for uid, action_id in (("c5", "f1"), ("c5", "f2"), ("c4", "f3")):
            await directory.remember_failed(failed_delivery(uid, action_id))
        assert await directory.claim_failed("f2", lease_s=60)  # a re-drive holds one
        await client.aclose()

    asyncio.run(fail_deliveries())
    gone = api.client.delete("/v1/users/c5", headers={"X-API-Key": api.admin})
    assert gone.status_code == 200
    r = sync_redis(redis_cluster.redis_url, cluster=True)
    assert sorted(r.hkeys(failed_key(api.prefix))) == [b"f3"]
    assert not r.exists(failed_lease_key(api.prefix, "f2"))
    assert left_after_erase(r, api.prefix, "c5") == []
    r.close()

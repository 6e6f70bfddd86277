"""The risk API through FastAPI's test client, on the real local Redis.

Users are written the way the scorer writes them (``RedisUserStore.save`` of
states folded by ``apply_batch``), actions the way the notifier records them
(``RedisDirectory.record``); every test has its own key prefix and its own
API keys, stored hashed under that prefix.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import redis
import redis.asyncio as aioredis
from fastapi.testclient import TestClient

from services.common.auth import RedisKeyStore, create_key
from services.common.events import UserEvent
from services.common.settings import CommonSettings
from services.notifier.adapters.redis_directory import RedisDirectory, erased_key
from services.notifier.adapters.redis_queues import failed_lease_key
from services.scorer.adapters.redis_store import INDEX_SHARDS, RedisUserStore, shard_of
from services.scorer.api import build_api
from services.scorer.config import ApiSettings
from services.scorer.core.features import FeatureSettings, apply_batch
from services.scorer.core.state_codec import encode_state
from services.scorer.core.vector import to_vector
from services.scorer.rows import ANY_STAGE, UserWrite
from tests.conftest import left_after_erase

pytestmark = pytest.mark.integration  # needs the real Redis of the local stack

NOW = time.time()
# user -> (risk, band, stage, tier); u3, u6a and u6b tie on risk.
USERS = {
    "u1": (0.95, "critical", "at-risk", "high"),
    "u2": (0.80, "high", "dormant", "medium"),
    "u3": (0.70, "high", "at-risk", "low"),
    "u6a": (0.70, "high", "at-risk", "high"),
    "u6b": (0.70, "high", "churned", "high"),
    "u4": (0.50, "medium", "active", "high"),
    "u5": (0.20, "low", "loyal", "high"),
}


@dataclass
class Seeded:
    prefix: str
    redis_url: str
    client: TestClient
    keys: dict[str, str]  # scope -> key
    vectors: dict[str, dict[str, float]]

    def h(self, scope: str = "read") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[scope]}"}


def record(risk: float, band: str, stage: str, tier: str, at: float) -> bytes:
    return orjson.dumps(
        {
            "risk": risk,
            "score": round(risk * 100),
            "band": band,
            "stage": stage,
            "tier": tier,
            "reasons": [["recency_days", 0.4, 9.0], ["events_7d", 0.1, 2.0]],
            "model_version": "w1@7",
            "updated_at": at,
        }
    )


async def seed(prefix: str, redis_url: str) -> dict[str, dict[str, float]]:
    """Write USERS as the scorer and the notifier would; returns each user's vector."""
    client = aioredis.Redis.from_url(redis_url)
    store = RedisUserStore(client, prefix=prefix, user_ttl_s=3600)
    today = datetime.fromtimestamp(NOW, UTC).strftime("%Y%m%d")
    vectors = {}
    writes = []
    for n, (uid, (risk, band, stage, tier)) in enumerate(USERS.items()):
        when = datetime.fromtimestamp(NOW, UTC) - timedelta(days=n)
        events = [UserEvent(f"{uid}-e{i}", uid, "login", when - timedelta(hours=i)) for i in (0, 1)]
        state, _ = apply_batch(None, events, settings=FeatureSettings())
        assert state is not None
        vectors[uid] = to_vector(state, NOW)
        writes.append(
            UserWrite(
                user_id=uid,
                features=encode_state(state),
                policy=b"[]",
                record=record(risk, band, stage, tier, NOW),
                last_active=float(state.last_active),
                risk=risk,
                stage=stage,
                snapshot=b'{"s": 1}',
                snapshot_day=int(NOW // 86400),
                active_days=(today,) if n < 3 else (),
                label_due=NOW + 86400,
            )
        )
    await store.save(writes)
    for i in range(3):  # three alerts for u1, the newest last
        alert = orjson.dumps({"alert_id": f"a{i}", "user_id": "u1", "band": "critical"})
        await store.save([replace(writes[0], alert=alert, snapshot=None)])
    directory = RedisDirectory(client, prefix=prefix)
    for i in range(2):
        action = {
            "action_id": f"x{i}",
            "alert_id": f"a{i}",
            "user_id": "u1",
            "status": "sent",
            "channel": "email",
        }
        wb = {"playbook": "pb-critical", "group": "treated"}
        await directory.record("u1", action, contacted=True, winback=wb)
    await directory.record(
        "u2",
        {
            "action_id": "y0",
            "alert_id": "b0",
            "user_id": "u2",
            "status": "control",
            "channel": "none",
        },
        contacted=False,
        winback={"playbook": "pb-critical", "group": "control"},
    )
    await directory.defer({"alert": {"user_id": "u1"}, "playbook": "pb", "decision": {}}, NOW)
    await directory.defer({"alert": {"user_id": "u1"}, "playbook": "pb2", "decision": {}}, NOW)
    await directory.defer({"alert": {"user_id": "u2"}, "playbook": "pb", "decision": {}}, NOW)
    quality = {
        "model_version": "w1@7",
        "saved_at": NOW - 30,
        "positives": 3,
        "negatives": 9,
        "threshold": 0.65,
        "metrics": {"roc_auc": 0.8, "log_loss": 0.4, "precision": 0.5, "recall": 1.0},
    }
    await store.save_quality("w1", orjson.dumps(quality))
    await client.aclose()
    return vectors


def drop_prefix(redis_url: str, prefix: str) -> None:
    r = redis.Redis.from_url(redis_url)
    for key in r.scan_iter(match=f"{prefix}:*", count=1000):
        r.delete(key)


@pytest.fixture
def api(stack: CommonSettings) -> Iterator[Seeded]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    vectors = asyncio.run(seed(prefix, stack.redis_url))
    store = RedisKeyStore(stack.redis_url, key_prefix=prefix)
    keys = {s: create_key(store, scopes=[s], name=f"test-{s}") for s in ("ingest", "read", "admin")}
    app = build_api(
        ApiSettings(redis_url=stack.redis_url, key_prefix=prefix, env="production"),
        clock=lambda: NOW,  # the seed's day, even when the run crosses midnight
    )
    with TestClient(app) as client:
        yield Seeded(prefix, stack.redis_url, client, keys, vectors)
    drop_prefix(stack.redis_url, prefix)


READ_ROUTES = [
    ("GET", "/v1/users/u1", None),
    ("GET", "/v1/users/u1/alerts", None),
    ("GET", "/v1/users/u1/actions", None),
    ("GET", "/v1/at-risk", None),
    ("GET", "/v1/stats", None),
    ("GET", "/v1/model", None),
]
ADMIN_ROUTES = [
    ("PUT", "/v1/users/u1/consent", {"channels": {"email": True}, "preferred": "email"}),
    ("PUT", "/v1/users/u1/contact", {"email": "ada@example.com"}),
    ("DELETE", "/v1/users/u1", None),
]


@pytest.mark.parametrize(("method", "path", "body"), READ_ROUTES + ADMIN_ROUTES)
def test_every_route_needs_a_key_with_its_scope(
    api: Seeded, method: str, path: str, body: Any
) -> None:
    admin = (method, path, body) in ADMIN_ROUTES
    call = api.client.request
    missing = call(method, path, json=body)
    assert missing.status_code == 401 and "API key" in missing.json()["error"]
    unknown = call(method, path, json=body, headers={"X-API-Key": "dev-key"})  # production
    assert unknown.status_code == 401
    wrong = call(method, path, json=body, headers=api.h("read" if admin else "ingest"))
    assert wrong.status_code == 403 and "scope" in wrong.json()["error"]
    right = call(method, path, json=body, headers=api.h("admin" if admin else "read"))
    assert right.status_code == 200, right.text


def test_health_ready_and_metrics_need_no_key(api: Seeded) -> None:
    assert api.client.get("/healthz").json() == {"status": "ok"}
    assert api.client.get("/readyz").json() == {"status": "ready"}
    api.client.get("/v1/stats", headers=api.h())
    assert "churnwatch_api_request_seconds" in api.client.get("/metrics/").text


def test_user_risk_has_features_segment_reasons_and_percentile(api: Seeded) -> None:
    body = api.client.get("/v1/users/u3", headers=api.h()).json()
    assert body["user_id"] == "u3"
    assert (body["risk"], body["score"], body["band"]) == (0.70, 70, "high")
    assert (body["stage"], body["tier"], body["model_version"]) == ("at-risk", "low", "w1@7")
    assert body["features"] == pytest.approx(api.vectors["u3"])
    assert body["reasons"][0] == {"feature": "recency_days", "contribution": 0.4, "value": 9.0}
    assert body["updated_at"].endswith("Z")
    # Within its stage (at-risk: u1, u3, u6a), 2 of the 3 have a risk at most 0.70.
    assert body["percentile"] == pytest.approx(100 * 2 / 3, abs=0.01)
    assert api.client.get("/v1/users/u1", headers=api.h()).json()["percentile"] == 100.0

    missing = api.client.get("/v1/users/nobody", headers=api.h())
    assert missing.status_code == 404 and "nobody" in missing.json()["error"]


def test_alert_and_action_history_newest_first_paginated(api: Seeded) -> None:
    alerts = api.client.get("/v1/users/u1/alerts?limit=2", headers=api.h()).json()
    assert alerts["total"] == 3
    assert [a["alert_id"] for a in alerts["items"]] == ["a2", "a1"]
    rest = api.client.get("/v1/users/u1/alerts?limit=2&offset=2", headers=api.h()).json()
    assert [a["alert_id"] for a in rest["items"]] == ["a0"]
    actions = api.client.get("/v1/users/u1/actions", headers=api.h()).json()
    assert [a["action_id"] for a in actions["items"]] == ["x1", "x0"]
    none_yet = api.client.get("/v1/users/u5/alerts", headers=api.h()).json()
    assert none_yet["items"] == [] and none_yet["total"] == 0
    assert api.client.get("/v1/users/ghost/actions", headers=api.h()).status_code == 404
    bad = api.client.get("/v1/users/u1/alerts?limit=0", headers=api.h())
    assert bad.status_code == 422 and "query.limit" in bad.json()["error"]


def walk(api: Seeded, query: str, limit: int) -> list[str]:
    seen: list[str] = []
    cursor = None
    for _ in range(20):
        url = f"/v1/at-risk?limit={limit}{query}" + (f"&cursor={cursor}" if cursor else "")
        page = api.client.get(url, headers=api.h()).json()
        assert len(page["items"]) <= limit
        seen += [row["user_id"] for row in page["items"]]
        cursor = page["next_cursor"]
        if cursor is None:
            return seen
    raise AssertionError("paging did not end")


def test_at_risk_highest_first_with_filters_and_cursor(api: Seeded) -> None:
    page = api.client.get("/v1/at-risk", headers=api.h()).json()
    # ties go in descending user order, as ZREVRANGEBYSCORE gives them
    everyone = ["u1", "u2", "u6b", "u6a", "u3", "u4", "u5"]
    assert [row["user_id"] for row in page["items"]] == everyone
    assert page["next_cursor"] is None
    assert page["items"][0] | {"updated_at": None} == {
        "user_id": "u1",
        "risk": 0.95,
        "score": 95,
        "band": "critical",
        "stage": "at-risk",
        "tier": "high",
        "updated_at": None,
    }
    for limit in (1, 2, 3):  # pages cut inside the tie group too
        assert walk(api, "", limit) == everyone
    assert walk(api, "&band=high", 1) == ["u2", "u6b", "u6a", "u3"]
    assert walk(api, "&stage=at-risk&tier=high", 1) == ["u1", "u6a"]
    assert walk(api, "&band=high&stage=at-risk", 2) == ["u6a", "u3"]
    assert walk(api, "&tier=medium&band=low", 5) == []

    bad = api.client.get("/v1/at-risk?cursor=bm90LWEtY3Vyc29y", headers=api.h())
    assert bad.status_code == 400 and "cursor" in bad.json()["error"]
    wrong = api.client.get("/v1/at-risk?stage=asleep", headers=api.h())
    assert wrong.status_code == 422 and "query.stage" in wrong.json()["error"]


def test_an_unreadable_score_record_is_named_and_leaves_the_list_whole(api: Seeded) -> None:
    """A corrupt record (or a newer version's, after a rollback) of one user: that user's
    risk says what is wrong, the at-risk list goes on without it."""

    async def corrupt() -> None:
        client = aioredis.Redis.from_url(api.redis_url)
        store = RedisUserStore(client, prefix=api.prefix, user_ttl_s=3600)
        events = [UserEvent("u7-e0", "u7", "login", datetime.fromtimestamp(NOW, UTC))]
        state, _ = apply_batch(None, events, settings=FeatureSettings())
        assert state is not None
        await store.save(
            [
                UserWrite(
                    user_id="u7",
                    features=encode_state(state),
                    policy=b"[]",
                    record=b"\x01\x02",  # the binary format's mark, then nothing
                    last_active=float(state.last_active),
                    risk=0.99,
                    stage="at-risk",
                )
            ]
        )
        await client.aclose()

    asyncio.run(corrupt())
    page = api.client.get("/v1/at-risk", headers=api.h()).json()
    assert [row["user_id"] for row in page["items"]] == ["u1", "u2", "u6b", "u6a", "u3", "u4", "u5"]
    one = api.client.get("/v1/users/u7", headers=api.h())
    assert one.status_code == 500
    assert "stored score record unreadable" in one.json()["error"]

    async def rescored() -> None:
        # The scorer's next write: the stage the record named is unknown, so the user's
        # entry leaves every other stage's index (else it is listed twice).
        client = aioredis.Redis.from_url(api.redis_url)
        store = RedisUserStore(client, prefix=api.prefix, user_ttl_s=3600)
        await store.save(
            [
                UserWrite(
                    user_id="u7",
                    features=b"",
                    policy=b"[]",
                    record=record(0.3, "low", "active", "low", NOW),
                    last_active=NOW,
                    risk=0.3,
                    stage="active",
                    previous_stage=ANY_STAGE,
                )
            ]
        )
        await client.aclose()

    asyncio.run(rescored())
    page = api.client.get("/v1/at-risk", headers=api.h()).json()
    assert [row["user_id"] for row in page["items"]].count("u7") == 1


def test_stats_counts_active_users_and_winback(api: Seeded) -> None:
    body = api.client.get("/v1/stats", headers=api.h()).json()
    assert body["active_users"] == {"dau": 3, "wau": 3, "mau": 3}
    assert body["winback"] == {
        "pb-critical": {
            "treated": {"treated": 2, "won": None, "win_rate": None},
            "control": {"treated": 1, "won": None, "win_rate": None},
        }
    }


def test_model_reports_each_worker(api: Seeded) -> None:
    (worker,) = api.client.get("/v1/model", headers=api.h()).json()["workers"]
    assert worker["worker"] == "w1" and worker["model_version"] == "w1@7"
    assert worker["labels"] == {"positive": 3, "negative": 9}
    assert worker["quality"]["roc_auc"] == 0.8
    assert worker["checkpoint_age_s"] >= 29  # seeded 30 s before the request


def test_consent_and_contact_are_validated_and_stored(api: Seeded) -> None:
    r = api.client.put(
        "/v1/users/u9/consent",
        json={"channels": {"email": True, "sms": False}, "preferred": "email"},
        headers=api.h("admin"),
    )
    assert r.json() == {"user_id": "u9", "saved": ["email", "preferred", "sms"]}
    contact = {"email": "ada@example.com", "phone": "+4915112345678", "timezone": "Europe/Berlin"}
    r = api.client.put("/v1/users/u9/contact", json=contact, headers=api.h("admin"))
    assert r.status_code == 200 and "ada@" not in r.text

    async def profile() -> Any:
        client = aioredis.Redis.from_url(api.redis_url)
        try:
            return await RedisDirectory(client, prefix=api.prefix).profile("u9")
        finally:
            await client.aclose()

    stored, consent, _ = asyncio.run(profile())
    assert stored == contact
    assert consent.channels == {"email": True, "sms": False} and consent.preferred == "email"

    cases = [
        ("consent", {"channels": {"fax": True}}, "body.channels.fax"),
        ("consent", {"channels": {}}, "body.channels"),
        ("consent", {"channels": {"sms": False}, "preferred": "sms"}, "must be consented"),
        ("contact", {"email": "not-an-address"}, "body.email: email must look like"),
        ("contact", {"phone": "0151 123"}, "body.phone: phone must be E.164"),
        ("contact", {"timezone": "Europe/Atlantis"}, "body.timezone: timezone must be an IANA"),
        ("contact", {"locale": "de DE!"}, "body.locale"),
        ("contact", {}, "at least one of"),
        ("contact", {"email": "a@b.co", "fax": "1"}, "body.fax"),
    ]
    for kind, body, expected in cases:
        r = api.client.put(f"/v1/users/u9/{kind}", json=body, headers=api.h("admin"))
        assert r.status_code == 422, (kind, body)
        assert expected in r.json()["error"], r.json()
        for value in body.values():  # contact values are never echoed back
            if isinstance(value, str) and len(value) > 3:
                assert value not in r.text


def test_erase_leaves_nothing_of_the_user(api: Seeded) -> None:
    api.client.put("/v1/users/u1/contact", json={"email": "a@b.co"}, headers=api.h("admin"))
    api.client.put(
        "/v1/users/u1/consent", json={"channels": {"email": True}}, headers=api.h("admin")
    )
    r = api.client.delete("/v1/users/u1", headers=api.h("admin"))
    assert r.status_code == 200
    body = r.json()
    assert set(body["removed_keys"]) == {
        "s",
        "u",
        "alerts",
        "contact",
        "consent",
        "sends",
        "done",
        "actions",
    }
    assert body["removed_from_indexes"] == ["lastseen", "snapdue", "atrisk:at-risk"]
    assert body["removed_deferred_jobs"] == 2

    r = redis.Redis.from_url(api.redis_url)
    assert left_after_erase(r, api.prefix, "u1") == []
    shard = shard_of("u1", INDEX_SHARDS)
    for index in ("lastseen", "snapdue", "atrisk:at-risk"):
        for key in (f"{api.prefix}:{index}", f"{api.prefix}:{index}:{shard}"):
            assert r.zscore(key, "u1") is None
    assert all(b"u1" not in job for job in r.zrange(f"{api.prefix}:deferred", 0, -1))
    assert r.zscore(f"{api.prefix}:lastseen:{shard_of('u2', INDEX_SHARDS)}", "u2")  # others stay
    assert r.exists(f"{api.prefix}:{{u2}}:s")

    assert api.client.get("/v1/users/u1", headers=api.h()).status_code == 404
    assert "u1" not in [
        row["user_id"] for row in api.client.get("/v1/at-risk", headers=api.h()).json()["items"]
    ]
    again = api.client.delete("/v1/users/u1", headers=api.h("admin"))
    assert again.status_code == 404 and "u1" in again.json()["error"]


def failed_delivery(uid: str, action_id: str) -> dict[str, Any]:
    """A failed-delivery job as the notifier keeps it (``CarryOut.carry_out``)."""
    alert = {"alert_id": f"f-{action_id}", "user_id": uid, "risk": 0.9, "segment": "vip"}
    return {
        "action_id": action_id,
        "alert_id": alert["alert_id"],
        "user_id": uid,
        "channel": "email",
        "playbook": "pb-critical",
        "alert": alert,
        "decision": {"status": "send", "channel": "email"},
        "error": "provider answered 500",
        "failed_at": NOW,
        "failures": 1,
    }


def test_erase_forgets_the_users_failed_deliveries(api: Seeded) -> None:
    """Else a later ``notifier redrive`` would send to the erased user and write its keys again."""

    async def fail_deliveries() -> None:
        client = aioredis.Redis.from_url(api.redis_url)
        directory = RedisDirectory(client, prefix=api.prefix)
        for uid, action_id in (("u1", "f1"), ("u1", "f2"), ("u2", "f3")):
            await directory.remember_failed(failed_delivery(uid, action_id))
        assert await directory.claim_failed("f1", lease_s=60)  # a re-drive holds one
        await client.aclose()

    async def failed_left() -> list[dict[str, Any]]:
        client = aioredis.Redis.from_url(api.redis_url)
        jobs = await RedisDirectory(client, prefix=api.prefix).failed_jobs()
        await client.aclose()
        return jobs

    asyncio.run(fail_deliveries())
    assert api.client.delete("/v1/users/u1", headers=api.h("admin")).status_code == 200

    # What a re-drive reads: only the other user's failure is left.
    assert [(j["user_id"], j["action_id"]) for j in asyncio.run(failed_left())] == [("u2", "f3")]
    r = redis.Redis.from_url(api.redis_url)
    assert not r.exists(failed_lease_key(api.prefix, "f1"))
    assert left_after_erase(r, api.prefix, "u1") == []


def test_consent_given_again_after_an_erase_lifts_its_guard(api: Seeded) -> None:
    r = redis.Redis.from_url(api.redis_url)
    assert api.client.delete("/v1/users/u1", headers=api.h("admin")).status_code == 200
    guard = erased_key(api.prefix, "u1")
    refusal = {"channels": {"email": False, "sms": False}}
    api.client.put("/v1/users/u1/consent", json=refusal, headers=api.h("admin"))
    assert r.exists(guard), "a refusal is not a new relationship"
    yes = {"channels": {"email": True}}
    assert api.client.put("/v1/users/u1/consent", json=yes, headers=api.h("admin")).is_success
    assert not r.exists(guard)

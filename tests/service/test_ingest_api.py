"""The ingest API through FastAPI's test client, with an in-memory publisher and key store."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson
import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from prometheus_client import REGISTRY

from services.common.auth import ApiKeys, MemoryKeyStore, create_key
from services.ingest.app import create_app
from services.ingest.config import IngestSettings
from services.ingest.ports import FakePublisher

DEV = {"Authorization": "Bearer dev-key"}


def unavailable(dependency: str) -> float:
    """churnwatch_ingest_unavailable_total{dependency=...} as /metrics shows it now."""
    value = REGISTRY.get_sample_value(
        "churnwatch_ingest_unavailable_total", {"dependency": dependency}
    )
    return value or 0.0


def event(n: int, **changes: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "event_id": f"e-{n}",
        "user_id": f"u-{n % 7}",
        "type": "login",
        "occurred_at": "2026-11-23T09:15:00+01:00",
        "context": {"timezone": "Europe/Berlin"},
    }
    e.update(changes)
    return {k: v for k, v in e.items() if v is not None}


class Ingest:
    def __init__(self, *, production: bool = False, **limits: Any) -> None:
        self.settings = IngestSettings(env="production" if production else "development", **limits)
        self.publisher = FakePublisher()
        self.store = MemoryKeyStore()
        self.keys = ApiKeys(self.store, allow_dev_key=not production)
        self.client = TestClient(create_app(self.settings, self.publisher, keys=self.keys))

    def post(self, body: Any, *, headers: dict[str, str] | None = None, raw: bool = False) -> Any:
        content = body if raw else orjson.dumps(body)
        hdrs = {"Content-Type": "application/json", **DEV, **(headers or {})}
        return self.client.post("/v1/events", content=content, headers=hdrs)


@pytest.fixture
def ingest() -> Iterator[Ingest]:
    svc = Ingest()
    with svc.client:
        yield svc


def test_one_event_is_produced_keyed_by_user(ingest: Ingest) -> None:
    reply = ingest.post(event(1))
    assert reply.status_code == 200, reply.text
    assert reply.json() == {"accepted": 1, "duplicates": 0, "rejected": []}
    [(key, value)] = ingest.publisher.records
    produced = orjson.loads(value)
    assert key == b"u-1"
    assert produced["event_id"] == "e-1"
    assert produced["received_at"].endswith("Z")
    assert produced["schema_version"] == 1


def test_array_and_ndjson(ingest: Ingest) -> None:
    assert ingest.post([event(1), event(2)]).json()["accepted"] == 2
    ndjson = b"\n".join(orjson.dumps(event(n)) for n in (3, 4, 5)) + b"\n\n"
    reply = ingest.post(ndjson, raw=True, headers={"Content-Type": "application/x-ndjson"})
    assert reply.json()["accepted"] == 3
    assert [orjson.loads(v)["event_id"] for _, v in ingest.publisher.records] == [
        f"e-{n}" for n in (1, 2, 3, 4, 5)
    ]


def test_rejected_items_are_listed_with_index_path_and_message(ingest: Ingest) -> None:
    reply = ingest.post([event(1), event(2, type="Log In"), event(3, occurred_at="yesterday")])
    assert reply.status_code == 207
    body = reply.json()
    assert body["accepted"] == 1
    assert [(r["index"], r["path"]) for r in body["rejected"]] == [
        (1, "type"),
        (2, "occurred_at"),
    ]
    assert all(r["message"] for r in body["rejected"])
    assert len(ingest.publisher.records) == 1


def test_missing_event_id_says_so(ingest: Ingest) -> None:
    reply = ingest.post([event(1, event_id=None)])
    assert reply.status_code == 422
    [rejected] = reply.json()["rejected"]
    assert rejected["path"] == "event_id"
    assert "event_id is required" in rejected["message"]
    assert "idempotency" in rejected["message"]
    assert ingest.publisher.records == []


def test_too_many_events_and_too_many_bytes() -> None:
    svc = Ingest(ingest_max_events=3, ingest_max_body_bytes=2048)
    with svc.client:
        reply = svc.post([event(n) for n in range(4)])
        assert reply.status_code == 413
        assert "limit is 3" in reply.json()["error"]
        big = event(1, properties={"note": "x" * 3000})
        reply = svc.post(big)
        assert reply.status_code == 413
        assert "2048 bytes" in reply.json()["error"]
        ndjson = b"\n".join(orjson.dumps(event(n)) for n in range(5))
        reply = svc.post(ndjson, raw=True, headers={"Content-Type": "application/x-ndjson"})
        assert reply.status_code == 413
    assert svc.publisher.records == []


def test_wrong_content_type_is_415(ingest: Ingest) -> None:
    reply = ingest.post(b"<event/>", raw=True, headers={"Content-Type": "application/xml"})
    assert reply.status_code == 415
    assert "application/x-ndjson" in reply.json()["error"]


def test_not_json_is_400_with_the_position(ingest: Ingest) -> None:
    reply = ingest.post(b'[{"event_id": "e1",}]', raw=True)
    assert reply.status_code == 400
    assert "line 1 column" in reply.json()["error"]
    ndjson = orjson.dumps(event(1)) + b"\n{oops\n"
    reply = ingest.post(ndjson, raw=True, headers={"Content-Type": "application/x-ndjson"})
    assert reply.status_code == 400
    assert reply.json()["error"].startswith("line 2 ")


def test_retried_event_is_acknowledged_but_produced_once(ingest: Ingest) -> None:
    assert ingest.post([event(1), event(2)]).json()["duplicates"] == 0
    again = ingest.post([event(1), event(2), event(3)]).json()
    assert again == {"accepted": 3, "duplicates": 2, "rejected": []}
    twice_in_one = ingest.post([event(4), event(4)]).json()
    assert twice_in_one["duplicates"] == 1
    ids = [orjson.loads(v)["event_id"] for _, v in ingest.publisher.records]
    assert ids == ["e-1", "e-2", "e-3", "e-4"]


def test_publisher_down_is_503_with_retry_after_and_not_taken(ingest: Ingest) -> None:
    ingest.publisher.down = True
    before = unavailable("kafka")
    reply = ingest.post([event(1), event(2, type="Bad Type"), event(3)])
    assert reply.status_code == 503
    assert unavailable("kafka") == before + 1
    assert reply.headers["Retry-After"] == str(ingest.settings.ingest_retry_after_s)
    body = reply.json()
    assert [t["index"] for t in body["not_taken"]] == [0, 2]
    assert body["accepted"] == 0
    assert "Retry-After" in body["error"]
    assert ingest.client.get("/readyz").status_code == 503
    # Not taken means not remembered: the retry after recovery is produced.
    ingest.publisher.down = False
    assert ingest.post([event(1), event(3)]).json() == {
        "accepted": 2,
        "duplicates": 0,
        "rejected": [],
    }
    assert len(ingest.publisher.records) == 2


def test_health_ready_metrics_need_no_key(ingest: Ingest) -> None:
    for path in ("/healthz", "/readyz", "/metrics"):
        assert ingest.client.get(path).status_code == 200, path
    ingest.post(event(1))
    assert "churnwatch_ingest_events_accepted_total" in ingest.client.get("/metrics").text


def test_key_store_down_is_503_with_the_configured_retry_after_and_counted() -> None:
    svc = Ingest(ingest_retry_after_s=17)
    with svc.client:
        key = create_key(svc.store, scopes=["ingest"])
        svc.store.down = True
        before = unavailable("key_store"), unavailable("kafka")
        reply = svc.post(event(1), headers={"Authorization": f"Bearer {key}"})
        assert reply.status_code == 503
        assert reply.headers["Retry-After"] == "17"
        assert "key store" in reply.json()["error"]
        assert (unavailable("key_store"), unavailable("kafka")) == (before[0] + 1, before[1])
        assert svc.publisher.records == []
        # The failed lookup is not cached: the key works as soon as the store is back.
        svc.store.down = False
        assert svc.post(event(2), headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_readyz_names_each_dependency_that_is_down() -> None:
    def up(dependency: str) -> bool:
        value = REGISTRY.get_sample_value(
            "churnwatch_ingest_dependency_up", {"dependency": dependency}
        )
        return value == 1.0

    svc = Ingest(ingest_retry_after_s=17)
    with svc.client:
        ready = svc.client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        for kafka_down, store_down, status in [
            (False, True, "key store unreachable"),
            (True, False, "kafka unreachable"),
            (True, True, "kafka and key store unreachable"),
        ]:
            svc.publisher.down, svc.store.down = kafka_down, store_down
            reply = svc.client.get("/readyz")
            assert reply.status_code == 503, status
            assert reply.json() == {"status": status}
            assert reply.headers["Retry-After"] == "17"
            # For ChurnwatchIngestNotReady: a pod out of its Service counts no more 503s.
            assert (up("kafka"), up("key_store")) == (not kafka_down, not store_down)
        svc.publisher.down = svc.store.down = False
        ready = svc.client.get("/readyz")
        assert (ready.status_code, ready.json()) == (200, {"status": "ready"})
        assert up("kafka") and up("key_store")


def test_keys_and_scopes(ingest: Ingest) -> None:
    ingest_key = create_key(ingest.store, scopes=["ingest"], name="web")
    read_key = create_key(ingest.store, scopes=["read"])
    admin_key = create_key(ingest.store, scopes=["admin"])
    post = ingest.client.post
    body = orjson.dumps(event(1))

    no_key = post("/v1/events", content=body, headers={"Content-Type": "application/json"})
    assert no_key.status_code == 401
    assert "API key is required" in no_key.json()["error"]
    unknown = post("/v1/events", content=body, headers={"X-API-Key": "not-a-key"})
    assert unknown.status_code == 401
    assert unknown.json()["error"]
    wrong = post("/v1/events", content=body, headers={"Authorization": f"Bearer {read_key}"})
    assert wrong.status_code == 403
    assert "'ingest' scope" in wrong.json()["error"]
    assert post("/v1/events", content=body, headers={"X-API-Key": ingest_key}).status_code == 200
    assert (
        post("/v1/events", content=body, headers={"Authorization": f"Bearer {admin_key}"})
    ).status_code == 200

    get = ingest.client.get
    assert get("/v1/schemas/user-event").status_code == 401
    assert get("/v1/schemas/user-event", headers={"X-API-Key": ingest_key}).status_code == 403
    schema = get("/v1/schemas/user-event", headers={"X-API-Key": read_key})
    assert schema.status_code == 200
    assert schema.json()["title"] == "User activity event"
    assert get("/v1/schemas/user-event", headers={"X-API-Key": admin_key}).status_code == 200
    assert get("/v1/schemas/nope", headers={"X-API-Key": read_key}).status_code == 404


def test_key_lookups_are_cached(ingest: Ingest) -> None:
    key = create_key(ingest.store, scopes=["ingest"])
    for n in range(5):
        assert ingest.post(event(n), headers={"Authorization": f"Bearer {key}"}).status_code == 200
    assert ingest.store.gets == 1


def test_production_has_no_default_key() -> None:
    svc = Ingest(production=True)
    with svc.client:
        assert svc.post(event(1)).status_code == 401
        key = create_key(svc.store, scopes=["ingest"])
        assert svc.post(event(1), headers={"Authorization": f"Bearer {key}"}).status_code == 200


# Property tests: whatever arrives, the answer is never a 5xx and always says what is wrong.

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)
fields = {
    "event_id": st.text(max_size=140) | json_values,
    "user_id": st.text(max_size=140) | json_values,
    "type": st.from_regex(r"[a-z][a-z0-9_]{0,70}", fullmatch=True) | st.text(max_size=10),
    "occurred_at": st.datetimes().map(lambda d: d.isoformat() + "Z") | st.text(max_size=30),
    "received_at": st.text(max_size=30),
    "schema_version": st.integers(0, 2),
    "properties": st.dictionaries(st.text(max_size=10), json_values, max_size=5) | json_values,
    "context": st.dictionaries(
        st.sampled_from(["platform", "app_version", "country", "timezone", "other"]), json_values
    ),
    "extra": json_values,
}
event_like = st.fixed_dictionaries({}, optional=fields)

_shared = Ingest()


def check_answer(reply: Any) -> None:
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        body = reply.json()
        assert body.get("error") or (
            body.get("rejected") and all(r["message"] for r in body["rejected"])
        ), body
    if reply.status_code in (207, 422):
        assert all(r["message"] and "index" in r for r in reply.json()["rejected"])


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    body=st.binary(max_size=300),
    content_type=st.sampled_from(["application/json", "application/x-ndjson", "", "text/plain"]),
)
def test_random_bytes_never_5xx(body: bytes, content_type: str) -> None:
    check_answer(_shared.post(body, raw=True, headers={"Content-Type": content_type}))


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(value=json_values)
def test_random_json_never_5xx(value: Any) -> None:
    # The stdlib encoder: it writes what orjson cannot (integers past 64 bits, Infinity).
    check_answer(_shared.post(json.dumps(value).encode(), raw=True))


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(items=st.lists(event_like, min_size=1, max_size=5), ndjson=st.booleans())
def test_event_shaped_dicts_never_5xx(items: list[dict[str, Any]], ndjson: bool) -> None:
    if ndjson:
        body = "\n".join(json.dumps(i) for i in items).encode()
        reply = _shared.post(body, raw=True, headers={"Content-Type": "application/x-ndjson"})
    else:
        reply = _shared.post(json.dumps(items).encode(), raw=True)
    check_answer(reply)
    if reply.status_code in (200, 207, 422):
        out = reply.json()
        assert out["accepted"] + len(out["rejected"]) == len(items)

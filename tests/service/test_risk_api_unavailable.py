"""The risk API's 503s through FastAPI's test client: every one carries the
configured ``Retry-After`` (``CHURNWATCH_API_RETRY_AFTER_S``).

No stack: the API keys are in an in-memory store, and Redis and Kafka are
addresses where nothing listens (a refused connection, at once).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.common.auth import ApiKeys, MemoryKeyStore, create_key
from services.common.errors import ConfigError
from services.common.settings import load_settings
from services.scorer.api import build_api
from services.scorer.config import ApiSettings
from tests.conftest import free_port

DEV = {"Authorization": "Bearer dev-key"}  # every scope, never asks the key store


@pytest.fixture
def nothing_answers() -> ApiSettings:
    return ApiSettings(
        env="development",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
        kafka_bootstrap=f"127.0.0.1:{free_port()}",
        api_retry_after_s=17,
    )


@pytest.fixture
def store() -> MemoryKeyStore:
    return MemoryKeyStore()


@pytest.fixture
def client(nothing_answers: ApiSettings, store: MemoryKeyStore) -> Iterator[TestClient]:
    app = build_api(nothing_answers, keys=ApiKeys(store, allow_dev_key=True))
    with TestClient(app) as client:
        yield client


def test_redis_down_is_503_with_the_configured_retry_after(client: TestClient) -> None:
    ready = client.get("/readyz")
    assert (ready.status_code, ready.headers.get("Retry-After")) == (503, "17")
    for path in ("/v1/users/u1", "/v1/at-risk", "/v1/stats"):
        reply = client.get(path, headers=DEV)
        assert (reply.status_code, reply.headers.get("Retry-After")) == (503, "17"), path
        assert reply.json() == {"error": "Redis is unavailable"}


def test_key_store_down_is_503_with_the_configured_retry_after(
    client: TestClient, store: MemoryKeyStore
) -> None:
    key = create_key(store, scopes=["read"])
    store.down = True
    reply = client.get("/v1/at-risk", headers={"Authorization": f"Bearer {key}"})
    assert (reply.status_code, reply.headers.get("Retry-After")) == (503, "17")
    assert reply.json() == {"error": "the key store is unavailable; retry later"}


def test_kafka_down_for_the_alert_stream_is_503_with_the_configured_retry_after(
    client: TestClient,
) -> None:
    reply = client.get("/v1/alerts/stream", headers=DEV)
    assert (reply.status_code, reply.headers.get("Retry-After")) == (503, "17")
    assert reply.json() == {"error": "Kafka is unavailable"}


def test_the_default_is_5_seconds() -> None:
    assert ApiSettings().api_retry_after_s == 5


@pytest.mark.parametrize("value", ["0", "-1", "2.5", "soon"])
def test_a_retry_after_that_is_not_a_whole_second_or_more_is_refused_at_start(
    value: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CHURNWATCH_API_RETRY_AFTER_S", value)
    with pytest.raises(ConfigError, match="CHURNWATCH_API_RETRY_AFTER_S: "):
        load_settings(ApiSettings)

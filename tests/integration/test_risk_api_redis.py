"""The risk API as people run it (``python -m services.scorer api``) on the real Redis.

One process per module, its own key prefix and keys; data seeded the way the
scorer and notifier write it. A contract test runs schemathesis against the
served OpenAPI with a read-and-write key: whatever it sends, no 5xx.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import redis

from services.common.auth import RedisKeyStore, create_key
from services.common.settings import CommonSettings, env_for
from services.scorer.adapters.redis_store import INDEX_SHARDS, shard_of
from tests.conftest import free_port, left_after_erase
from tests.service.test_risk_api import drop_prefix, seed

pytestmark = pytest.mark.integration


class Served:
    def __init__(self, url: str, prefix: str, redis_url: str, admin: str, read: str) -> None:
        self.url, self.prefix, self.redis_url = url, prefix, redis_url
        self.admin, self.read = admin, read


@pytest.fixture(scope="module")
def served(stack: CommonSettings, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    prefix = f"t{uuid.uuid4().hex[:8]}"
    asyncio.run(seed(prefix, stack.redis_url))
    store = RedisKeyStore(stack.redis_url, key_prefix=prefix)
    admin = create_key(store, scopes=["admin"], name="it-admin")
    read = create_key(store, scopes=["read"], name="it-read")
    port = free_port()
    env = env_for(stack) | {
        "CHURNWATCH_KEY_PREFIX": prefix,
        "CHURNWATCH_API_PORT": str(port),
        "CHURNWATCH_ENV": "production",
    }
    log = (tmp_path_factory.mktemp("api") / "api.log").open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "services.scorer", "api"], env=env, stdout=log, stderr=log
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the API did not start"
            time.sleep(0.2)
        yield Served(url, prefix, stack.redis_url, admin, read)
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()
        drop_prefix(stack.redis_url, prefix)


def test_served_api_reads_and_erases(served: Served) -> None:
    h = {"Authorization": f"Bearer {served.read}"}
    assert httpx.get(f"{served.url}/v1/users/u2", headers=h).json()["band"] == "high"
    top = httpx.get(f"{served.url}/v1/at-risk?limit=2", headers=h).json()
    assert [row["user_id"] for row in top["items"]] == ["u1", "u2"]
    assert httpx.get(f"{served.url}/v1/stats").status_code == 401
    assert "churnwatch_api_request_seconds" in httpx.get(f"{served.url}/metrics/").text

    gone = httpx.delete(f"{served.url}/v1/users/u5", headers={"X-API-Key": served.admin}).json()
    assert "s" in gone["removed_keys"] and "lastseen" in gone["removed_from_indexes"]
    r = redis.Redis.from_url(served.redis_url)
    assert left_after_erase(r, served.prefix, "u5") == []
    shard = shard_of("u5", INDEX_SHARDS)
    assert r.zscore(f"{served.prefix}:lastseen:{shard}", "u5") is None


def test_contract_no_server_errors(served: Served) -> None:
    """Schemathesis on every operation of the served OpenAPI, 50 examples each, admin key."""
    schemathesis = pytest.importorskip("schemathesis")
    from hypothesis import HealthCheck, given, settings

    # The served API runs in production mode, where /openapi.json is not published:
    # take the same document from the app built in development mode.
    from services.scorer.api import build_api
    from services.scorer.config import ApiSettings

    document = build_api(ApiSettings(env="development", redis_url=served.redis_url)).openapi()
    schema = schemathesis.openapi.from_dict(document)
    headers = {"Authorization": f"Bearer {served.admin}"}
    # The alert stream never ends (server-sent events); the browser test covers it.
    operations = [
        op
        for op in (result.ok() for result in schema.get_all_operations())
        if op.path != "/v1/alerts/stream"
    ]
    assert len(operations) >= 10
    calls = 0
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=50, deadline=None, database=None, suppress_health_check=list(HealthCheck)
        )
        def no_5xx(case: Any) -> None:
            nonlocal calls
            calls += 1
            response = case.call(base_url=served.url, headers=headers, timeout=10)
            assert response.status_code < 500, (case.method, case.path, response.text)

        no_5xx()
    assert calls >= 5 * len(operations)  # generation really ran

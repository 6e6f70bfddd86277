"""Fixtures shared by every tier.

Integration and end-to-end tests run on the real local stack: the session
fixture ``stack`` brings up Kafka and Redis with ``churnwatch stack up`` (the
same code people run) unless they already answer, and stops what it started.
Each test gets its own topics and Redis key prefix (``isolated``), so tests
never see each other's data.

``redis_cluster`` starts a three-master Redis Cluster of its own (the code of
``churnwatch stack up --redis-cluster``, on free ports, in a temporary
directory) for the tests that run again on a cluster (``isolated_cluster``,
or ``isolated_each``: the test once on each), and stops it at the end of the
session.
"""

from __future__ import annotations

import os
import random
import socket
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from services.common.settings import CommonSettings, env_for, load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def free_cluster_port(nodes: int = 3) -> int:
    """A port p with p .. p+nodes-1 and their cluster bus ports (+10000) free."""
    for _ in range(200):
        base = random.randrange(30_000, 40_000)
        if all(_free(base + i) and _free(base + i + 10_000) for i in range(nodes)):
            return base
    raise RuntimeError("no free ports for a Redis Cluster")


def wait_for(
    ok: Callable[[], object], *, services: Any, timeout: float = 60.0, pause: float = 0.2
) -> None:
    """Until ``ok()`` holds; fails if one of ``services`` (a ``launcher.Services``) exits,
    or after ``timeout`` seconds (a bound on a hang, not a performance claim)."""
    deadline = time.monotonic() + timeout
    while not ok():
        services.check()
        assert time.monotonic() < deadline, "timed out waiting"
        time.sleep(pause)


def scraped(url: str, series: str) -> float:
    """The value of one series on a service's ``/metrics`` (``series``: the name with
    its labels as exposed, e.g. ``churnwatch_scorer_unreadable_total{kind="state"}``);
    0.0 when it is not exposed yet or the service does not answer."""
    import httpx

    try:
        text = httpx.get(url + "/metrics", timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    for line in text.splitlines():
        if line.startswith(series + " "):
            return float(line.split()[-1])
    return 0.0


def left_after_erase(client: Any, prefix: str, user_id: str, *, match: str | None = None) -> list:
    """The user's keys still in Redis after an erase, its guard aside, which must be
    there: the erase's ``P:{uid}:erased`` mark, expiring within ERASED_KEEP_S."""
    from services.notifier.adapters.redis_directory import ERASED_KEEP_S, erased_key

    guard = erased_key(prefix, user_id)
    ttl = client.ttl(guard)
    assert 0 < ttl <= ERASED_KEEP_S, f"the erase left no guard {guard} (ttl {ttl})"
    pattern = match or f"{prefix}:{{{user_id}}}*"
    found = [k.decode() if isinstance(k, bytes) else k for k in client.scan_iter(match=pattern)]
    return [k for k in found if k != guard]


@pytest.fixture(scope="session")
def stack() -> Iterator[CommonSettings]:
    from services.stack.local import LocalStack

    settings = load_settings(CommonSettings)
    local = LocalStack(settings)
    started = not all(local.status().values())
    if started:
        local.up()
    yield settings
    if started and not os.environ.get("CHURNWATCH_KEEP_STACK"):
        local.down()


class Isolated:
    """Unique topics, key prefix, groups and ports for one test."""

    def __init__(self, base: CommonSettings, out: Path) -> None:
        run = uuid.uuid4().hex[:8]
        self.run = run
        self.out = out
        self.ports = {
            "ingest": free_port(),
            "api": free_port(),
            "scorer": free_port(),
            "notifier": free_port(),
            "smtp": free_port(),
        }
        overrides = {
            "CHURNWATCH_TOPIC_EVENTS": f"t{run}.user-events",
            "CHURNWATCH_TOPIC_ALERTS": f"t{run}.churn-alerts",
            "CHURNWATCH_TOPIC_ACTIONS": f"t{run}.winback-actions",
            "CHURNWATCH_TOPIC_DLQ": f"t{run}.user-events.dlq",
            "CHURNWATCH_TOPIC_NOTIFIER_DLQ": f"t{run}.winback-actions.dlq",
            "CHURNWATCH_KEY_PREFIX": f"t{run}",
            "CHURNWATCH_SCORER_GROUP": f"t{run}-scorer",
            "CHURNWATCH_NOTIFIER_GROUP": f"t{run}-notifier",
            "CHURNWATCH_SCORER_WORKER_NAME": f"t{run}-w1",
            "CHURNWATCH_INGEST_PORT": str(self.ports["ingest"]),
            "CHURNWATCH_API_PORT": str(self.ports["api"]),
            "CHURNWATCH_SCORER_METRICS_PORT": str(self.ports["scorer"]),
            "CHURNWATCH_NOTIFIER_METRICS_PORT": str(self.ports["notifier"]),
            "CHURNWATCH_SMTP_PORT": str(self.ports["smtp"]),
            "CHURNWATCH_NOTIFIER_DEFERRED_POLL_S": "1",
            "CHURNWATCH_LOG_LEVEL": "info",
        }
        self.env = env_for(base) | overrides
        self.settings = CommonSettings(
            **{
                k[11:].lower(): v
                for k, v in overrides.items()
                if k[11:].lower() in CommonSettings.model_fields
            },
            kafka_bootstrap=base.kafka_bootstrap,
            redis_url=base.redis_url,
            redis_cluster=base.redis_cluster,
            home=base.home,
        )

    def url(self, service: str) -> str:
        return f"http://127.0.0.1:{self.ports[service]}"


@pytest.fixture
def isolated(stack: CommonSettings, tmp_path: Path) -> Isolated:
    from services.common.kafka import ensure_topics

    iso = Isolated(stack, tmp_path)
    ensure_topics(iso.settings)
    return iso


@pytest.fixture(scope="session")
def redis_cluster(
    stack: CommonSettings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[CommonSettings]:
    """The stack's settings with a Redis Cluster of this session's own as the Redis."""
    from services.stack.redis_cluster import LocalRedisCluster

    cluster = LocalRedisCluster(
        tmp_path_factory.mktemp("redis-cluster"), port=free_cluster_port(), say=lambda _: None
    )
    try:
        cluster.up()
        yield stack.model_copy(update={"redis_url": cluster.url, "redis_cluster": True})
    finally:
        cluster.down()


@pytest.fixture
def isolated_cluster(redis_cluster: CommonSettings, tmp_path: Path) -> Isolated:
    """``isolated`` on the session's Redis Cluster."""
    from services.common.kafka import ensure_topics

    iso = Isolated(redis_cluster, tmp_path)
    ensure_topics(iso.settings)
    return iso


@pytest.fixture(params=["redis", "redis-cluster"])
def isolated_each(request: pytest.FixtureRequest) -> Isolated:
    """``isolated``, then ``isolated_cluster``: the test runs on one Redis and on a cluster."""
    iso: Isolated = request.getfixturevalue(
        "isolated_cluster" if request.param == "redis-cluster" else "isolated"
    )
    return iso

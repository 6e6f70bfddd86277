"""Fixtures shared by every tier.

Integration and end-to-end tests run on the real local stack: the session
fixture ``stack`` brings up Kafka and Redis with ``churnwatch stack up`` (the
same code people run) unless they already answer, and stops what it started.
Each test gets its own topics and Redis key prefix (``isolated``), so tests
never see each other's data.
"""

from __future__ import annotations

import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.common.settings import CommonSettings, env_for, load_settings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


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

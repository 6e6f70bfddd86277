"""Kafka plumbing shared by the services (kafka-python side).

The Faust workers use aiokafka through Faust; the HTTP services and the
command-line tools use kafka-python through these helpers. Library errors are
translated into :class:`BrokerUnavailable` here.
"""

from __future__ import annotations

import contextlib
import logging
from typing import Any

from kafka import KafkaAdminClient, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.errors import BrokerUnavailable
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)


def all_topics(settings: CommonSettings) -> list[str]:
    return [
        settings.topic_events,
        settings.topic_alerts,
        settings.topic_actions,
        settings.topic_dlq,
    ]


def broker_answers(bootstrap: str, *, timeout_ms: int = 3000) -> bool:
    """True when the broker answers a metadata request."""
    try:
        admin = KafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    except (KafkaError, OSError, ValueError):
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(settings: CommonSettings, topics: list[str] | None = None) -> None:
    """Create the deployment's topics if they are missing (idempotent)."""
    wanted = topics or all_topics(settings)
    try:
        admin = KafkaAdminClient(
            bootstrap_servers=settings.kafka_bootstrap, request_timeout_ms=10_000
        )
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, settings.topic_partitions, settings.topic_replication)
            for name in wanted
            if name not in existing
        ]
        if missing:
            # A concurrent process may have created one first: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
    except KafkaError as exc:
        raise BrokerUnavailable(f"could not create topics: {exc}") from exc
    finally:
        admin.close()


def make_producer(settings: CommonSettings, **overrides: Any) -> KafkaProducer:
    """A producer that keeps DESIGN §7: idempotent, acks from all in-sync replicas."""
    options: dict[str, Any] = {
        "bootstrap_servers": settings.kafka_bootstrap,
        "acks": "all",
        "enable_idempotence": True,
        "compression_type": "gzip",
        "linger_ms": 5,
        "batch_size": 256 * 1024,
        "max_request_size": 2 * 1024 * 1024,
        "retries": 5,
        "request_timeout_ms": 10_000,
        "max_block_ms": 5_000,
        "delivery_timeout_ms": 30_000,
    }
    options.update(overrides)
    try:
        return KafkaProducer(**options)
    except (KafkaError, OSError) as exc:
        raise BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}") from exc

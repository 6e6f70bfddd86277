"""Kafka plumbing shared by the services (kafka-python side).

The Faust workers use aiokafka through Faust; the HTTP services and the
command-line tools use kafka-python through these helpers. Library errors are
translated into :class:`BrokerUnavailable` here, or :class:`ConfigError` when
Kafka refuses our credentials. Every client gets the settings' SASL/TLS
options (:mod:`services.common.kafka_security`) through :func:`client_options`.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from kafka import KafkaAdminClient, KafkaConsumer, KafkaProducer
from kafka.admin import NewTopic
from kafka.errors import KafkaError, TopicAlreadyExistsError

from services.common.errors import BrokerUnavailable, ConfigError
from services.common.kafka_security import credentials_problem, kafka_python_options
from services.common.settings import CommonSettings

log = logging.getLogger(__name__)


def all_topics(settings: CommonSettings) -> list[str]:
    return [
        settings.topic_events,
        settings.topic_alerts,
        settings.topic_actions,
        settings.topic_dlq,
    ]


def client_options(settings: CommonSettings, **overrides: Any) -> dict[str, Any]:
    """Bootstrap servers and security options of every kafka-python client, plus ``overrides``.

    With SASL or TLS configured, one handshake first: refused credentials are a
    clear :class:`ConfigError` now rather than a bootstrap timeout 30 s later.
    """
    refused = credentials_problem(settings)
    if refused is not None:
        raise ConfigError(refused)
    return {
        "bootstrap_servers": settings.kafka_bootstrap,
        **kafka_python_options(settings),
        **overrides,
    }


def unavailable(exc: BaseException, settings: CommonSettings) -> BrokerUnavailable | ConfigError:
    """The error to raise for a client that failed: refused credentials are a configuration
    error (kafka-python only times out on them, so one handshake finds out)."""
    refused = credentials_problem(settings)
    if refused is not None:
        return ConfigError(refused)
    return BrokerUnavailable(f"Kafka at {settings.kafka_bootstrap}: {exc}")


def make_consumer(settings: CommonSettings, *topics: str, **overrides: Any) -> KafkaConsumer:
    """A kafka-python consumer with the deployment's bootstrap servers and security."""
    try:
        return KafkaConsumer(*topics, **client_options(settings, **overrides))
    except (KafkaError, OSError) as exc:
        raise unavailable(exc, settings) from exc


def make_admin(settings: CommonSettings, **overrides: Any) -> KafkaAdminClient:
    try:
        return KafkaAdminClient(**client_options(settings, **overrides))
    except (KafkaError, OSError) as exc:
        raise unavailable(exc, settings) from exc


def broker_answers(bootstrap: str | CommonSettings, *, timeout_ms: int = 3000) -> bool:
    """True when the broker answers a metadata request.

    Given settings (not a bare ``host:port``), it connects with their SASL/TLS options;
    credentials the broker refuses count as not answering.
    """
    try:
        options = (
            {"bootstrap_servers": bootstrap}
            if isinstance(bootstrap, str)
            else client_options(bootstrap)
        )
        admin = KafkaAdminClient(request_timeout_ms=timeout_ms, **options)
    except (KafkaError, OSError, ValueError, ConfigError):
        return False
    try:
        admin.list_topics()
        return True
    except KafkaError:
        return False
    finally:
        admin.close()


def ensure_topics(
    settings: CommonSettings,
    topics: list[str] | None = None,
    *,
    partitions: int | None = None,
    timeout_s: float = 30.0,
) -> None:
    """Create the deployment's topics if they are missing (idempotent).

    Returns once every new topic's partitions have a leader: right after the
    create call the broker's metadata may still show none, and a client that
    asks then finds no partitions (a consumer assigning them, a producer).
    """
    wanted = topics or all_topics(settings)
    admin = make_admin(settings, request_timeout_ms=10_000)
    try:
        existing = set(admin.list_topics())
        missing = [
            NewTopic(name, partitions or settings.topic_partitions, settings.topic_replication)
            for name in wanted
            if name not in existing
        ]
        if missing:
            # A concurrent process may have created one first: that is fine.
            with contextlib.suppress(TopicAlreadyExistsError):
                admin.create_topics(missing)
            _wait_for_leaders(admin, [t.name for t in missing], timeout_s)
            log.info("created topics", extra={"topics": [t.name for t in missing]})
    except KafkaError as exc:
        raise BrokerUnavailable(f"could not create topics: {exc}") from exc
    finally:
        admin.close()


def _wait_for_leaders(admin: KafkaAdminClient, topics: list[str], timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while not all(_has_leaders(t) for t in admin.describe_topics(topics)):
        if time.monotonic() > deadline:
            raise BrokerUnavailable(f"topics {topics} have no partition leaders in {timeout_s} s")
        time.sleep(0.1)


def _has_leaders(topic: dict[str, Any]) -> bool:
    parts = topic["partitions"]
    return topic["error_code"] == 0 and bool(parts) and all(p["leader_id"] >= 0 for p in parts)


def make_producer(settings: CommonSettings, **overrides: Any) -> KafkaProducer:
    """A producer that keeps DESIGN §7: idempotent, acks from all in-sync replicas."""
    options: dict[str, Any] = {
        **client_options(settings),
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
        raise unavailable(exc, settings) from exc

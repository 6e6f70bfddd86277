"""Ingest's topic creation at start: retried while Kafka is away, given up on a
configuration the broker refuses (the real broker: tests/integration/test_ingest_kafka.py)."""

from __future__ import annotations

import pytest

from services.common.errors import BrokerUnavailable, ConfigError
from services.ingest import __main__ as ingest_main
from services.ingest.config import IngestSettings


def test_topics_are_tried_again_with_backoff_until_kafka_answers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    answers: list[Exception | None] = [BrokerUnavailable("down")] * 7 + [None]
    waits: list[float] = []

    def ensure(settings: IngestSettings) -> None:
        if (answer := answers.pop(0)) is not None:
            raise answer

    monkeypatch.setattr("services.common.kafka.ensure_topics", ensure)
    assert ingest_main.make_topics(IngestSettings(), sleep=waits.append)
    assert waits == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]


def test_a_refused_configuration_is_logged_not_retried(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def ensure(settings: IngestSettings) -> None:
        raise ConfigError("SASL authentication failed: check CHURNWATCH_KAFKA_SASL_*")

    monkeypatch.setattr("services.common.kafka.ensure_topics", ensure)
    assert not ingest_main.make_topics(IngestSettings(), sleep=lambda s: pytest.fail("retried"))
    assert "topics not checked" in caplog.text

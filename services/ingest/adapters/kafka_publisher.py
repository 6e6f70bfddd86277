"""Publish events to Kafka with kafka-python (idempotent, acks=all)."""

from __future__ import annotations

import threading
import time
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError

from services.common.errors import BrokerUnavailable
from services.common.kafka import broker_answers, make_producer
from services.common.settings import CommonSettings


class KafkaPublisher:
    """The real :class:`~services.ingest.ports.EventPublisher`.

    The producer is created lazily and re-created after the broker was
    unreachable, so the service recovers without a restart.
    """

    def __init__(self, settings: CommonSettings, *, topic: str, timeout_s: float) -> None:
        self.settings = settings
        self.topic = topic
        self.timeout_s = timeout_s
        self._producer: KafkaProducer | None = None
        self._lock = threading.Lock()

    def _get(self) -> KafkaProducer:
        with self._lock:
            if self._producer is None:
                self._producer = make_producer(self.settings)
            return self._producer

    def publish(self, records: Sequence[tuple[bytes, bytes]]) -> list[BaseException | None]:
        try:
            producer = self._get()
        except BrokerUnavailable as exc:
            return [exc for _ in records]
        futures = []
        results: list[BaseException | None] = []
        for key, value in records:
            try:
                futures.append(producer.send(self.topic, key=key, value=value))
            except (KafkaTimeoutError, KafkaError) as exc:
                # Buffer full or metadata unavailable: this record was not taken.
                futures.append(exc)
        deadline = time.monotonic() + self.timeout_s
        for fut in futures:
            if isinstance(fut, BaseException):
                results.append(fut)
                continue
            try:
                fut.get(timeout=max(0.01, deadline - time.monotonic()))
                results.append(None)
            except KafkaError as exc:
                results.append(exc)
        return results

    def ready(self) -> bool:
        return broker_answers(self.settings.kafka_bootstrap, timeout_ms=2000)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(timeout=self.timeout_s)
                self._producer.close(timeout=self.timeout_s)
                self._producer = None

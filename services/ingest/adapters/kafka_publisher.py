"""Publish events to Kafka with kafka-python (idempotent, acks=all)."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Sequence

from kafka import KafkaProducer
from kafka.errors import KafkaError, KafkaTimeoutError
from kafka.partitioner.default import DefaultPartitioner, murmur2

from services.common.errors import BrokerUnavailable
from services.common.kafka import broker_answers, make_producer
from services.common.settings import CommonSettings


class KafkaPublisher:
    """The real :class:`~services.ingest.ports.EventPublisher`.

    The producer is created lazily and re-created after the broker was
    unreachable, so the service recovers without a restart: a producer whose
    batches expired during an outage resets its idempotent producer id and,
    with kafka-python, may never send again, so any timed-out or retriable
    failure drops it and the next request builds a fresh one.
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
                # Bounded bootstrap: kafka-python waits 30 s by default, far past Retry-After.
                self._producer = make_producer(
                    self.settings,
                    bootstrap_timeout_ms=int(min(self.timeout_s, 5.0) * 1000),
                    partitioner=CachedKeyPartitioner(),
                )
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
        if any(_broker_trouble(err) for err in results):
            self._drop(producer)
        return results

    def _drop(self, producer: KafkaProducer) -> None:
        """Forget a producer that met a broker outage; its unsent records were reported."""
        with self._lock:
            if id(self._producer) != id(producer):
                return  # another request dropped it already
            self._producer = None
        with contextlib.suppress(Exception):  # closing a broken client must not fail a request
            producer.close(timeout=0)

    def ready(self) -> bool:
        return broker_answers(self.settings, timeout_ms=2000)

    def close(self) -> None:
        with self._lock:
            if self._producer is not None:
                self._producer.flush(timeout=self.timeout_s)
                self._producer.close(timeout=self.timeout_s)
                self._producer = None


def _broker_trouble(err: BaseException | None) -> bool:
    return isinstance(err, KafkaTimeoutError) or bool(getattr(err, "retriable", False))


class CachedKeyPartitioner(DefaultPartitioner):
    """The Java client's murmur2 key partitioning, with each key's hash remembered.

    The same users send again and again; pure-Python murmur2 was a tenth of the
    ingest hot path. Partitions are exactly those of the default partitioner.
    """

    def __init__(self, *, max_keys: int = 200_000) -> None:
        super().__init__()
        self._hashes: dict[bytes, int] = {}
        self._max_keys = max_keys

    def partition(self, topic, key, serialized_key, value, serialized_value, cluster):
        if serialized_key is None:
            return super().partition(topic, key, serialized_key, value, serialized_value, cluster)
        parts = cluster.partitions_for_topic(topic)
        if not parts:
            raise ValueError(f"Topic {topic} not found in ClusterMetadata")
        h = self._hashes.get(serialized_key)
        if h is None:
            if len(self._hashes) >= self._max_keys:
                self._hashes.clear()
            h = self._hashes[serialized_key] = murmur2(serialized_key) & 0x7FFFFFFF
        return sorted(parts)[h % len(parts)]

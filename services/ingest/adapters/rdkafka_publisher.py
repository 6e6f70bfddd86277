"""Publish events to Kafka with librdkafka (confluent-kafka): idempotent, acks=all.

The default publisher of the ingest service. kafka-python spends ~28 µs of
Python per record in ``send()`` and its sender thread, all under the GIL, which
caps one process near 30,000 events/s; librdkafka partitions, batches,
compresses and retries in its own threads, and a record costs ~3 µs of Python
(the ``produce()`` call and its delivery callback). BENCHMARKS.md has the figures.

How a request waits for its acks: every ``produce()`` carries a callback that
records the outcome in the request's
:class:`~services.ingest.adapters.rdkafka_delivery._Pending`; one poller thread
serves the callbacks of all requests. The ingest app awaits :meth:`publish_async`,
whose last callback wakes the event loop; :meth:`publish` blocks its caller's
thread. librdkafka reconnects by itself after an outage and expires a record
after ``message.timeout.ms`` (the produce timeout) with an error, which is
reported as "not taken"; only a fatal error (the idempotent producer lost its
state) makes the publisher build a new producer.

This module is the publish path. The delivery-report bookkeeping is in
:mod:`services.ingest.adapters.rdkafka_delivery` and the producer configuration
in :mod:`services.ingest.adapters.rdkafka_config`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from services.common.errors import BrokerUnavailable
from services.common.kafka import broker_answers
from services.common.settings import CommonSettings
from services.ingest.adapters.rdkafka_config import librdkafka_config
from services.ingest.adapters.rdkafka_delivery import _WAITING, DeliveryFailed, _Pending, _waker

log = logging.getLogger("churnwatch.ingest")


class RdKafkaPublisher:
    """The real :class:`~services.ingest.ports.EventPublisher`, on librdkafka."""

    def __init__(self, settings: CommonSettings, *, topic: str, timeout_s: float) -> None:
        self.settings = settings
        self.topic = topic
        self.timeout_s = timeout_s
        self._lock = threading.Lock()
        self._producer: Producer | None = None
        self._stop = threading.Event()
        self._poller: threading.Thread | None = None
        # Connect now, not on the first request: the idempotent producer's id
        # (InitProducerId) takes up to ~0.5 s, which the first requests would wait.
        # librdkafka connects in the background, so a broker that is down is fine.
        with contextlib.suppress(BrokerUnavailable):
            self._get()

    def _get(self) -> Producer:
        with self._lock:
            if self._producer is None:
                try:
                    self._producer = Producer(
                        librdkafka_config(self.settings, timeout_s=self.timeout_s)
                    )
                except KafkaException as exc:
                    raise BrokerUnavailable(f"Kafka producer: {exc}") from exc
                if self._poller is None:
                    self._poller = threading.Thread(
                        target=self._serve_callbacks, name="rdkafka-poller", daemon=True
                    )
                    self._poller.start()
            return self._producer

    def _serve_callbacks(self) -> None:
        while not self._stop.is_set():
            producer = self._producer
            if producer is None:
                self._stop.wait(0.05)
                continue
            try:
                producer.poll(0.05)
            except Exception:  # raised by a callback: it must not end the only poller
                log.exception("a delivery callback failed")

    def publish(self, records: Sequence[tuple[bytes, bytes]]) -> list[BaseException | None]:
        try:
            producer = self._get()
        except BrokerUnavailable as exc:
            return [exc for _ in records]
        pending = _Pending(len(records))
        self._produce(producer, records, pending)
        # Records expire after message.timeout.ms, so every callback fires by then;
        # the margin covers the poller's cadence.
        pending.done.wait(self.timeout_s + 5.0)
        return self._outcome(producer, pending)

    async def publish_async(
        self, records: Sequence[tuple[bytes, bytes]]
    ) -> list[BaseException | None]:
        """:meth:`publish` for an event loop, without a thread per request.

        ``produce()`` only queues (a full queue raises at once), so it runs on the
        loop; the poller thread's last delivery callback wakes the loop. A request
        waiting in a thread pool instead held one of its 40 threads for its whole
        round trip to Kafka, and its answer took two more thread hand-offs.
        """
        try:
            producer = self._get()
        except BrokerUnavailable as exc:
            return [exc for _ in records]
        loop = asyncio.get_running_loop()
        finished: asyncio.Future[None] = loop.create_future()
        pending = _Pending(len(records), _waker(loop, finished))
        self._produce(producer, records, pending)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(finished, self.timeout_s + 5.0)
        return self._outcome(producer, pending)

    def _produce(
        self, producer: Producer, records: Sequence[tuple[bytes, bytes]], pending: _Pending
    ) -> None:
        produce, topic = producer.produce, self.topic
        for i, (key, value) in enumerate(records):

            def on_delivery(
                err: KafkaError | None, _msg: Message, i: int = i, settle: Any = pending.settle
            ) -> None:
                settle(i, None if err is None else DeliveryFailed(err))

            try:
                produce(topic, value, key, on_delivery=on_delivery)
            except BufferError:
                # The local queue is full (Kafka slower than the load): not taken.
                pending.settle(i, BrokerUnavailable("producer queue full"))
            except KafkaException as exc:
                pending.settle(i, BrokerUnavailable(str(exc)))

    def _outcome(self, producer: Producer, pending: _Pending) -> list[BaseException | None]:
        # A callback that comes after the wait gave up writes into the list after it
        # was copied, harmlessly.
        results = [
            BrokerUnavailable("no acknowledgement in time") if r is _WAITING else r
            for r in list(pending.results)
        ]
        if any(isinstance(e, DeliveryFailed) and e.fatal for e in results):
            log.warning("kafka producer hit a fatal error; building a new one")
            self._drop(producer)
        return results

    def _drop(self, producer: Producer) -> None:
        with self._lock:
            if self._producer is producer:
                self._producer = None

    def ready(self) -> bool:
        return broker_answers(self.settings, timeout_ms=2000)

    def close(self) -> None:
        with self._lock:
            producer, self._producer = self._producer, None
        if producer is not None:
            left = producer.flush(self.timeout_s)
            if left:
                log.warning("kafka did not acknowledge records at shutdown", extra={"left": left})
        self._stop.set()
        if self._poller is not None:
            self._poller.join(timeout=1)

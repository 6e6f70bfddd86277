"""The ingest publisher's librdkafka producer configuration: settings in, a dict out.

What :class:`~services.ingest.adapters.rdkafka_publisher.RdKafkaPublisher`
builds its producer with: idempotent, ``acks=all``, keyed records partitioned
as the other clients partition them, and the settings' SASL and TLS options.
Apart from the publisher because it needs neither a producer nor
confluent-kafka.
"""

from __future__ import annotations

import logging
from typing import Any

from services.common.kafka_security import librdkafka_options
from services.common.settings import CommonSettings

# Records librdkafka may hold before produce() raises BufferError ("queue full").
QUEUE_MAX_MESSAGES = 500_000


def librdkafka_config(settings: CommonSettings, *, timeout_s: float) -> dict[str, Any]:
    """The producer configuration that keeps DESIGN §7 (idempotent, acks=all, keyed).

    ``murmur2_random`` partitions keyed records exactly like the Java client and
    kafka-python, so a user's events land on the same partition whichever
    producer wrote them.

    >>> from services.common.settings import CommonSettings
    >>> cfg = librdkafka_config(CommonSettings(), timeout_s=10)
    >>> cfg["enable.idempotence"], cfg["acks"], cfg["partitioner"], cfg["message.timeout.ms"]
    (True, 'all', 'murmur2_random', 10000)
    """
    return {
        "bootstrap.servers": settings.kafka_bootstrap,
        "enable.idempotence": True,
        "acks": "all",
        # gzip, like every other producer here: any consumer can read it (lz4 needs
        # cramjam for aiokafka and lz4 for kafka-python, which are not installed).
        "compression.type": "gzip",
        # No linger: records produced while a request is in flight batch anyway.
        # Measured with 2 ms: a p99 of ~450 ms per request at 2,000 events/s
        # (p50 6 ms); with 0: p99 17 ms, and more throughput (BENCHMARKS.md).
        "linger.ms": 0,
        "batch.size": 1_000_000,
        "message.max.bytes": 2 * 1024 * 1024,
        "queue.buffering.max.messages": QUEUE_MAX_MESSAGES,
        "message.timeout.ms": int(timeout_s * 1000),
        "socket.connection.setup.timeout.ms": 5_000,
        # Back within a second of the broker's return (the default backs off to 10 s).
        "reconnect.backoff.max.ms": 1_000,
        "partitioner": "murmur2_random",
        "client.id": "churnwatch-ingest",
        # librdkafka logs through this logger (never the records themselves).
        "logger": logging.getLogger("churnwatch.ingest.librdkafka"),
    } | librdkafka_options(settings)

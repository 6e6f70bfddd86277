"""The ingest service's Kafka publishers (``CHURNWATCH_INGEST_PRODUCER`` picks one)."""

from __future__ import annotations

from services.common.errors import ConfigError
from services.ingest.config import IngestSettings
from services.ingest.ports import EventPublisher


def make_publisher(settings: IngestSettings) -> EventPublisher:
    """The publisher the settings ask for, producing to ``user-events``."""
    if settings.ingest_producer == "kafka-python":
        from services.ingest.adapters.kafka_publisher import KafkaPublisher

        return KafkaPublisher(
            settings, topic=settings.topic_events, timeout_s=settings.ingest_produce_timeout_s
        )
    try:
        from services.ingest.adapters.rdkafka_publisher import RdKafkaPublisher
    except ImportError as exc:
        raise ConfigError(
            "CHURNWATCH_INGEST_PRODUCER=librdkafka needs the confluent-kafka package "
            "(pip install confluent-kafka), or set CHURNWATCH_INGEST_PRODUCER=kafka-python"
        ) from exc

    return RdKafkaPublisher(
        settings, topic=settings.topic_events, timeout_s=settings.ingest_produce_timeout_s
    )

"""Settings of the ingest service (``CHURNWATCH_INGEST_*`` and the common ones)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from services.common.settings import CommonSettings


class IngestSettings(CommonSettings):
    ingest_host: str = Field("127.0.0.1", description="address the HTTP server binds")
    ingest_port: int = Field(8000, ge=1, le=65535)
    ingest_max_events: int = Field(10_000, ge=1, description="events per request")
    ingest_max_body_bytes: int = Field(5 * 1024 * 1024, ge=1024, description="request body")
    ingest_dedup_window_s: int = Field(
        3600, ge=0, description="a retried event_id inside this window is not produced again"
    )
    ingest_produce_timeout_s: float = Field(10.0, gt=0, description="wait for Kafka's acks")
    ingest_retry_after_s: int = Field(5, ge=1, description="Retry-After on 503")
    ingest_producer: Literal["librdkafka", "kafka-python"] = Field(
        "librdkafka",
        description=(
            "Kafka client that produces the events: librdkafka (confluent-kafka, ~3 µs per "
            "event) or kafka-python (pure Python, ~28 µs per event; see BENCHMARKS.md)"
        ),
    )

"""Produce events straight to Kafka with the same contract as the HTTP ingest.

For Python services that would rather skip HTTP::

    from services.common.settings import CommonSettings, load_settings
    from services.ingest.producer import EventProducer

    with EventProducer(load_settings(CommonSettings)) as producer:
        producer.send({"event_id": "e-1", "user_id": "u-123", "type": "login",
                       "occurred_at": "2026-11-23T09:15:00+01:00"})

Each event is validated against ``schemas/user-event.v1.json``, stamped with
``received_at`` and keyed by ``user_id``; ``send`` returns once Kafka
acknowledged it (acks from all in-sync replicas, idempotent producer). A bad
event raises :class:`InvalidEvent` whose ``path`` names the field (prefixed
with ``[index]`` in :meth:`EventProducer.send_many`) and nothing of that call
is produced; Kafka unreachable raises :class:`BrokerUnavailable`.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import Any

from services.common.errors import BrokerUnavailable, InvalidEvent
from services.common.settings import CommonSettings
from services.ingest.adapters.kafka_publisher import KafkaPublisher
from services.ingest.core import prepare_event, stamp_now
from services.ingest.ports import EventPublisher


class EventProducer:
    """Validate, stamp and produce user events; ``publisher`` is for tests."""

    def __init__(
        self,
        settings: CommonSettings,
        *,
        timeout_s: float = 10.0,
        publisher: EventPublisher | None = None,
    ) -> None:
        self.publisher = publisher or KafkaPublisher(
            settings, topic=settings.topic_events, timeout_s=timeout_s
        )

    def send(self, event: Mapping[str, Any]) -> None:
        """Produce one event and wait for Kafka's acknowledgement.

        >>> from services.ingest.ports import FakePublisher
        >>> producer = EventProducer(CommonSettings(), publisher=FakePublisher())
        >>> producer.send({"event_id": "e1", "user_id": "u1", "type": "login",
        ...                "occurred_at": "2026-01-01T00:00:00Z"})
        >>> producer.publisher.records[0][0]
        b'u1'
        >>> try:
        ...     producer.send({"event_id": "e2", "user_id": "u1", "type": "Log In",
        ...                    "occurred_at": "2026-01-01T00:00:00Z"})
        ... except InvalidEvent as exc:
        ...     print(exc.path)
        type
        """
        self._produce([_prepare(event, stamp_now(), index=None)])

    def send_many(self, events: Iterable[Mapping[str, Any]]) -> int:
        """Produce events (all valid, or none is sent); returns how many."""
        stamp = stamp_now()
        records = [_prepare(event, stamp, index=i) for i, event in enumerate(events)]
        self._produce(records)
        return len(records)

    def _produce(self, records: list[tuple[bytes, bytes]]) -> None:
        errors = [err for err in self.publisher.publish(records) if err is not None]
        if errors:
            raise BrokerUnavailable(
                f"Kafka did not acknowledge {len(errors)} of {len(records)} events: {errors[0]}"
            )

    def close(self) -> None:
        """Flush what is buffered and disconnect."""
        self.publisher.close()

    def __enter__(self) -> EventProducer:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()


def _prepare(event: Mapping[str, Any], stamp: str, *, index: int | None) -> tuple[bytes, bytes]:
    # A copy: stamping must not write into the caller's dict.
    item = dict(event) if isinstance(event, Mapping) else event
    try:
        return prepare_event(item, stamp)
    except InvalidEvent as exc:
        if index is None:
            raise
        path = f"[{index}].{exc.path}" if exc.path else f"[{index}]"
        raise InvalidEvent(f"event {index}: {exc.message}", path=path) from None

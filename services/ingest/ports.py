"""What the ingest service needs from the outside world."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class EventPublisher(Protocol):
    def publish(self, records: Sequence[tuple[bytes, bytes]]) -> list[BaseException | None]:
        """Send (key, value) records and block until each is acknowledged.

        Returns one entry per record: None when acknowledged, else the error.
        """

    def ready(self) -> bool:
        """True when the broker answers."""

    def close(self) -> None:
        """Flush what is buffered and release the connection."""


class FakePublisher:
    """In-memory publisher for fast tests; ``down`` makes every publish fail."""

    def __init__(self) -> None:
        self.records: list[tuple[bytes, bytes]] = []
        self.down = False

    def publish(self, records: Sequence[tuple[bytes, bytes]]) -> list[BaseException | None]:
        if self.down:
            return [ConnectionError("broker down") for _ in records]
        self.records.extend(records)
        return [None for _ in records]

    def ready(self) -> bool:
        return not self.down

    def close(self) -> None:
        pass

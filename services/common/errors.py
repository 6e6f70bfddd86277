"""The error tree shared by every churnwatch service.

Adapters translate library errors into these (``raise StoreUnavailable(...)
from exc``); the edges (HTTP handlers, stream agents, the CLI) map them to a
status code, a dead-letter record or an exit message.
"""

from __future__ import annotations

import struct


class ChurnwatchError(Exception):
    """Base of every error churnwatch raises on purpose."""


class ConfigError(ChurnwatchError):
    """A setting is missing or wrong; the message says what to fix."""


class InvalidEvent(ChurnwatchError):
    """An event does not match the contract.

    ``path`` is the JSON path of the offending field ("" for the whole event).
    """

    def __init__(self, message: str, *, path: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.path = path


class LateEvent(InvalidEvent):
    """An event arrived after the lateness tolerance of its user's features."""


class BrokerUnavailable(ChurnwatchError):
    """Kafka cannot be reached or did not acknowledge in time."""


class StoreUnavailable(ChurnwatchError):
    """Redis cannot be reached."""


class UnreadableStored(ChurnwatchError, ValueError):
    """A value churnwatch stored cannot be read back: corrupt, or written in a format
    of a newer version (a rollback). Its owner is set aside, never the whole worker."""


# What the decoders of stored values raise on bytes that are not what they expect
# (msgpack's and orjson's errors are ValueErrors): each decoder turns these into
# UnreadableStored, so that callers catch one error and bugs elsewhere still surface.
BROKEN_VALUE = (ValueError, TypeError, KeyError, IndexError, AttributeError, struct.error)


class DeliveryFailed(ChurnwatchError):
    """A channel could not deliver a message after its retries."""

    def __init__(self, message: str, *, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable

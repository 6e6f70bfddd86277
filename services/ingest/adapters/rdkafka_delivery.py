"""The librdkafka publisher's delivery reports: which of a request's records Kafka took.

A request's records share one :class:`_Pending`, which their delivery callbacks
fill in (in the poller thread) and which wakes the waiting thread, or the event
loop through :func:`_waker`, once the last record is settled. A record Kafka did
not acknowledge is settled as :class:`DeliveryFailed`. Apart from the publisher
(:mod:`services.ingest.adapters.rdkafka_publisher`) because none of it touches
the producer: it only keeps what the callbacks report.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Callable

from confluent_kafka import KafkaError

_WAITING = Exception("waiting for Kafka's acknowledgement")


class _Pending:
    """The outcome of one request's records, filled in by delivery callbacks.

    Callbacks run in the poller thread (librdkafka calls them inside ``poll()``);
    a record the local queue refused is settled by the producing thread.
    ``on_done`` runs once the last record is settled, in whichever thread did it.
    """

    __slots__ = ("done", "left", "lock", "on_done", "results")

    def __init__(self, n: int, on_done: Callable[[], None] | None = None) -> None:
        self.results: list[BaseException | None] = [_WAITING] * n
        self.left = n
        self.done = threading.Event()
        self.lock = threading.Lock()
        self.on_done = on_done
        if n == 0:
            self._finish()

    def settle(self, index: int, error: BaseException | None) -> None:
        with self.lock:
            self.results[index] = error
            self.left -= 1
            if self.left == 0:
                self._finish()

    def _finish(self) -> None:
        self.done.set()
        if self.on_done is not None:
            self.on_done()


def _resolve(finished: asyncio.Future[None]) -> None:
    if not finished.done():  # the request may have stopped waiting (timeout, cancel)
        finished.set_result(None)


def _waker(loop: asyncio.AbstractEventLoop, finished: asyncio.Future[None]) -> Callable[[], None]:
    """What the poller thread calls when a request's last record is settled."""

    def wake() -> None:
        # A loop closed meanwhile (shutdown) must not raise into poll(): that would
        # end the poller thread, and with it every later request's callbacks.
        with contextlib.suppress(RuntimeError):
            loop.call_soon_threadsafe(_resolve, finished)

    return wake


class DeliveryFailed(Exception):
    """Kafka did not acknowledge a record (the librdkafka error is the message)."""

    def __init__(self, error: KafkaError) -> None:
        super().__init__(error.str())
        self.retriable = error.retriable()
        self.fatal = error.fatal()

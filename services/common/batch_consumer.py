"""Micro-batches of raw Kafka records for a handler, committed only once it is done.

The scorer's events come through here rather than through a Faust stream:
Faust hands records to an agent one at a time (a message, an event, an ack
per record, and ``take_events`` buffering them again), which on this
project's two cores caps a worker that does nothing at ~11,000 events/s
(``bench scorer`` prints that ceiling), under half the scorer's target.
aiokafka's ``getmany`` hands over whole fetched batches, and the worker
stays a Faust worker for everything else (timers, start-up and shutdown,
the producer of alerts), see :mod:`services.scorer.app`.

Guarantees (DESIGN §7):

- at least once: an offset is committed only after the handler returned, i.e.
  after the batch's effects are durable; a handler that raises stops the
  consumer before anything of its batch is committed. The commit itself goes
  out while the next batch is handled (one in flight at a time, in order): it
  is a round trip to the group coordinator, ~7 ms of every ~90 ms batch under
  load, and a crash before it lands only redelivers a batch whose effects are
  idempotent;
- at most one commit every ``commit_every_s`` (0: one per batch), the handled
  batches' offsets merged meanwhile (:mod:`services.common.batch_offsets`);
- no two owners at once: a rebalance waits for the batch in hand to finish
  and for its commit before the partitions are given away (the rebalance
  listener takes the same lock as a batch), and records fetched for revoked
  partitions are dropped by aiokafka, never handed over;
- in order per partition, one batch at a time: the next batch is fetched and
  ``prepare``-d (the scorer decodes and validates it and starts reading and
  scoring its users that the batch in hand does not write, see
  ``services.scorer.decoding.ScoreAheadStep``) while the one before is handled,
  which spends much of its time waiting on Redis; it is handled
  only once the one before is done, and not at all if a rebalance came in
  between (its records are read again from the last commit by their owner).

A batch is whatever the fetcher holds when the handler is free, up to
``max_records``: under load they are full, when traffic is light a batch is
the few records that arrived while the previous one was handled, so nothing
waits to fill a batch unless ``fill_within_s`` asks for it.

The commits and the lag (the member's backlog for ``/metrics``) are kept by
its base class, :class:`~services.common.batch_offsets.BatchOffsets`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition

from services.common.batch_offsets import BatchOffsets, next_offsets
from services.common.kafka_security import aiokafka_options
from services.common.messages import Record
from services.common.settings import CommonSettings

log = logging.getLogger("churnwatch.consumer")


# A batch's records, and what ``prepare`` made of them (None without a prepare step).
Handler = Callable[[list[Record], Any], Awaitable[None]]
Prepare = Callable[[list[Record]], Any]


class BatchConsumer(BatchOffsets):
    """One consumer-group member that feeds ``handler`` whole batches (see the module doc).

    ``prepare`` turns a batch's records into what ``handler`` gets besides them
    (run ahead, see the module doc). ``consumer`` is for tests (anything with
    aiokafka's ``start``, ``stop``, ``subscribe``, ``getmany`` and ``commit``);
    by default an ``AIOKafkaConsumer`` is built from the settings.
    """

    def __init__(
        self,
        settings: CommonSettings,
        *,
        topic: str,
        group: str,
        handler: Handler,
        max_records: int,
        prepare: Prepare | None = None,
        fill_within_s: float = 0.0,
        commit_every_s: float = 0.0,
        session_timeout_s: float = 10.0,
        consumer: Any = None,
    ) -> None:
        self.topic = topic
        self.commit_every_s = commit_every_s
        self.handler = handler
        self.prepare = prepare
        self.max_records = max_records
        self.fill_within_s = fill_within_s
        self.consumer = consumer
        self._options = {
            "bootstrap_servers": settings.kafka_bootstrap,
            "group_id": group,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            "max_poll_records": max_records,
            "session_timeout_ms": int(session_timeout_s * 1000),
            "heartbeat_interval_ms": int(min(3.0, session_timeout_s / 3) * 1000),
            **aiokafka_options(settings),
        }
        self.lock = asyncio.Lock()  # held while a batch is handled and its commit sent
        self._commit: asyncio.Future[None] | None = None  # the last one sent, in flight
        self._uncommitted: dict[tuple[str, int], int] = {}  # handled, not sent yet
        self._last_sent = float("-inf")  # loop time of the last commit sent
        self._flusher: asyncio.Future[None] | None = None  # sends them when none comes
        self._fetched: dict[tuple[str, int], int] = {}  # next offset to hand over, by partition
        self.batches = 0
        self.generation = 0  # partitions revoked so many times
        self._stopping = False

    async def start(self) -> None:
        if self.consumer is None:  # built on the running loop, which aiokafka wants
            self.consumer = AIOKafkaConsumer(**self._options)
        await self.consumer.start()
        self.consumer.subscribe([self.topic], listener=_Listener(self))

    async def stop(self) -> None:
        """Finish the batch in hand (it commits), then leave the group."""
        self._stopping = True
        async with self.lock:
            await self.flush()
            if self._flusher is not None:
                self._flusher.cancel()
            if self.consumer is not None:
                await self.consumer.stop()

    async def run(self) -> None:
        """Fetch, handle and commit until :meth:`stop`; a handler error propagates.

        The batch in hand is handled by a task of its own, so that the next one
        is fetched and prepared meanwhile (module doc).
        """
        handling: asyncio.Future[None] | None = None
        try:
            while not self._stopping:
                records = await self.fetch()
                generation = self.generation  # fetch dropped what a rebalance inside it revoked
                prepared = self.prepare(records) if records and self.prepare else None
                if handling is not None:
                    await handling  # the batch before, whose error stops us here
                    handling = None
                if records and not self._stopping:
                    handling = asyncio.ensure_future(
                        self._handle(records, prepared, generation=generation)
                    )
            if handling is not None:
                await handling
        finally:
            if handling is not None and not handling.done():
                handling.cancel()

    async def _handle(self, records: list[Record], prepared: Any, *, generation: int) -> None:
        async with self.lock:
            if self.generation != generation or self._stopping:
                return  # revoked (or stopping) since it was fetched: read again from the commit
            await self.handler(records, prepared)
            for tp, offset in next_offsets(records).items():
                self._uncommitted[tp] = max(offset, self._uncommitted.get(tp, offset))
            if asyncio.get_running_loop().time() - self._last_sent >= self.commit_every_s:
                await self._send_commit()
            elif self._flusher is None:
                self._flusher = asyncio.ensure_future(self._flush_later())
        self.batches += 1

    async def fetch(self) -> list[Record]:
        """The next batch: what the fetcher holds, after waiting up to 1 s for a first record."""
        found = await self.consumer.getmany(timeout_ms=1000, max_records=self.max_records)
        records = _records(found)
        if records and self.fill_within_s > 0 and len(records) < self.max_records:
            generation = self.generation
            more = await self.consumer.getmany(
                timeout_ms=int(self.fill_within_s * 1000),
                max_records=self.max_records - len(records),
            )
            if self.generation != generation:
                # A rebalance came between the two: the first part's partitions were
                # revoked, and whoever owns them now reads them again from the last
                # commit (so do we, if they came back: positions restart there).
                records = []
            records += _records(more)
        for tp, offset in next_offsets(records).items():
            self._fetched[tp] = max(offset, self._fetched.get(tp, offset))
        return records


def _records(found: dict[Any, list[Any]]) -> list[Record]:
    return [
        Record(m.key, m.value, m.topic, m.partition, m.offset)
        for messages in found.values()
        for m in messages
    ]


class _Listener(ConsumerRebalanceListener):
    def __init__(self, owner: BatchConsumer) -> None:
        self.owner = owner

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        # The batch in hand is handled before this gets the lock, and every handled
        # offset is committed (landed) before the partitions go. A batch fetched
        # before this and not handled yet sees the new generation under the lock and
        # is dropped, as is one whose fetch spanned a rebalance (see fetch).
        async with self.owner.lock:
            await self.owner.flush()
            self.owner.generation += 1
            self.owner._fetched.clear()  # positions restart at the commits, maybe elsewhere
            log.info("partitions revoked", extra={"partitions": len(revoked)})

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        log.info("partitions assigned", extra={"partitions": len(assigned)})

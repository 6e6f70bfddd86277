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
- at most one commit every ``commit_every_s`` (0: one per batch): under light
  load batches are a few records each, hundreds a second, and a commit for
  each cost the worker and the broker more than the records did. The handled
  batches' offsets wait, merged, until the interval has passed since the last
  commit, then go out with the next batch or, if none comes, on their own; a
  rebalance and a stop send them first. A crash redelivers at most that much
  more, idempotently;
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

:meth:`BatchConsumer.lag` is the member's backlog for ``/metrics``: what the
broker last reported as each partition's end, minus the next offset to hand
over, with no request of its own (a scrape must not wait on Kafka).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.common.kafka_security import aiokafka_options
from services.common.messages import Record
from services.common.settings import CommonSettings

log = logging.getLogger("churnwatch.consumer")


# A batch's records, and what ``prepare`` made of them (None without a prepare step).
Handler = Callable[[list[Record], Any], Awaitable[None]]
Prepare = Callable[[list[Record]], Any]


def next_offsets(records: Sequence[Record]) -> dict[tuple[str, int], int]:
    """The offsets to commit after ``records``: one past the last of each partition.

    >>> next_offsets([Record(None, b"", "t", 0, 7), Record(None, b"", "t", 1, 3),
    ...               Record(None, b"", "t", 0, 8)])
    {('t', 0): 9, ('t', 1): 4}
    """
    out: dict[tuple[str, int], int] = {}
    for r in records:
        tp = (r.topic, r.partition)
        out[tp] = max(out.get(tp, -1), r.offset + 1)
    return out


class BatchConsumer:
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

    async def _send_commit(self) -> None:
        """Send the handled offsets not sent yet, after the commit before (order); lock held."""
        await self.committed()
        offsets, self._uncommitted = self._uncommitted, {}
        if offsets:
            self._last_sent = asyncio.get_running_loop().time()
            self._commit = asyncio.ensure_future(self.commit(offsets))

    async def _flush_later(self) -> None:
        """Send what is handled once the interval is up, if no batch has sent it by then."""
        try:
            loop = asyncio.get_running_loop()
            await asyncio.sleep(max(0.0, self._last_sent + self.commit_every_s - loop.time()))
            async with self.lock:
                await self._send_commit()
        finally:
            self._flusher = None

    async def flush(self) -> None:
        """Send every handled offset and wait until it landed (rebalance, stop); lock held."""
        await self._send_commit()
        await self.committed()

    async def committed(self) -> None:
        """Wait for the commit in flight, if any."""
        pending, self._commit = self._commit, None
        if pending is not None:
            await pending

    def lag(self) -> int:
        """Records on this member's partitions not handed to the handler yet, as of the
        last fetch from each; a partition not fetched from since it was assigned counts 0.

        Called from the metrics server's thread at each scrape: a partition revoked
        in the meantime is skipped, and the value only moves with fetches (a worker
        stuck on a batch fetches no more: ChurnwatchScorerStalled is that alert).
        """
        if self.consumer is None:
            return 0
        total = 0
        for (topic, partition), position in list(self._fetched.items()):
            try:
                end = self.consumer.highwater(TopicPartition(topic, partition))
            except (AssertionError, AttributeError):  # revoked, or stopped (aiokafka asserts)
                continue
            if end is not None:
                total += max(0, end - position)
        return total

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

    async def commit(self, offsets: dict[tuple[str, int], int]) -> None:
        try:
            await self.consumer.commit(
                {
                    TopicPartition(topic, partition): OffsetAndMetadata(offset, "")
                    for (topic, partition), offset in offsets.items()
                }
            )
        except (CommitFailedError, KafkaError) as exc:
            # The effects are durable; the partition's next owner gets these records
            # again from the last commit, and they change nothing (idempotent per event).
            log.warning(
                "offset commit failed; the batch may be redelivered", extra={"error": str(exc)}
            )


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

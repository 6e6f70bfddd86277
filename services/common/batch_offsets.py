"""The batch consumer's offsets: the commits of handled batches, and the lag of fetched ones.

:class:`BatchOffsets`, the base class of
:class:`~services.common.batch_consumer.BatchConsumer`, keeps its offsets: those
handled and not sent yet, the commit in flight, the next to hand over by
partition. Apart from the fetch loop and the rebalance listener, which call it
(in that module, whose ``__init__`` sets up the state used here), so that how
commits are merged, ordered and sent, and what the lag counts, read on their own.

At most one commit every ``commit_every_s`` (0: one per batch): under light
load batches are a few records each, hundreds a second, and a commit for
each cost the worker and the broker more than the records did. The handled
batches' offsets wait, merged, until the interval has passed since the last
commit, then go out with the next batch or, if none comes, on their own; a
rebalance and a stop send them first. A crash redelivers at most that much
more, idempotently.

:meth:`BatchOffsets.lag` is the member's backlog for ``/metrics``: what the
broker last reported as each partition's end, minus the next offset to hand
over, with no request of its own (a scrape must not wait on Kafka).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from aiokafka import TopicPartition
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from services.common.messages import Record

log = logging.getLogger("churnwatch.consumer")


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


class BatchOffsets:
    """Commits sent and awaited, and the lag, for a ``BatchConsumer`` (its base class).

    The attributes are set by ``BatchConsumer.__init__``.
    """

    consumer: Any
    lock: asyncio.Lock
    commit_every_s: float
    _commit: asyncio.Future[None] | None
    _uncommitted: dict[tuple[str, int], int]
    _last_sent: float
    _flusher: asyncio.Future[None] | None
    _fetched: dict[tuple[str, int], int]

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

"""The scorer's Redis adapter: one pipelined read and one transactional write per batch.

The key layout, and why it has this shape, is in :mod:`~services.scorer.adapters.redis_layout`.

Every per-user key gets a TTL of ``user_ttl_days`` on each write, so a user
gone for good stops costing memory. Snapshots live in the user's string until
their label resolves (labelling always resolves one by ``taken_at + horizon +
inactivity``), or with the user.

:class:`RedisUserStore` (below) is what the scorer constructs and calls. It reads
a batch's users itself (``load``) and hands the rest, one call per batch or per
round, to the collaborators it holds, each in a module of its own:

redis_writes.py    BatchWriter: a micro-batch's write (``save``); what stays atomic on
                   one Redis and on a Redis Cluster
redis_labels.py    LabelSnapshots: a learning round's snapshots, read, then trimmed
redis_indexes.py   ShardedIndexes: the shared indexes' commands and range reads
redis_worker.py    WorkerState: the alert outbox, checkpoint requests, model checkpoints
redis_commands.py  the commands sent through the ``APPLY`` script, and how they are packed
redis_scripts.py   the Lua scripts on users' keys (redis_index_scripts.py: on the shared indexes)
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable, UnreadableStored
from services.common.redis_client import AsyncRedis, is_cluster
from services.notifier.adapters.redis_layout import erased_key
from services.scorer.adapters.redis_commands import pack
from services.scorer.adapters.redis_indexes import ShardedIndexes
from services.scorer.adapters.redis_labels import LabelSnapshots
from services.scorer.adapters.redis_layout import (
    INDEX_SHARDS,
    StoreKeys,
    UserString,
    day_key,
    join_user,
    pack_snapshot,
    shard_of,
    split_user,
    unpack_snapshot,
    user_fields,
    user_key,
)
from services.scorer.adapters.redis_scripts import LOAD
from services.scorer.adapters.redis_worker import WorkerState
from services.scorer.adapters.redis_writes import BatchWriter
from services.scorer.rows import StoredUser, UserWrite

__all__ = [
    "INDEX_SHARDS",
    "RedisUserStore",
    "UserString",
    "day_key",
    "join_user",
    "pack_snapshot",
    "shard_of",
    "split_user",
    "unpack_snapshot",
    "user_fields",
    "user_key",
]


class RedisUserStore:
    """Implements the scorer's ``UserStore`` port on Redis."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        prefix: str,
        user_ttl_s: int,
        alert_history: int = 50,
        worker: str = "scorer",
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        self.r = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.keys = keys = StoreKeys.of(prefix, worker)
        self.shards = index_shards
        self._load = None if self.cluster else client.register_script(LOAD)
        self._indexes = ShardedIndexes(client, shards=index_shards, cluster=self.cluster)
        self._writer = BatchWriter(
            client,
            keys=keys,
            user_ttl_s=user_ttl_s,
            alert_history=alert_history,
            indexes=self._indexes,
            cluster=self.cluster,
        )
        self._labels = LabelSnapshots(
            client, keys=keys, indexes=self._indexes, cluster=self.cluster
        )
        self._worker = WorkerState(client, keys=keys)

    async def load(self, user_ids: Sequence[str]) -> dict[str, StoredUser]:
        """The batch's users as stored: one script call on one Redis, a pipeline on a cluster."""
        try:
            if not user_ids:
                rows = []
            elif self._load is not None:
                rows = await self._load(args=[self.prefix, pack(list(user_ids))])
            else:
                async with self.r.pipeline(transaction=False) as pipe:
                    for uid in user_ids:
                        keys = (user_key(self.prefix, uid, "s"), user_key(self.prefix, uid))
                        pipe.eval(LOAD, 3, *keys, erased_key(self.prefix, uid))
                    rows = [found[0] for found in await pipe.execute()]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return {uid: _stored(row) for uid, row in zip(user_ids, rows, strict=True)}

    async def save(self, writes: Iterable[UserWrite]) -> None:
        """Write a whole micro-batch (:meth:`BatchWriter.save <.redis_writes.BatchWriter.save>`)."""
        await self._writer.save(writes)

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]:
        """Users whose last activity lies in any [low, high) of ``ranges``, maybe twice
        (:meth:`ShardedIndexes.between <.redis_indexes.ShardedIndexes.between>`).

        Unbounded on purpose: the sweep moves its mark forward, so a user left
        out here would not be re-scored for that day at all.
        """
        return await self._indexes.between(self.keys.lastseen, ranges)

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        """Users with a snapshot whose label may resolve by ``now`` (a range query a shard)."""
        return await self._indexes.up_to(self.keys.snapdue, now, limit=limit)

    # A learning round's snapshots: redis_labels.LabelSnapshots.

    async def load_snapshots(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]:
        return await self._labels.load_snapshots(user_ids)

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        await self._labels.keep_snapshots(remaining)

    # The outbox, checkpoint requests and checkpoints: redis_worker.WorkerState.

    async def outbox(self) -> list[bytes]:
        return await self._worker.outbox()

    async def published(self, alert_ids: Sequence[str]) -> None:
        await self._worker.published(alert_ids)

    async def checkpoint_request(self) -> bytes | str | None:
        return await self._worker.checkpoint_request()

    async def checkpoint_done(self, request: bytes | str) -> None:
        await self._worker.checkpoint_done(request)

    async def model_request(self, worker: str) -> bytes | None:
        return await self._worker.model_request(worker)

    async def model_request_done(self, worker: str, request: bytes, answer: bytes) -> None:
        await self._worker.model_request_done(worker, request, answer)

    async def save_quality(self, worker: str, data: bytes) -> None:
        await self._worker.save_quality(worker, data)

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None:
        return await self._worker.load_checkpoint(worker, part)

    async def newest_checkpoint(self, *, besides: str) -> tuple[str, bytes, bytes | None] | None:
        return await self._worker.newest_checkpoint(besides=besides)

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None:
        await self._worker.save_checkpoint(worker, data, part)


def _stored(row: list[Any]) -> StoredUser:
    """A ``LOAD`` row: {string, wb}, the old hash's {f, p, r, sd, wb}, or {"erased"}."""
    if len(row) == 1:
        return StoredUser(None, None, None, None, erased=True)
    if len(row) == 2:
        if not row[0]:
            return StoredUser(None, None, None, None, row[1])
        try:
            user = split_user(row[0], snapshots=False)
        except UnreadableStored:
            # Damaged, or a newer version's layout read after a rollback: handed on
            # whole as the state, which the state decoder refuses. The batch then
            # dead-letters the user's events with the reason and writes nothing of the
            # user; the sweeps pass over it. The other users of the batch go on.
            return StoredUser(row[0], None, None, None, row[1])
        return StoredUser(
            user.features,
            user.policy or None,
            user.record or None,
            user.snapshot_day or None,
            row[1],
        )
    return StoredUser(row[0], row[1], row[2], int(row[3]) if row[3] else None, row[4])

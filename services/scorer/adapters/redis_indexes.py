"""The scorer's shared indexes in Redis, sharded by user: the commands that write them
and the two range reads (the silent-user sweep's, the label round's).

Each index is a sorted set ``base`` split into ``base:0`` .. ``base:<n-1>`` by
``shard_of`` (layout and why: :mod:`~services.scorer.adapters.redis_layout`);
the old unsharded ``base`` is still read, and emptied as users are written. On
one Redis the scripts pick the shards (``ZADDS``/``ZREMS`` in ``APPLY``,
``SCAN_SHARDS``); on a cluster the commands name each shard. ``between`` and
``up_to`` answer as ``memory_store.SortedIndex``'s methods of the same names.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_commands import Command, chunks
from services.scorer.adapters.redis_index_scripts import SCAN_SHARDS
from services.scorer.adapters.redis_layout import index_keys, merge_ranges, shard_of


class ShardedIndexes:
    """The sharded indexes of one Redis (or cluster) ``client``, ``shards`` shards each."""

    def __init__(self, client: AsyncRedis, *, shards: int, cluster: bool) -> None:
        self.r = client
        self.shards = shards
        self.cluster = cluster
        self._scan_shards = None if cluster else client.register_script(SCAN_SHARDS)

    def adds(self, base: str, scores: dict[str, float], flag: str) -> list[Command]:
        """ZADD each member into its shard of ``base`` (and out of the old unsharded key)."""
        if not scores:
            return []
        if not self.cluster:  # the script picks the shards (ZADDS in APPLY)
            return [
                ("ZADDS", base, self.shards, flag, *(x for m, sc in part for x in (sc, m)))
                for part in chunks(list(scores.items()))
            ]
        by_shard: dict[int, list[Any]] = {}
        for member, score in scores.items():
            by_shard.setdefault(shard_of(member, self.shards), []).extend((score, member))
        flags = (flag,) if flag else ()
        out: list[Command] = [
            ("ZADD", f"{base}:{shard}", *flags, *pairs) for shard, pairs in by_shard.items()
        ]
        if flag != "LT":  # with LT, an earlier time in the old key still counts
            out += [("ZREM", base, *part) for part in chunks(list(scores))]
        return out

    def removes(self, base: str, members: Sequence[str]) -> list[Command]:
        if not members:
            return []
        if not self.cluster:
            return [("ZREMS", base, self.shards, *part) for part in chunks(members)]
        by_shard: dict[int, list[str]] = {}
        for member in members:
            by_shard.setdefault(shard_of(member, self.shards), []).append(member)
        out: list[Command] = [("ZREM", f"{base}:{s}", *ms) for s, ms in by_shard.items()]
        out += [("ZREM", base, *part) for part in chunks(members)]
        return out

    async def between(self, base: str, ranges: Sequence[tuple[float, float]]) -> list[str]:
        """Members of ``base`` with a score in any [low, high) of ``ranges``: one round trip
        on one Redis (a script reads every shard), one pipeline on a cluster.

        A member may come twice (in the old unsharded index and a shard, during a
        migration).
        """
        spans = merge_ranges(ranges)
        if not spans:
            return []
        try:
            if self._scan_shards is not None:
                args: list[Any] = [base, self.shards, "range"]
                args += [x for span in spans for x in span]
                found = await self._scan_shards(args=args)
            else:
                found = await self._scan_cluster(base, spans)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [u.decode() if isinstance(u, bytes) else str(u) for u in found]

    async def _scan_cluster(self, base: str, spans: list[tuple[float, float]]) -> list[Any]:
        lows = [low for low, _ in spans]
        async with self.r.pipeline(transaction=False) as pipe:
            for low, high in spans:
                pipe.zrangebyscore(base, low, f"({high}")
            for shard in range(self.shards):
                pipe.zrangebyscore(
                    f"{base}:{shard}", spans[0][0], f"({spans[-1][1]}", withscores=True
                )
            found = await pipe.execute()
        out = [m for part in found[: len(spans)] for m in part]
        for part in found[len(spans) :]:
            for member, score in part:
                k = bisect.bisect_right(lows, score) - 1
                if k >= 0 and score < spans[k][1]:
                    out.append(member)
        return out

    async def up_to(self, base: str, high: float, *, limit: int) -> list[str]:
        """Members of ``base`` with a score <= ``high``, each once (a range query a shard)."""
        try:
            if self._scan_shards is not None:
                found = await self._scan_shards(args=[base, self.shards, "due", high, limit])
            else:
                keys = index_keys(base, self.shards)
                async with self.r.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zrangebyscore(key, "-inf", high, start=0, num=limit)
                    found = [m for part in await pipe.execute() for m in part][:limit]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return list(dict.fromkeys(u.decode() if isinstance(u, bytes) else str(u) for u in found))

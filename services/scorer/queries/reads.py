"""Reading the scorer's keys: pipelines, index counts and merges, key-family scans.

:class:`RedisReads` is the one object of the queries that holds the client; it
turns Redis errors into :class:`StoreUnavailable`. The ``queue_*`` functions
add a batch of reads to a pipeline (``RedisReads.run`` gives them one), and
:func:`head_record` finds a user's score record in what they read.
"""

from __future__ import annotations

import math
import time
from collections.abc import Awaitable, Callable
from typing import Any, Literal

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster
from services.scorer.adapters.redis_index_scripts import INDEX_READ
from services.scorer.adapters.redis_layout import INDEX_SHARDS, user_key


def as_text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisReads:
    """The client and key prefix the queries read with, and the reads they share."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        prefix: str,
        scan_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.shards = index_shards
        # None on a cluster, where the shards of an index are in several slots.
        self.index_read = None if is_cluster(client) else client.register_script(INDEX_READ)
        self.scan_every_s = scan_every_s
        self.clock = clock
        self._families: dict[str, tuple[float, list[str]]] = {}

    async def run(self, build: Callable[[Any], object]) -> list[Any]:
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                build(pipe)
                return list(await pipe.execute())
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

    async def call(self, command: Awaitable[Any]) -> Any:
        try:
            return await command
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

    def keys(self, base: str) -> list[str]:
        """A sharded index's keys: the unsharded one of before, then the shards."""
        return [base, *(f"{base}:{s}" for s in range(self.shards))]

    async def count(self, bases: list[str], at_most: str) -> list[tuple[int, int]]:
        """(members, members scored <= ``at_most``) of each sharded index."""
        try:
            if self.index_read is not None:  # one script per index (each reads ~1,000 keys)
                out = []
                for base in bases:
                    a, b = await self.index_read(args=["count", self.shards, at_most, base])
                    out.append((int(a), int(b)))
                return out
            async with self.r.pipeline(transaction=False) as pipe:
                for base in bases:
                    for key in self.keys(base):
                        pipe.zcard(key)
                        pipe.zcount(key, "-inf", at_most)
                found = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        per = 2 * (self.shards + 1)
        parts = [found[i * per : (i + 1) * per] for i in range(len(bases))]
        return [(sum(part[::2]), sum(part[1::2])) for part in parts]

    async def merge(
        self, bases: list[str], *, top: float, after: str | None, limit: int
    ) -> tuple[list[tuple[str, float]], bool]:
        """The next ``limit`` entries after the cursor across sharded indexes (one Redis)."""
        assert self.index_read is not None
        high = "+inf" if math.isinf(top) else repr(top)
        args: list[Any] = ["merge", self.shards, high, after or "", limit, *bases]
        found = await self.call(self.index_read(args=args))
        entries = [(as_text(found[i]), float(found[i + 1])) for i in range(0, len(found) - 1, 2)]
        return entries, bool(found[-1])

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except RedisError:
            return False

    async def family(self, pattern: str) -> list[str]:
        """Key names matching ``pattern`` (SCAN MATCH), cached for ``scan_every_s``."""
        now = time.monotonic()
        cached = self._families.get(pattern)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            names = sorted({as_text(k) async for k in self.r.scan_iter(match=pattern, count=1000)})
        except RedisError as exc:
            raise StoreUnavailable(f"Redis scan failed: {exc}") from exc
        self._families[pattern] = (now + self.scan_every_s, names)
        return names


def queue_gets(keys: list[str], pipe: Any) -> None:
    for key in keys:
        pipe.get(key)


# Bytes of a user's string that hold its score record (it comes first); a longer
# record (an old JSON one) is read whole.
_HEAD_BYTES = 160


def queue_user_reads(prefix: str, user_ids: list[str], pipe: Any, *, head: bool = False) -> None:
    """Per user: its string (or with ``head`` only its first bytes) and its old hash's (f, r)."""
    for uid in user_ids:
        key = user_key(prefix, uid, "s")
        if head:
            pipe.getrange(key, 0, _HEAD_BYTES - 1)
            pipe.hget(user_key(prefix, uid), "r")
        else:
            pipe.get(key)
            pipe.hmget(user_key(prefix, uid), "f", "r")


def head_record(head: bytes | None, old: bytes | None) -> bytes | Literal[False] | None:
    """The score record at the head of a user's string, else the old hash's; False
    when the record goes on past the head, or the string is of another layout."""
    if not head:
        return old
    if head[:1] != b"\xc1":
        return False  # another layout: read whole, where it is refused with the reason
    n = int.from_bytes(head[1:3], "little")
    return (head[3 : 3 + n] or None) if 3 + n <= len(head) else False

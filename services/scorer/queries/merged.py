"""Sharded sorted sets read as one: the merge under the at-risk list's pages."""

from __future__ import annotations

import math
from collections.abc import Awaitable, Callable
from typing import Any

from services.scorer.queries.reads import RedisReads, as_text


class MergedIndex:
    """Sharded sorted sets read as one, highest score first (ties: highest member
    first), from a cursor (``top``, ``after``) on. On one Redis each ``take`` is
    one script (``INDEX_READ``, a k-way merge on the server) from the cursor of
    the last entry taken; on a cluster, a k-way merge here that reads each key in
    small chunks as it runs dry (one pipeline per round)."""

    def __init__(
        self, reads: RedisReads, bases: list[str], *, top: float, after: str | None, chunk: int
    ) -> None:
        self.reads = reads
        self.bases = bases
        self.keys = [key for base in bases for key in reads.keys(base)]
        self.top, self.after = top, after
        self.chunk = max(2, chunk // len(self.keys))
        self.done = False
        self.high = "+inf" if math.isinf(top) else repr(top)
        self.buffers: list[list[tuple[float, str]]] = [[] for _ in self.keys]  # reversed: pop()
        self.offsets = [0] * len(self.keys)
        self.open = [True] * len(self.keys)

    @property
    def more(self) -> bool:
        if self.reads.index_read is not None:
            return not self.done
        return any(self.open) or any(self.buffers)

    async def _refill(self, run: Callable[[Any], Awaitable[list[Any]]]) -> None:
        dry = [i for i, buf in enumerate(self.buffers) if not buf and self.open[i]]
        if not dry:
            return

        def read(pipe: Any) -> None:
            for i in dry:
                pipe.zrevrangebyscore(
                    self.keys[i],
                    self.high,
                    "-inf",
                    start=self.offsets[i],
                    num=self.chunk,
                    withscores=True,
                )

        for i, found in zip(dry, await run(read), strict=True):
            self.offsets[i] += len(found)
            self.open[i] = len(found) == self.chunk
            entries = [(float(score), as_text(m)) for m, score in found]
            if self.after is not None:  # the tie group's part already served
                entries = [(sc, m) for sc, m in entries if sc < self.top or m < self.after]
            self.buffers[i] = entries[::-1]

    async def take(
        self, n: int, run: Callable[[Any], Awaitable[list[Any]]]
    ) -> list[tuple[str, float]]:
        """The next ``n`` (member, score) entries, or fewer at the end."""
        if self.reads.index_read is not None:
            if self.done:
                return []
            entries, more = await self.reads.merge(
                self.bases, top=self.top, after=self.after, limit=n
            )
            if entries:
                self.after, self.top = entries[-1][0], entries[-1][1]
            self.done = not more
            return entries
        out: list[tuple[str, float]] = []
        while len(out) < n:
            while any(not buf and self.open[i] for i, buf in enumerate(self.buffers)):
                await self._refill(run)
            heads = [(buf[-1], i) for i, buf in enumerate(self.buffers) if buf]
            if not heads:
                break
            (score, member), i = max(heads)
            self.buffers[i].pop()
            out.append((member, score))
        return out

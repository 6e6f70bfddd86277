"""The scorer's store in memory: what :class:`RedisUserStore` keeps, in one process.

For offline replays (``churnwatch bench cdnow --in-process``) and tests: the
scorer's :class:`~services.scorer.runtime.Runtime` and
:class:`~services.scorer.replay_mode.ReplayScorer` run on it unchanged, without
Kafka and Redis. It keeps only what the scorer reads back: each user's feature
state, policy state, score record, last snapshot day and pending snapshots
(the same bytes, so snapshots keep the stored form's float16 rounding), the
last-activity index of the silent-user sweep, the label-due index, and the
model checkpoints. The rest of what the Redis adapter writes (alert
histories, at-risk and retention indexes, the outbox) is for the APIs and the
notifier, and is dropped here.

Where order matters it is Redis's: the label-due users come as the ``SCAN_SHARDS``
script returns them (shard by shard, each by score, then member), cut at
``limit``, so the model learns its labels in the same order as on Redis. The
last-activity index returns users in the same order too (the sweep's scores
feed the RFM quantiles in that order). ``tests/e2e/test_replay.py`` checks a
replay on this store against one through Kafka and Redis (scores, alerts and the
model versions they name).

>>> import asyncio
>>> store = MemoryUserStore()
>>> w = UserWrite("u1", b"F", b"P", b"R", 100.0, 0.5, snapshot=b"S", snapshot_day=1,
...               label_due=200.0)
>>> asyncio.run(store.save([w]))
>>> asyncio.run(store.load(["u1", "u2"]))["u1"]
StoredUser(features=b'F', policy=b'P', record=b'R', snapshot_day=1, winback=None, erased=False)
>>> asyncio.run(store.users_with_labels_due(199.0, limit=10)), asyncio.run(
...     store.users_with_labels_due(200.0, limit=10))
([], ['u1'])
>>> asyncio.run(store.silent_between([(50.0, 100.0)])), asyncio.run(
...     store.silent_between([(100.0, 101.0)]))
([], ['u1'])
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from services.scorer.adapters.redis_layout import INDEX_SHARDS, merge_ranges, shard_of
from services.scorer.adapters.redis_worker import read_quality
from services.scorer.rows import StoredUser, UserWrite


class SortedIndex:
    """A sorted set (member -> score) answering range queries in Redis's order.

    >>> ix = SortedIndex(shards=4)
    >>> ix.add("a", 2.0); ix.add("b", 1.0); ix.add("a", 3.0, lt=True); ix.add("c", 5.0)
    >>> ix.between([(0.0, 2.5)]), ix.up_to(5.0, limit=2) == ix.up_to(5.0)[:2]
    (['a', 'b'], True)
    >>> ix.remove("a"); sorted(ix.between([(0.0, 9.0)]))
    ['b', 'c']
    """

    def __init__(self, *, shards: int) -> None:
        self.shards = shards
        self._score: dict[str, float] = {}
        self._members: dict[float, set[str]] = {}
        self._scores: list[float] = []  # the distinct scores, ascending
        self._shard: dict[str, int] = {}

    def add(self, member: str, score: float, *, lt: bool = False) -> None:
        """ZADD (``lt``: ZADD LT, only ever lowers an existing score)."""
        old = self._score.get(member)
        if old is not None and (old == score or (lt and old <= score)):
            return
        if old is not None:
            self._discard(member, old)
        self._score[member] = score
        members = self._members.get(score)
        if members is None:
            members = self._members[score] = set()
            bisect.insort(self._scores, score)
        members.add(member)

    def remove(self, member: str) -> None:
        old = self._score.pop(member, None)
        if old is not None:
            self._discard(member, old)

    def _discard(self, member: str, score: float) -> None:
        members = self._members[score]
        members.discard(member)
        if not members:
            del self._members[score]
            del self._scores[bisect.bisect_left(self._scores, score)]

    def _in(self, low: float, high: float, *, high_inclusive: bool) -> Iterable[str]:
        i = bisect.bisect_left(self._scores, low)
        cut = bisect.bisect_right if high_inclusive else bisect.bisect_left
        j = cut(self._scores, high)
        for score in self._scores[i:j]:
            yield from self._members[score]

    def _redis_order(self, members: Iterable[str]) -> list[str]:
        """Shard by shard (``shard_of``, as the scripts compute it), each by score, then member."""
        shard = self._shard
        for m in members:
            if m not in shard:
                shard[m] = shard_of(m, self.shards)
        score = self._score
        return sorted(members, key=lambda m: (shard[m], score[m], m.encode()))

    def between(self, ranges: Sequence[tuple[float, float]]) -> list[str]:
        """Members with a score in any [low, high), as ``SCAN_SHARDS`` "range" returns them."""
        spans = merge_ranges(ranges)
        found = [m for low, high in spans for m in self._in(low, high, high_inclusive=False)]
        return self._redis_order(found)

    def up_to(self, high: float, *, limit: int | None = None) -> list[str]:
        """Members with a score <= ``high``, as ``SCAN_SHARDS`` "due" returns them."""
        found = self._redis_order(list(self._in(float("-inf"), high, high_inclusive=True)))
        return found if limit is None else found[:limit]


@dataclass(slots=True)
class _User:
    features: bytes
    policy: bytes = b""
    record: bytes = b""
    snapshot_day: int = 0
    snapshots: list[bytes] = field(default_factory=list)


class MemoryUserStore:
    """Implements the store the scorer's ``Runtime`` uses (``RedisUserStore``'s methods)."""

    def __init__(self, *, index_shards: int = INDEX_SHARDS) -> None:
        self.users: dict[str, _User] = {}
        self.lastseen = SortedIndex(shards=index_shards)
        self.snapdue = SortedIndex(shards=index_shards)
        self.checkpoints: dict[str, bytes] = {}
        # Users whose erase guard is up (Redis: ``P:{uid}:erased``), as the tests set it.
        self.erased: set[str] = set()
        # Model-load requests by worker, and the answers (as Redis has them, for the tests).
        self.model_requests: dict[str, bytes] = {}
        self.model_answers: dict[str, bytes] = {}

    async def load(self, user_ids: Sequence[str]) -> dict[str, StoredUser]:
        out = {}
        for uid in user_ids:
            u = self.users.get(uid)
            if u is None:
                out[uid] = StoredUser(None, None, None, None, erased=uid in self.erased)
            else:
                out[uid] = StoredUser(
                    u.features, u.policy or None, u.record or None, u.snapshot_day or None
                )
        return out

    async def save(self, writes: Iterable[UserWrite]) -> None:
        """Like ``PUTUSER``: features replaced, record and policy when scored, snapshot
        appended; a user with no state under the erase guard is not written."""
        for w in writes:
            user = self.users.get(w.user_id)
            if user is None:
                if w.user_id in self.erased:
                    continue
                user = self.users[w.user_id] = _User(w.features)
            user.features = w.features
            if w.policy is not None and w.record is not None:
                user.policy, user.record = w.policy, w.record
            if w.snapshot is not None and w.snapshot_day is not None:
                user.snapshots.append(w.snapshot)
                user.snapshot_day = w.snapshot_day
            self.lastseen.add(w.user_id, w.last_active)
            if w.label_due is not None:
                self.snapdue.add(w.user_id, w.label_due, lt=True)

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]:
        return self.lastseen.between(ranges)

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        return self.snapdue.up_to(now, limit=limit)

    async def load_snapshots(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]:
        out: dict[str, tuple[bytes | None, list[bytes]]] = {}
        for uid in user_ids:
            user = self.users.get(uid)
            out[uid] = (None, []) if user is None else (user.features, list(user.snapshots))
        return out

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        """Drop each user's ``n`` oldest snapshots; set its next due time (None: unindex it)."""
        for uid, (dropped, due) in remaining.items():
            user = self.users.get(uid)
            if dropped and user is not None:
                del user.snapshots[:dropped]
            if due is None:
                self.snapdue.remove(uid)
            else:
                self.snapdue.add(uid, due)

    async def outbox(self) -> list[bytes]:
        return []

    async def published(self, alert_ids: Sequence[str]) -> None:
        return None

    async def checkpoint_request(self) -> bytes | str | None:
        return None  # requests come from other processes, through Redis

    async def checkpoint_done(self, request: bytes | str) -> None:
        pass

    async def model_request(self, worker: str) -> bytes | None:
        return self.model_requests.get(worker)

    async def model_request_done(self, worker: str, request: bytes, answer: bytes) -> None:
        if self.model_requests.get(worker) == request:
            del self.model_requests[worker]
        self.model_answers[worker] = answer

    async def save_quality(self, worker: str, data: bytes) -> None:
        self.checkpoints[f"{worker}:quality"] = data

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None:
        return self.checkpoints.get(worker + (f":{part}" if part else ""))

    async def newest_checkpoint(self, *, besides: str) -> tuple[str, bytes, bytes | None] | None:
        saved = {
            key[: -len(":quality")]: (read_quality(data) or {}).get("saved_at", 0.0)
            for key, data in self.checkpoints.items()
            if key.endswith(":quality") and key[: -len(":quality")] != besides
        }
        ready = [(at, w) for w, at in saved.items() if w in self.checkpoints]
        if not ready:
            return None
        worker = max(ready)[1]
        return worker, self.checkpoints[worker], self.checkpoints.get(f"{worker}:rfm")

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None:
        self.checkpoints[worker + (f":{part}" if part else "")] = data

"""The scorer's Redis adapter: one pipelined read and one transactional write per batch.

The key layout, and why it has this shape, is in :mod:`~services.scorer.adapters.redis_layout`.

Every per-user key gets a TTL of ``user_ttl_days`` on each write, so a user
gone for good stops costing memory. Snapshots live in the user's string until
their label resolves (labelling always resolves one by ``taken_at + horizon +
inactivity``), or with the user.

Writes, on one Redis: a micro-batch is ONE MULTI/EXEC, users' keys, the outbox
and the shared indexes together; a crash leaves all of it or none.

On a Redis Cluster (``CHURNWATCH_REDIS_CLUSTER=true``) one transaction cannot
span slots, so :meth:`RedisUserStore.save` writes in two steps:

1. the batch's alerts into the outbox ``P:outbox:<worker>`` (one HSET);
2. one pipeline, one round trip per master: for each user, a Lua script that
   applies all of that user's commands atomically (its keys share the slot of
   ``{uid}``); then the shared indexes (ZADD last-seen/at-risk/label-due, the
   HLLs, the win-back counters), which are not in the users' slots.

What is still atomic: everything of one user (features, policy state, score
record, snapshot, alert history). What is not any more:

- the batch as a whole: after a crash some users of the batch may be stored
  and others not. The offsets are not committed, the batch is redelivered, and
  the per-event idempotency (``event_id``s kept in the feature state) makes the
  users already stored skip the events they have; the rest apply them.
- a user's state and the alert outbox: the outbox is written *first*, so a
  stored "alerted" state always has its alert in the outbox (never lost). A
  crash between the two steps leaves an alert in the outbox whose state was not
  stored: it is republished at start (at least once, same ``alert_id``; the
  notifier sends once per alert) and the redelivered events decide again, so
  in the worst case one alert goes out that the stored state does not record.
- a user's state and the shared indexes: an index entry may lag its user by
  one failed batch (the redelivery writes it again; ZADD and PFADD are
  idempotent). The win-back "won" counter is an INCR: a failure between the
  user's step and the counter's can miss or repeat one count.

``keep_snapshots`` (after learning) trims each user's snapshot list and moves
its label-due time: one transaction on one Redis, one pipeline on a cluster; a
partial failure there re-reads (never loses) snapshots, as on one Redis when
the whole transaction fails after the model learned.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import msgpack
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster
from services.scorer.adapters.redis_layout import (
    INDEX_SHARDS,
    UserString,
    day_key,
    join_user,
    merge_ranges,
    pack_snapshot,
    shard_of,
    split_user,
    unpack_snapshot,
    user_fields,
    user_key,
)
from services.scorer.adapters.redis_scripts import APPLY, LOAD, LOAD_SNAPSHOTS, SCAN_SHARDS
from services.scorer.core.segments import STAGES
from services.scorer.rows import ANY_STAGE, StoredUser, UserWrite

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

Command = tuple[Any, ...]

# Members per ZADD/ZREM/PFADD/HSET in a script: Lua's unpack() is bounded by
# its C stack (~8,000 values), and a micro-batch may hold more users.
_CHUNK = 1000


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


class RedisUserStore:
    """Implements the scorer's ``UserStore`` port on Redis."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        prefix: str,
        user_ttl_s: int,
        snapshot_ttl_s: int,
        alert_history: int = 50,
        worker: str = "scorer",
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        self.r = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.user_ttl_s = user_ttl_s
        # The old snapshot lists' TTL; snapshots in the user's string go when their
        # label resolves (module doc). Kept so callers need not change.
        self.snapshot_ttl_s = snapshot_ttl_s
        self.alert_history = alert_history
        self.lastseen_key = f"{prefix}:lastseen"
        self.atrisk_key = f"{prefix}:atrisk"
        self.snapdue_key = f"{prefix}:snapdue"
        self.outbox_key = f"{prefix}:outbox:{worker}"
        self.shards = index_shards
        self._scan_shards = None if self.cluster else client.register_script(SCAN_SHARDS)
        self._apply = None if self.cluster else client.register_script(APPLY)
        self._load = None if self.cluster else client.register_script(LOAD)
        self._load_snapshots = None if self.cluster else client.register_script(LOAD_SNAPSHOTS)

    async def load(self, user_ids: Sequence[str]) -> dict[str, StoredUser]:
        try:
            if not user_ids:
                rows = []
            elif self._load is not None:
                rows = await self._load(args=[self.prefix, _pack(list(user_ids))])
            else:
                keys = [user_key(self.prefix, uid, kind) for uid in user_ids for kind in "su"]
                async with self.r.pipeline(transaction=False) as pipe:
                    for i in range(0, len(keys), 2):
                        pipe.eval(LOAD, 2, keys[i], keys[i + 1])
                    rows = [found[0] for found in await pipe.execute()]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return {uid: _stored(row) for uid, row in zip(user_ids, rows, strict=True)}

    async def save(self, writes: Iterable[UserWrite]) -> None:
        """Write a whole micro-batch: one script on one Redis (atomic, like a
        MULTI/EXEC), see the module doc for a cluster.

        The shared indexes (last activity, risk, label due times, daily HLLs)
        take one command per batch with every user in it, not one per user:
        queueing commands is most of this adapter's CPU time.
        """
        shared = _Shared()
        try:
            if self._apply is not None:
                commands: list[Command] = []
                for w in writes:
                    commands += self._user_commands(w)
                    shared.add(w)
                commands += self._shared_commands(shared, outbox=True)
                await self._apply_all(commands)
                return
            users = []
            for w in writes:
                users.append(self._user_commands(w))
                shared.add(w)
            if shared.outbox:  # first: a stored "alerted" state always has its alert here
                await self.r.hset(self.outbox_key, mapping=shared.outbox)  # type: ignore[arg-type]
            async with self.r.pipeline(transaction=False) as pipe:
                for commands in users:
                    keys = list(dict.fromkeys(k for c in commands for k in _keys_of(c)))
                    pipe.eval(APPLY, len(keys), *keys, _pack(commands))
                for command in self._shared_commands(shared, outbox=False):
                    pipe.execute_command(*command)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def _apply_all(self, commands: list[Command]) -> None:
        """Run ``commands`` in one script call (one Redis only)."""
        if commands and self._apply is not None:
            await self._apply(args=[_pack(commands)])

    def _user_commands(self, w: UserWrite) -> list[Command]:
        """The commands on the user's own keys (one slot); the rest is in ``_Shared``."""
        key = user_key(self.prefix, w.user_id)
        scored = w.policy is not None and w.record is not None
        snapshot = w.snapshot is not None and w.snapshot_day is not None
        out: list[Command] = [
            (
                "PUTUSER",
                user_key(self.prefix, w.user_id, "s"),
                key,
                self.user_ttl_s,
                w.features,
                w.record if scored else b"",
                w.policy if scored else b"",
                w.snapshot if snapshot else b"",
                w.snapshot_day if snapshot else 0,
            )
        ]
        if w.winback is not None:
            out.append(("HDEL", key, "wb"))  # "wbid" stays: that alert never counts again
        if w.alert is not None:
            alerts_key = user_key(self.prefix, w.user_id, "alerts")
            out.append(("LPUSH", alerts_key, w.alert))
            out.append(("LTRIM", alerts_key, 0, self.alert_history - 1))
            out.append(("EXPIRE", alerts_key, self.user_ttl_s))
        return out

    def _shared_commands(self, shared: _Shared, *, outbox: bool) -> list[Command]:
        """The batch's commands on keys shared by all users (other slots than theirs)."""
        out: list[Command] = []
        if outbox and shared.outbox:
            # The outbox: written with the state that says "alerted", emptied once
            # Kafka acknowledged the alert, republished at start if a crash came between.
            for part in _chunks(list(shared.outbox.items())):
                out.append(("HSET", self.outbox_key, *(x for pair in part for x in pair)))
        for counter in shared.won:
            out.append(("INCR", f"{self.prefix}:winback:{counter}:won"))
        for stage, users in shared.left_stage.items():
            out += self._sharded_removes(f"{self.atrisk_key}:{stage}", users)
        sharded = [
            *((f"{self.atrisk_key}:{st}", risks, "") for st, risks in shared.by_stage.items()),
            (self.lastseen_key, shared.lastseen, ""),
            (self.snapdue_key, shared.due, "LT"),  # LT keeps the earliest due time
        ]
        for key, scores, flag in sharded:
            out += self._sharded_adds(key, scores, flag)
        hlls = [(f"{self.prefix}:cohort:{mark}", users) for mark, users in shared.cohorts.items()]
        hlls += [(day_key(self.prefix, day), users) for day, users in shared.active.items()]
        for hll, users in hlls:
            for part in _chunks(users):
                out.append(("PFADD", hll, *part))
            out.append(("EXPIRE", hll, 120 * 86400))
        return out

    def _sharded_adds(self, base: str, scores: dict[str, float], flag: str) -> list[Command]:
        """ZADD each member into its shard of ``base`` (and out of the old unsharded key)."""
        if not scores:
            return []
        if not self.cluster:  # the script picks the shards (ZADDS in APPLY)
            return [
                ("ZADDS", base, self.shards, flag, *(x for m, sc in part for x in (sc, m)))
                for part in _chunks(list(scores.items()))
            ]
        by_shard: dict[int, list[Any]] = {}
        for member, score in scores.items():
            by_shard.setdefault(shard_of(member, self.shards), []).extend((score, member))
        flags = (flag,) if flag else ()
        out: list[Command] = [
            ("ZADD", f"{base}:{shard}", *flags, *pairs) for shard, pairs in by_shard.items()
        ]
        if flag != "LT":  # with LT, an earlier time in the old key still counts
            out += [("ZREM", base, *part) for part in _chunks(list(scores))]
        return out

    def _sharded_removes(self, base: str, members: Sequence[str]) -> list[Command]:
        if not members:
            return []
        if not self.cluster:
            return [("ZREMS", base, self.shards, *part) for part in _chunks(members)]
        by_shard: dict[int, list[str]] = {}
        for member in members:
            by_shard.setdefault(shard_of(member, self.shards), []).append(member)
        out: list[Command] = [("ZREM", f"{base}:{s}", *ms) for s, ms in by_shard.items()]
        out += [("ZREM", base, *part) for part in _chunks(members)]
        return out

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]:
        """Users whose last activity lies in any [low, high) of ``ranges``: one round trip
        on one Redis (a script reads every shard), one pipeline on a cluster.

        Unbounded on purpose: the sweep moves its mark forward, so a user left
        out here would not be re-scored for that day at all. A user may come
        twice (in the old unsharded index and a shard, during a migration).
        """
        spans = merge_ranges(ranges)
        if not spans:
            return []
        try:
            if self._scan_shards is not None:
                args: list[Any] = [self.lastseen_key, self.shards, "range"]
                args += [x for span in spans for x in span]
                found = await self._scan_shards(args=args)
            else:
                found = await self._scan_cluster(self.lastseen_key, spans)
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

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        """Users with a snapshot whose label may resolve by ``now`` (a range query a shard)."""
        try:
            if self._scan_shards is not None:
                found = await self._scan_shards(
                    args=[self.snapdue_key, self.shards, "due", now, limit]
                )
            else:
                keys = [self.snapdue_key, *(f"{self.snapdue_key}:{s}" for s in range(self.shards))]
                async with self.r.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.zrangebyscore(key, "-inf", now, start=0, num=limit)
                    found = [m for part in await pipe.execute() for m in part][:limit]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return list(dict.fromkeys(u.decode() if isinstance(u, bytes) else str(u) for u in found))

    async def load_snapshots(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]:
        """Each user's feature state and pending snapshots, in one round trip."""
        try:
            if not user_ids:
                rows = []
            elif self._load_snapshots is not None:
                rows = await self._load_snapshots(args=[self.prefix, _pack(list(user_ids))])
            else:
                kinds = ("s", "u", "snap")
                keys = [user_key(self.prefix, uid, kind) for uid in user_ids for kind in kinds]
                async with self.r.pipeline(transaction=False) as pipe:
                    for i in range(0, len(keys), 3):
                        pipe.eval(LOAD_SNAPSHOTS, 3, *keys[i : i + 3])
                    rows = [x for found in await pipe.execute() for x in found]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        out = {}
        for i, uid in enumerate(user_ids):
            blob, features, listed = rows[3 * i : 3 * i + 3]
            snaps = [unpack_snapshot(snap) for snap in listed]  # the old list's: older
            if blob:
                user = split_user(blob)
                features = user.features
                snaps += user.snapshots
            out[uid] = (features, snaps)
        return out

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        """Drop each user's oldest ``n`` snapshots (now learned) and set its next due time."""
        try:
            trims: list[Command] = [
                (
                    "TRIMSNAP",
                    user_key(self.prefix, uid, "s"),
                    user_key(self.prefix, uid, "snap"),
                    dropped,
                )
                for uid, (dropped, _) in remaining.items()
                if dropped
            ]
            if self._apply is not None:  # one script, atomic like a transaction
                commands: list[Command] = trims
                due_now: dict[str, float] = {}
                gone: list[str] = []
                for uid, (_, due) in remaining.items():
                    if due is None:
                        gone.append(uid)
                    else:
                        due_now[uid] = due
                commands += self._sharded_removes(self.snapdue_key, gone)
                commands += self._sharded_adds(self.snapdue_key, due_now, "")
                await self._apply_all(commands)
                return
            # On a cluster the users' lists and the due index are in other slots
            # (see the module doc).
            async with self.r.pipeline(transaction=False) as pipe:
                for trim in trims:
                    pipe.eval(APPLY, 2, trim[1], trim[2], _pack([trim]))
                gone = [uid for uid, (_, due) in remaining.items() if due is None]
                due_now = {uid: due for uid, (_, due) in remaining.items() if due is not None}
                shared = self._sharded_removes(self.snapdue_key, gone)
                for command in shared + self._sharded_adds(self.snapdue_key, due_now, ""):
                    pipe.execute_command(*command)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def outbox(self) -> list[bytes]:
        """Alerts stored as raised whose publication was not confirmed."""
        try:
            found = await self.r.hvals(self.outbox_key)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [v if isinstance(v, bytes) else str(v).encode() for v in found]

    async def published(self, alert_ids: Sequence[str]) -> None:
        """Kafka acknowledged these alerts: take them out of the outbox."""
        if not alert_ids:
            return
        try:
            await self.r.hdel(self.outbox_key, *alert_ids)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def checkpoint_request(self) -> bytes | str | None:
        """The id ``churnwatch replay`` (or an operator) left in ``P:control:checkpoint``."""
        try:
            request: bytes | str | None = await self.r.get(f"{self.prefix}:control:checkpoint")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis checkpoint request failed: {exc}") from exc
        return request

    async def checkpoint_done(self, request: bytes | str) -> None:
        """Acknowledge a checkpoint request: its id in ``...:done``, the request gone."""
        key = f"{self.prefix}:control:checkpoint"
        try:
            await self.r.set(f"{key}:done", request)
            await self.r.delete(key)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis checkpoint request failed: {exc}") from exc

    async def save_quality(self, worker: str, data: bytes) -> None:
        try:
            await self.r.set(f"{self.prefix}:model:{worker}:quality", data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None:
        """The worker's model checkpoint, or with ``part`` another part of its state."""
        try:
            data = await self.r.get(self._checkpoint_key(worker, part))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return data.encode() if isinstance(data, str) else data

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None:
        try:
            await self.r.set(self._checkpoint_key(worker, part), data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    def _checkpoint_key(self, worker: str, part: str) -> str:
        return f"{self.prefix}:model:{worker}" + (f":{part}" if part else "")


def _pack(items: Sequence[Any]) -> bytes:
    """One script argument for many values: ``APPLY``'s commands, ``LOAD``'s user ids."""
    packed: bytes = msgpack.packb(items, use_bin_type=False)  # Redis reads no bin
    return packed


def _keys_of(command: Command) -> tuple[Any, ...]:
    """The keys a command names (the user's own commands: all in the user's slot)."""
    return command[1:3] if command[0] in ("PUTUSER", "TRIMSNAP") else command[1:2]


def _stored(row: list[Any]) -> StoredUser:
    """A ``LOAD`` row: {string, wb}, or the old hash's {f, p, r, sd, wb}."""
    if len(row) == 2:
        if not row[0]:
            return StoredUser(None, None, None, None, row[1])
        user = split_user(row[0], snapshots=False)
        return StoredUser(
            user.features,
            user.policy or None,
            user.record or None,
            user.snapshot_day or None,
            row[1],
        )
    return StoredUser(row[0], row[1], row[2], int(row[3]) if row[3] else None, row[4])


@dataclass(slots=True)
class _Shared:
    """What a batch writes to the keys every user shares, gathered user by user."""

    lastseen: dict[str, float] = field(default_factory=dict)
    by_stage: dict[str, dict[str, float]] = field(default_factory=dict)
    left_stage: dict[str, list[str]] = field(default_factory=dict)
    cohorts: dict[str, list[str]] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)
    active: dict[str, list[str]] = field(default_factory=dict)
    outbox: dict[str, bytes] = field(default_factory=dict)
    won: list[str] = field(default_factory=list)

    def add(self, w: UserWrite) -> None:
        self.lastseen[w.user_id] = w.last_active
        if w.risk is not None:
            if w.stage:
                self.by_stage.setdefault(w.stage, {})[w.user_id] = w.risk
            if w.previous_stage == ANY_STAGE:
                for stage in STAGES:
                    if stage != w.stage:
                        self.left_stage.setdefault(stage, []).append(w.user_id)
            elif w.previous_stage and w.previous_stage != w.stage:
                self.left_stage.setdefault(w.previous_stage, []).append(w.user_id)
        if w.label_due is not None:
            self.due[w.user_id] = w.label_due
        for day in w.active_days:
            self.active.setdefault(day, []).append(w.user_id)
        for mark in w.cohort_marks:
            self.cohorts.setdefault(mark, []).append(w.user_id)
        if w.alert is not None:
            self.outbox[w.alert_id] = w.alert
        if w.winback == "won":
            self.won.append(w.winback_counter)

"""The scorer's Redis adapter: one pipelined read and one transactional write per batch.

Key layout (``P`` = ``CHURNWATCH_KEY_PREFIX``, default ``cw``). Per-user keys
carry the user id as a hash tag ``{uid}``, so Redis Cluster keeps all of one
user's keys in one slot:

    P:{uid}:u          hash  f = feature state (compact, see core.features.encode_state)
                              wb/wbid = the notifier's latest win-back decision (resolved here)
                              p = alert-policy state, r = latest score record (JSON),
                              sd = day of the last label snapshot
    P:{uid}:snap       list  pending label snapshots (JSON, deflated: see pack_snapshot),
                             expires with the horizon
    P:{uid}:alerts     list  newest-first alert history (capped)
    P:lastseen         zset  user -> last activity (the silent-user sweep's index)
    P:atrisk           zset  user -> current risk (the API's at-risk index)
    P:atrisk:<stage>   zset  the same within one lifecycle stage (per-stage percentiles)
    P:snapdue          zset  user -> earliest time one of its snapshots may get its label
    P:{hll}:d:YYYYMMDD HLL   users active that day (DAU/WAU/MAU by PFCOUNT over several
                             days: one hash tag for all of them, so that works on a cluster)
    P:cohort:YYYYMMDD:d<k>  HLL  users who signed up that day and were active k days
                              later, k in 0 (the cohort), 1, 7, 30: day-k retention
    P:outbox:<worker>  hash  alert_id -> alert, until Kafka acknowledged it
    P:model:<worker>   str   model checkpoint of one worker (+ ":quality", its metrics)

Every per-user key gets a TTL of ``user_ttl_days`` on each write, so a user
gone for good stops costing memory.

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

import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster

Command = tuple[Any, ...]

# Applies a list of commands atomically (scripts run alone, like MULTI/EXEC).
# ARGV: for each command, its number of words, then the words:
# 4, "HSET", "k", "f", "v", 3, "EXPIRE" ... On a cluster: one user's commands,
# every key declared and in one slot, sent with EVAL (~200 bytes a user; redis-py
# refuses EVALSHA in a cluster pipeline). On one Redis: the whole batch, users
# and shared indexes, in one EVALSHA. One command instead of one per write
# matters: redis-py spends ~13 µs of Python on each command of a pipeline,
# which was half of the scorer's batch time (BENCHMARKS.md).
_APPLY = """
local i = 1
while i <= #ARGV do
  local n = tonumber(ARGV[i])
  redis.call(unpack(ARGV, i + 1, i + n))
  i = i + n + 1
end
return 1
"""


# The batch's users' rows in one command (one Redis): HMGET of each key in KEYS.
_LOAD = """
local out = {}
for i, key in ipairs(KEYS) do
  out[i] = redis.call("HMGET", key, "f", "p", "r", "sd", "wb")
end
return out
"""

# Each user's feature state and pending snapshots (one Redis): KEYS alternate
# the user's hash and its snapshot list.
_LOAD_SNAPSHOTS = """
local out = {}
for i = 1, #KEYS, 2 do
  out[#out + 1] = redis.call("HGET", KEYS[i], "f")
  out[#out + 1] = redis.call("LRANGE", KEYS[i + 1], 0, -1)
end
return out
"""

# Members per ZADD/ZREM/PFADD/HSET in a script: Lua's unpack() is bounded by
# its C stack (~8,000 values), and a micro-batch may hold more users.
_CHUNK = 1000


def _chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def user_key(prefix: str, user_id: str, kind: str = "u") -> str:
    """The key of one of a user's records, hash-tagged by user id.

    >>> user_key("cw", "u42")
    'cw:{u42}:u'
    """
    return f"{prefix}:{{{user_id}}}:{kind}"


def day_key(prefix: str, day: str) -> str:
    """The HLL of the users active on ``day`` (YYYYMMDD); one hash tag for every day.

    >>> day_key("cw", "20261118")
    'cw:{hll}:d:20261118'
    """
    return f"{prefix}:{{hll}}:d:{day}"


# Snapshots are most of a user's bytes (one JSON vector per scored day, kept until
# its label resolves), and their keys repeat in every one of them. Deflate with
# this preset dictionary stores the keys almost for free (~700 -> ~80 bytes).
# Stored data depends on it: never edit it, add a new marker and dictionary.
_SNAPSHOT_MARK = b"\x00s1"  # JSON never starts with a NUL byte
_SNAPSHOT_ZDICT = (
    b'{"user_id":"u-000000","taken_at":1767830400.0,"day":20461,"features":{'
    b'"recency_days":0.0,"tenure_days":1.0,"events_1d":1.0,"events_7d":2.0,"events_30d":3.0,'
    b'"events_90d":4.0,"active_days_1d":1.0,"active_days_7d":2.0,"active_days_30d":3.0,'
    b'"active_days_90d":4.0,"sessions_30d":5.0,"mean_session_s":600.0,'
    b'"distinct_features_30d":2.0,"purchases_30d":0.0,"purchases_90d":1.0,"revenue_30d":0.0,'
    b'"revenue_90d":9.99,"is_paid":1.0,"payment_failures_30d":0.0,"trend_7d_vs_30d":1.0,'
    b'"sessions_change":0.0,"support_tickets_30d":0.0,"complaints_30d":0.0,'
    b'"downgrades_90d":0.0,"uninstalled":0.0,"winback_sent_90d":0.0,'
    b'"winback_responded_90d":0.0,"explicit_churn":0.0,"days_since_return":-1.0},'
    b'"raw":0.5,"risk":0.123456}'
)


def pack_snapshot(data: bytes) -> bytes:
    """The stored form of one snapshot's JSON: deflated against a preset dictionary.

    >>> raw = b'{"user_id":"u1","features":{"recency_days":2.5,"events_30d":3.0}}'
    >>> packed = pack_snapshot(raw)
    >>> len(packed) < len(raw), unpack_snapshot(packed) == raw, unpack_snapshot(raw) == raw
    (True, True, True)
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _SNAPSHOT_ZDICT)
    return _SNAPSHOT_MARK + deflate.compress(data) + deflate.flush()


def unpack_snapshot(data: bytes) -> bytes:
    """The snapshot's JSON again; plain JSON (written before packing existed) passes through."""
    if not data.startswith(_SNAPSHOT_MARK):
        return data
    inflate = zlib.decompressobj(-15, _SNAPSHOT_ZDICT)
    return inflate.decompress(data[len(_SNAPSHOT_MARK) :]) + inflate.flush()


@dataclass(frozen=True, slots=True)
class StoredUser:
    features: bytes | None
    policy: bytes | None
    record: bytes | None
    snapshot_day: int | None
    winback: bytes | None = None  # the latest win-back decision, written by the notifier


@dataclass(frozen=True, slots=True)
class UserWrite:
    user_id: str
    features: bytes
    policy: bytes | None  # None: unchanged (the user was not re-scored)
    record: bytes | None
    last_active: float
    risk: float | None
    snapshot: bytes | None = None
    snapshot_day: int | None = None
    alert: bytes | None = None
    active_days: tuple[str, ...] = ()
    label_due: float | None = None
    alert_id: str = ""
    stage: str = ""  # the stage's own risk index (per-stage percentiles)
    cohort_marks: tuple[str, ...] = ()  # "<signup YYYYMMDD>:d<k>": active k days after signup
    previous_stage: str | None = None
    winback: str | None = None  # "won" or "expired": resolve the pending win-back decision
    winback_counter: str = ""  # "<playbook>:<group>" of P:winback:<playbook>:<group>:won


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
    ) -> None:
        self.r = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.user_ttl_s = user_ttl_s
        self.snapshot_ttl_s = snapshot_ttl_s
        self.alert_history = alert_history
        self.lastseen_key = f"{prefix}:lastseen"
        self.atrisk_key = f"{prefix}:atrisk"
        self.snapdue_key = f"{prefix}:snapdue"
        self.outbox_key = f"{prefix}:outbox:{worker}"
        self._apply = None if self.cluster else client.register_script(_APPLY)
        self._load = None if self.cluster else client.register_script(_LOAD)
        self._load_snapshots = None if self.cluster else client.register_script(_LOAD_SNAPSHOTS)

    async def load(self, user_ids: Sequence[str]) -> dict[str, StoredUser]:
        keys = [user_key(self.prefix, uid) for uid in user_ids]
        try:
            if self._load is not None:
                rows = await self._load(keys=keys) if keys else []
            else:
                async with self.r.pipeline(transaction=False) as pipe:
                    for key in keys:
                        pipe.hmget(key, "f", "p", "r", "sd", "wb")
                    rows = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return {
            uid: StoredUser(row[0], row[1], row[2], int(row[3]) if row[3] else None, row[4])
            for uid, row in zip(user_ids, rows, strict=True)
        }

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
                    keys = list(dict.fromkeys(c[1] for c in commands))
                    argv = [word for c in commands for word in (len(c), *c)]
                    pipe.eval(_APPLY, len(keys), *keys, *argv)
                for command in self._shared_commands(shared, outbox=False):
                    pipe.execute_command(*command)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def _apply_all(self, commands: list[Command]) -> None:
        """Run ``commands`` in one script call (one Redis only)."""
        if commands and self._apply is not None:
            await self._apply(args=[word for c in commands for word in (len(c), *c)])

    def _user_commands(self, w: UserWrite) -> list[Command]:
        """The commands on the user's own keys (one slot); the rest is in ``_Shared``."""
        key = user_key(self.prefix, w.user_id)
        out: list[Command] = []
        fields: list[Any] = ["f", w.features]
        if w.policy is not None and w.record is not None:
            fields += ["p", w.policy, "r", w.record]
        if w.snapshot is not None and w.snapshot_day is not None:
            snap_key = user_key(self.prefix, w.user_id, "snap")
            out.append(("RPUSH", snap_key, pack_snapshot(w.snapshot)))
            out.append(("EXPIRE", snap_key, self.snapshot_ttl_s))
            fields += ["sd", w.snapshot_day]
        out.append(("HSET", key, *fields))
        out.append(("EXPIRE", key, self.user_ttl_s))
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
            for part in _chunks(users):
                out.append(("ZREM", f"{self.atrisk_key}:{stage}", *part))
        indexes: list[tuple[str, dict[str, float], tuple[str, ...]]] = [
            (self.lastseen_key, shared.lastseen, ()),
            (self.atrisk_key, shared.atrisk, ()),
            *((f"{self.atrisk_key}:{st}", risks, ()) for st, risks in shared.by_stage.items()),
            (self.snapdue_key, shared.due, ("LT",)),  # LT keeps the earliest due time
        ]
        for key, scores, flags in indexes:
            for part in _chunks(list(scores.items())):
                out.append(("ZADD", key, *flags, *(x for uid, sc in part for x in (sc, uid))))
        hlls = [(f"{self.prefix}:cohort:{mark}", users) for mark, users in shared.cohorts.items()]
        hlls += [(day_key(self.prefix, day), users) for day, users in shared.active.items()]
        for hll, users in hlls:
            for part in _chunks(users):
                out.append(("PFADD", hll, *part))
            out.append(("EXPIRE", hll, 120 * 86400))
        return out

    async def silent_since(self, low: float, high: float, *, limit: int) -> list[str]:
        """Users whose last activity lies in [low, high): one range query, no scan."""
        try:
            found = await self.r.zrangebyscore(
                self.lastseen_key, low, f"({high}", start=0, num=limit
            )
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [u.decode() if isinstance(u, bytes) else str(u) for u in found]

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]:
        """Users whose last activity lies in any [low, high) of ``ranges``: one round trip.

        Unbounded on purpose: the sweep moves its mark forward, so a user left
        out here would not be re-scored for that day at all.
        """
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                for low, high in ranges:
                    pipe.zrangebyscore(self.lastseen_key, low, f"({high}")
                found = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [u.decode() if isinstance(u, bytes) else str(u) for part in found for u in part]

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        """Users with a snapshot whose label may resolve by ``now`` (a range query)."""
        try:
            found = await self.r.zrangebyscore(self.snapdue_key, "-inf", now, start=0, num=limit)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [u.decode() if isinstance(u, bytes) else str(u) for u in found]

    async def load_snapshots(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]:
        """Each user's feature state and pending snapshots, in one round trip."""
        keys = [user_key(self.prefix, uid, kind) for uid in user_ids for kind in ("u", "snap")]
        try:
            if self._load_snapshots is not None:
                rows = await self._load_snapshots(keys=keys) if keys else []
            else:
                async with self.r.pipeline(transaction=False) as pipe:
                    for i in range(0, len(keys), 2):
                        pipe.hget(keys[i], "f")
                        pipe.lrange(keys[i + 1], 0, -1)
                    rows = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return {
            uid: (rows[2 * i], [unpack_snapshot(snap) for snap in rows[2 * i + 1]])
            for i, uid in enumerate(user_ids)
        }

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        """Drop each user's oldest ``n`` snapshots (now learned) and set its next due time."""
        try:
            if self._apply is not None:  # one script, atomic like a transaction
                commands: list[Command] = []
                due_now: dict[str, float] = {}
                gone: list[str] = []
                for uid, (dropped, due) in remaining.items():
                    if dropped:
                        commands.append(("LTRIM", user_key(self.prefix, uid, "snap"), dropped, -1))
                    if due is None:
                        gone.append(uid)
                    else:
                        due_now[uid] = due
                for part in _chunks(gone):
                    commands.append(("ZREM", self.snapdue_key, *part))
                for pairs in _chunks(list(due_now.items())):
                    flat = (x for uid, due in pairs for x in (due, uid))
                    commands.append(("ZADD", self.snapdue_key, *flat))
                await self._apply_all(commands)
                return
            # On a cluster the users' lists and the due index are in other slots
            # (see the module doc).
            async with self.r.pipeline(transaction=False) as pipe:
                for uid, (dropped, due) in remaining.items():
                    if dropped:
                        pipe.ltrim(user_key(self.prefix, uid, "snap"), dropped, -1)
                    if due is None:
                        pipe.zrem(self.snapdue_key, uid)
                    else:
                        pipe.zadd(self.snapdue_key, {uid: due})
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

    async def save_quality(self, worker: str, data: bytes) -> None:
        try:
            await self.r.set(f"{self.prefix}:model:{worker}:quality", data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def load_checkpoint(self, worker: str) -> bytes | None:
        try:
            data = await self.r.get(f"{self.prefix}:model:{worker}")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return data.encode() if isinstance(data, str) else data

    async def save_checkpoint(self, worker: str, data: bytes) -> None:
        try:
            await self.r.set(f"{self.prefix}:model:{worker}", data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc


@dataclass(slots=True)
class _Shared:
    """What a batch writes to the keys every user shares, gathered user by user."""

    lastseen: dict[str, float] = field(default_factory=dict)
    atrisk: dict[str, float] = field(default_factory=dict)
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
            self.atrisk[w.user_id] = w.risk
            if w.stage:
                self.by_stage.setdefault(w.stage, {})[w.user_id] = w.risk
            if w.previous_stage and w.previous_stage != w.stage:
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

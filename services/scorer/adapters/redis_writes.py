"""The scorer's write of one micro-batch to Redis (``RedisUserStore.save``).

Writes, on one Redis: a micro-batch is ONE MULTI/EXEC, users' keys, the outbox
and the shared indexes together; a crash leaves all of it or none.

On a Redis Cluster (``CHURNWATCH_REDIS_CLUSTER=true``) one transaction cannot
span slots, so :meth:`BatchWriter.save` writes in two steps:

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

A user erased between the batch's read and its write (the erase guard is up
and the user's string gone) is not written again: the script skips the user's
commands. On one Redis the batch's index entries leave the user out too; on a
cluster they are written apart, so the user's id can be left in the last-seen,
at-risk or label-due index (the sweeps pass over a user with no state, and the
erase, repeated, removes it).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_commands import Command, apply_all, chunks, keys_of, pack
from services.scorer.adapters.redis_indexes import ShardedIndexes
from services.scorer.adapters.redis_layout import StoreKeys, day_key, user_key
from services.scorer.adapters.redis_scripts import APPLY
from services.scorer.core.segments import STAGES
from services.scorer.rows import ANY_STAGE, UserWrite


class BatchWriter:
    """Writes the scorer's micro-batches: each user's keys, the outbox, the shared indexes."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        keys: StoreKeys,
        user_ttl_s: int,
        alert_history: int,
        indexes: ShardedIndexes,
        cluster: bool,
    ) -> None:
        self.r = client
        self.keys = keys
        self.user_ttl_s = user_ttl_s
        self.alert_history = alert_history
        self.indexes = indexes
        self._apply = None if cluster else client.register_script(APPLY)

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
                await apply_all(self._apply, commands)
                return
            users = []
            for w in writes:
                users.append(self._user_commands(w))
                shared.add(w)
            if shared.outbox:  # first: a stored "alerted" state always has its alert here
                await self.r.hset(self.keys.outbox, mapping=shared.outbox)  # type: ignore[arg-type]
            async with self.r.pipeline(transaction=False) as pipe:
                for commands in users:
                    keys = list(dict.fromkeys(k for c in commands for k in keys_of(c)))
                    pipe.eval(APPLY, len(keys), *keys, pack(commands))
                for command in self._shared_commands(shared, outbox=False):
                    pipe.execute_command(*command)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    def _user_commands(self, w: UserWrite) -> list[Command]:
        """The commands on the user's own keys (one slot); the rest is in ``_Shared``."""
        prefix = self.keys.prefix
        key = user_key(prefix, w.user_id)
        scored = w.policy is not None and w.record is not None
        snapshot = w.snapshot is not None and w.snapshot_day is not None
        rest: list[Command] = []
        if w.winback is not None:
            rest.append(("HDEL", key, "wb"))  # "wbid" stays: that alert never counts again
        if w.alert is not None:
            alerts_key = user_key(prefix, w.user_id, "alerts")
            rest.append(("LPUSH", alerts_key, w.alert))
            rest.append(("LTRIM", alerts_key, 0, self.alert_history - 1))
            rest.append(("EXPIRE", alerts_key, self.user_ttl_s))
        put = (
            "PUTUSER",
            user_key(prefix, w.user_id, "s"),
            key,
            self.user_ttl_s,
            w.features,
            w.record if scored else b"",
            w.policy if scored else b"",
            w.snapshot if snapshot else b"",
            w.snapshot_day if snapshot else 0,
            len(rest),  # an erased user's: skipped with it
            w.user_id,
        )
        return [put, *rest]

    def _shared_commands(self, shared: _Shared, *, outbox: bool) -> list[Command]:
        """The batch's commands on keys shared by all users (other slots than theirs)."""
        keys = self.keys
        out: list[Command] = []
        if outbox and shared.outbox:
            # The outbox: written with the state that says "alerted", emptied once
            # Kafka acknowledged the alert, republished at start if a crash came between.
            for part in chunks(list(shared.outbox.items())):
                out.append(("HSET", keys.outbox, *(x for pair in part for x in pair)))
        for counter in shared.won:
            out.append(("INCR", f"{keys.prefix}:winback:{counter}:won"))
        for stage, users in shared.left_stage.items():
            out += self.indexes.removes(f"{keys.atrisk}:{stage}", users)
        sharded = [
            *((f"{keys.atrisk}:{st}", risks, "") for st, risks in shared.by_stage.items()),
            (keys.lastseen, shared.lastseen, ""),
            (keys.snapdue, shared.due, "LT"),  # LT keeps the earliest due time
        ]
        for key, scores, flag in sharded:
            out += self.indexes.adds(key, scores, flag)
        hlls = [(f"{keys.prefix}:cohort:{mark}", users) for mark, users in shared.cohorts.items()]
        hlls += [(day_key(keys.prefix, day), users) for day, users in shared.active.items()]
        for hll, users in hlls:
            for part in chunks(users):
                out.append(("PFADD", hll, *part))
            out.append(("EXPIRE", hll, 120 * 86400))
        return out


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

"""The risk API's writes: consent, contact details, and erasing a user.

Contact and consent are the notifier's records (``notifier/adapters/redis_layout.py``);
a PUT replaces the whole record in one transaction. Nothing here logs a value.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster
from services.notifier.adapters.redis_directory import ERASED_KEEP_S, erased_key
from services.notifier.adapters.redis_queues import deferred_key, failed_key, failed_lease_key
from services.scorer.adapters.redis_store import INDEX_SHARDS, shard_of, user_key
from services.scorer.core.segments import STAGES

# Every per-user key kind the scorer and the notifier write (all hash-tagged {uid}).
# "wbc" (pending win-back counts) exists only on a Redis Cluster, and only briefly.
USER_KINDS = (
    "s",
    "u",
    "snap",
    "alerts",
    "contact",
    "consent",
    "sends",
    "done",
    "pub",
    "actions",
    "wbc",
)
# "atrisk" (one index of every user) is no longer written; erase still clears it.
USER_INDEXES = ("lastseen", "atrisk", "snapdue", *(f"atrisk:{stage}" for stage in STAGES))
SHARDED_INDEXES = ("lastseen", "snapdue", *(f"atrisk:{stage}" for stage in STAGES))


class AdminCommands:
    def __init__(
        self, client: AsyncRedis, *, prefix: str, index_shards: int = INDEX_SHARDS
    ) -> None:
        self.r = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.shards = index_shards

    async def _replace_hash(
        self, key: str, mapping: dict[str, str], *, lift: str | None = None
    ) -> None:
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.delete(key)
                pipe.hset(key, mapping=mapping)  # type: ignore[arg-type]
                if lift is not None:
                    pipe.delete(lift)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def save_consent(
        self,
        user_id: str,
        channels: dict[str, bool],
        preferred: str | None,
        *,
        lift_erase: bool = False,
    ) -> list[str]:
        """Replace the user's consent: ``<channel> = 1|0`` and ``preferred``.

        ``lift_erase``: consent given through the API after an erase, for at least one
        channel, is the user's own new word: it lifts the erase's mark, and the
        notifier may contact the user again. A bulk import never lifts it.
        """
        mapping = {channel: "1" if granted else "0" for channel, granted in channels.items()}
        if preferred is not None:
            mapping["preferred"] = preferred
        lift = lift_erase and any(channels.values())
        await self._replace_hash(
            user_key(self.prefix, user_id, "consent"),
            mapping,
            lift=erased_key(self.prefix, user_id) if lift else None,
        )
        return sorted(mapping)

    async def save_contact(self, user_id: str, contact: dict[str, str | None]) -> list[str]:
        """Replace the user's contact details with the fields given."""
        mapping = {k: v for k, v in contact.items() if v is not None}
        await self._replace_hash(user_key(self.prefix, user_id, "contact"), mapping)
        return sorted(mapping)

    async def erase(self, user_id: str) -> dict[str, Any]:
        """Delete every key of the user, its index entries, its deferred win-back jobs
        and its failed deliveries (with any re-drive's claim on them).

        What stays: the daily active-user HyperLogLogs (a sketch from which no
        user can be read back or removed) and the aggregate win-back counters.
        What it adds: the mark ``P:{uid}:erased`` for ``ERASED_KEEP_S`` (14 days),
        under which the notifier contacts and records nothing of the user, so an
        alert still on its way (on the topic, deferred, claimed by a re-drive)
        neither reaches the user nor writes the user's keys back, and the scorer
        drops the user's events (a batch that read the user before the erase
        writes nothing of it). A message already handed to its provider when the
        erase came is gone. An event of the user that arrives after the 14 days
        creates a new scorer record.

        One transaction on one Redis. On a Redis Cluster the user's keys and the
        shared indexes are in different slots: one pipeline, which a failure can
        leave half done; the erase is idempotent, so repeat it.
        """
        kinds = [user_key(self.prefix, user_id, k) for k in USER_KINDS]
        # Each index's keys holding the user: the shard, and the old unsharded key.
        shard = shard_of(user_id, self.shards)
        indexes = [
            [
                f"{self.prefix}:{name}",
                *([f"{self.prefix}:{name}:{shard}"] * (name in SHARDED_INDEXES)),
            ]
            for name in USER_INDEXES
        ]
        try:
            jobs = await self._deferred_jobs_of(user_id)
            failed = await self._failed_deliveries_of(user_id)
            async with self.r.pipeline(transaction=not self.cluster) as pipe:
                # The guard first: on a cluster (no transaction) a scorer write that lands
                # between it and the deletes, or a pipeline cut short, cannot bring the
                # user back unguarded (the user's keys and the guard share a slot, whose
                # commands run in the order queued).
                pipe.set(erased_key(self.prefix, user_id), repr(time.time()), ex=ERASED_KEEP_S)
                for key in kinds:
                    pipe.delete(key)
                for keys in indexes:
                    for key in keys:
                        pipe.zrem(key, user_id)
                if jobs:
                    pipe.zrem(deferred_key(self.prefix), *jobs)
                if failed:
                    # Else `notifier redrive` sends them and records the user again.
                    pipe.hdel(failed_key(self.prefix), *failed)
                    for action_id in failed:  # one key each: a cluster spreads them over slots
                        pipe.delete(failed_lease_key(self.prefix, action_id))
                done = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc
        deleted = done[1 : 1 + len(USER_KINDS)]  # after the guard's SET, in the order queued
        removed, pos = [], 1 + len(USER_KINDS)
        for name, keys in zip(USER_INDEXES, indexes, strict=True):
            if any(done[pos : pos + len(keys)]):
                removed.append(name)
            pos += len(keys)
        queues = iter(done[pos:])
        return {
            "user_id": user_id,
            "removed_keys": [k for k, n in zip(USER_KINDS, deleted, strict=True) if n],
            "removed_from_indexes": removed,
            "removed_deferred_jobs": int(next(queues)) if jobs else 0,
            "removed_failed_deliveries": int(next(queues)) if failed else 0,
            "guard_until": round(time.time() + ERASED_KEEP_S, 3),
            "kept": "daily active-user and signup-cohort HyperLogLogs, win-back counters "
            "(aggregates from which no user can be read back)",
        }

    async def _deferred_jobs_of(self, user_id: str) -> list[bytes]:
        # The deferred queue is small (jobs waiting for quiet hours to end): read it whole.
        found = []
        async for member, _ in self.r.zscan_iter(deferred_key(self.prefix), count=500):
            raw = member if isinstance(member, bytes) else str(member).encode()
            try:
                job = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if isinstance(job, dict) and (job.get("alert") or {}).get("user_id") == user_id:
                found.append(raw)
        return found

    async def _failed_deliveries_of(self, user_id: str) -> list[str]:
        # Action ids (str: they also name the leases). The store holds only deliveries
        # still failing after their retries (a re-drive settles them): read it whole,
        # like the deferred queue.
        found = []
        async for field, raw in self.r.hscan_iter(failed_key(self.prefix), count=1000):
            try:
                job = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
            if not isinstance(job, dict):
                continue
            # The re-drive reads the job's user_id, the notifier the alert's: either one.
            if user_id in (job.get("user_id"), (job.get("alert") or {}).get("user_id")):
                found.append(field.decode() if isinstance(field, bytes) else str(field))
        return found

"""The notifier's shared job stores in Redis: the deferred queue and the failed deliveries.

P:deferred        zset  JSON job -> not_before (a claimed job: the end of its lease)
P:failed          hash  action_id -> JSON job of a delivery that failed after its retries
P:failed:lease:<action_id>   string, a re-drive's claim on one failed delivery (expires)

Both use one key per command or script: cluster-safe without a shared hash tag,
and their names are unchanged (queued jobs survive an upgrade). The lease and
the failed job are read in two steps on one Redis too.
"""

from __future__ import annotations

from typing import Any

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis

# Claim a due job: only if it is still due (another notifier did not claim it).
CLAIM_JOB = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""


# The erase (services/scorer/api/commands.py) finds a user's jobs by these names too.
def deferred_key(prefix: str) -> str:
    """The deferred queue.

    >>> deferred_key("cw")
    'cw:deferred'
    """
    return f"{prefix}:deferred"


def failed_key(prefix: str) -> str:
    """The failed-delivery store.

    >>> failed_key("cw")
    'cw:failed'
    """
    return f"{prefix}:failed"


def failed_lease_key(prefix: str, action_id: str) -> str:
    """A re-drive's claim on one failed delivery.

    >>> failed_lease_key("cw", "x1")
    'cw:failed:lease:x1'
    """
    return f"{failed_key(prefix)}:lease:{action_id}"


class RedisJobQueues:
    """The deferred queue and the failed-delivery store (a part of ``RedisDirectory``)."""

    r: AsyncRedis
    prefix: str
    lease_s: float

    async def defer(self, job: dict[str, Any], not_before: float) -> None:
        try:
            await self.r.zadd(deferred_key(self.prefix), {orjson.dumps(job): not_before})
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def due(self, now: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """Claim the deferred jobs that are due, each for one notifier only.

        A claim is a lease: the job stays queued with its time moved to
        ``now + lease_s`` and is removed by :meth:`finish` once its action is
        published. A notifier that dies in between loses nothing: the job comes
        due again when the lease ends, and the done mark keeps it from sending twice.
        """
        key = deferred_key(self.prefix)
        try:
            found = await self.r.zrangebyscore(key, "-inf", now, start=0, num=limit)
            jobs = []
            for member in found:
                raw = member if isinstance(member, bytes | str) else str(member)
                if await self.r.eval(CLAIM_JOB, 1, key, raw, now, now + self.lease_s):
                    job = orjson.loads(raw)
                    job["_claim"] = raw.decode() if isinstance(raw, bytes) else raw
                    jobs.append(job)
            return jobs
        except RedisError as exc:
            raise StoreUnavailable(f"Redis deferred queue failed: {exc}") from exc

    async def finish(self, job: dict[str, Any]) -> None:
        """The claimed job's action is published: take it off the queue."""
        try:
            await self.r.zrem(deferred_key(self.prefix), job["_claim"])
        except RedisError as exc:
            raise StoreUnavailable(f"Redis deferred queue failed: {exc}") from exc

    async def deferred_depth(self) -> int:
        try:
            return int(await self.r.zcard(deferred_key(self.prefix)))
        except RedisError:
            return -1

    # Failed deliveries, kept for ``churnwatch notifier redrive`` (services/notifier/redrive.py).

    async def remember_failed(self, job: dict[str, Any]) -> None:
        """Keep a delivery that failed after its retries, by action id (a later failure
        of the same action replaces it), until a re-drive settles it."""
        try:
            await self.r.hset(failed_key(self.prefix), job["action_id"], orjson.dumps(job))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def failed_jobs(self) -> list[dict[str, Any]]:
        """Every remembered failed delivery, oldest failure first."""
        try:
            found = [
                orjson.loads(raw)
                async for _, raw in self.r.hscan_iter(failed_key(self.prefix), count=1000)
            ]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return sorted(found, key=lambda job: job["failed_at"])

    async def claim_failed(self, action_id: str, *, lease_s: float) -> dict[str, Any] | None:
        """The failed job, claimed for one re-drive for ``lease_s``; None when another
        re-drive holds it or it is settled already. A claim that is never released
        (the re-drive died) ends with its lease."""
        lease = failed_lease_key(self.prefix, action_id)
        try:
            if not await self.r.set(lease, 1, nx=True, px=max(1, int(lease_s * 1000))):
                return None
            raw = await self.r.hget(failed_key(self.prefix), action_id)
            if raw is None:
                await self.r.delete(lease)
                return None
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return dict(orjson.loads(raw))

    async def release_failed(self, action_id: str, *, settled: bool) -> None:
        """End a claim; ``settled`` also forgets the failure (sent, skipped, suppressed ...)."""
        try:
            if settled:
                await self.r.hdel(failed_key(self.prefix), action_id)
            await self.r.delete(failed_lease_key(self.prefix, action_id))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def failed_depth(self) -> int:
        try:
            return int(await self.r.hlen(failed_key(self.prefix)))
        except RedisError:
            return -1

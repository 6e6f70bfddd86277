"""The notifier's Redis adapter: contacts, consent, sends, idempotency, deferred queue.

P:{uid}:contact   hash  email, phone, push_token, locale, timezone (never copied elsewhere)
P:{uid}:consent   hash  <channel> = 1 | 0, preferred = <channel>
P:{uid}:sends     zset  action_id -> time of each contact (frequency cap)
P:{uid}:done      hash  action_id -> status once delivered (idempotency)
P:{uid}:actions   list  newest-first action history (capped)
P:{uid}:u         hash  wb = the latest win-back decision (the scorer resolves outcomes)
P:deferred        zset  JSON job -> not_before
P:failed          hash  action_id -> JSON job of a delivery that failed after its retries
P:failed:lease:<action_id>   string, a re-drive's claim on one failed delivery (expires)
P:winback:<playbook>:<group>:{treated,won}   counters of the uplift report
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import redis.asyncio as aioredis
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.notifier.core.guardrails import ConsentRecord

# One alert counts once as treated (or control), however many of its actions
# were sent; the scorer later resolves "wb" into a win or lets it expire.
REMEMBER_WINBACK = """
if redis.call('HGET', KEYS[1], 'wbid') == ARGV[1] then return 0 end
redis.call('HSET', KEYS[1], 'wbid', ARGV[1], 'wb', ARGV[2])
redis.call('INCR', KEYS[2])
return 1
"""

# Claim a due job: only if it is still due (another notifier did not claim it).
CLAIM_JOB = """
local due = redis.call('ZSCORE', KEYS[1], ARGV[1])
if due and tonumber(due) <= tonumber(ARGV[2]) then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  return 1
end
return 0
"""

CONTACT_FIELDS = {"email": "email", "sms": "phone", "push": "push_token"}


def ukey(prefix: str, user_id: str, kind: str) -> str:
    return f"{prefix}:{{{user_id}}}:{kind}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDirectory:
    def __init__(
        self, client: aioredis.Redis, *, prefix: str, history: int = 50, lease_s: float = 300.0
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.history = history
        self.lease_s = lease_s

    async def profile(self, user_id: str) -> tuple[dict[str, str], ConsentRecord, list[float]]:
        """Contact, consent and recent send times, in one round trip."""
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                pipe.hgetall(ukey(self.prefix, user_id, "contact"))
                pipe.hgetall(ukey(self.prefix, user_id, "consent"))
                pipe.zrangebyscore(
                    ukey(self.prefix, user_id, "sends"),
                    time.time() - 90 * 86400,
                    "+inf",
                    withscores=True,
                )
                contact, consent, sends = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        contact = {_s(k): _s(v) for k, v in contact.items()}
        raw = {_s(k): _s(v) for k, v in consent.items()}
        record = ConsentRecord(
            channels={k: v == "1" for k, v in raw.items() if k != "preferred"},
            preferred=raw.get("preferred"),
        )
        return contact, record, [float(score) for _, score in sends]

    async def already_done(self, user_id: str, action_id: str) -> str | None:
        try:
            done = await self.r.hget(ukey(self.prefix, user_id, "done"), action_id)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return _s(done) if done is not None else None

    async def is_published(self, user_id: str, action_id: str) -> bool:
        try:
            return bool(await self.r.hexists(ukey(self.prefix, user_id, "pub"), action_id))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

    async def mark_published(self, user_id: str, action_ids: list[str]) -> None:
        """These actions are on winback-actions: a redelivered alert publishes nothing."""
        if not action_ids:
            return
        key = ukey(self.prefix, user_id, "pub")
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                pipe.hset(key, mapping=dict.fromkeys(action_ids, 1))
                pipe.expire(key, 90 * 86400)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def record(
        self,
        user_id: str,
        action: dict[str, Any],
        *,
        contacted: bool,
        winback: dict[str, Any] | None,
    ) -> None:
        """Remember one decision: idempotency mark, history, cap window, uplift counters."""
        action_id = action["action_id"]
        try:
            async with self.r.pipeline(transaction=True) as pipe:
                if action["status"] in ("sent", "control", "suppressed"):
                    pipe.hset(ukey(self.prefix, user_id, "done"), action_id, action["status"])
                    pipe.expire(ukey(self.prefix, user_id, "done"), 90 * 86400)
                if contacted:
                    pipe.zadd(ukey(self.prefix, user_id, "sends"), {action_id: time.time()})
                    pipe.expire(ukey(self.prefix, user_id, "sends"), 90 * 86400)
                history = ukey(self.prefix, user_id, "actions")
                pipe.lpush(history, orjson.dumps(action))
                pipe.ltrim(history, 0, self.history - 1)
                if winback is not None:
                    counter = f"{self.prefix}:winback:{winback['playbook']}:{winback['group']}"
                    pipe.eval(
                        REMEMBER_WINBACK,
                        2,
                        ukey(self.prefix, user_id, "u"),
                        f"{counter}:treated",
                        action["alert_id"],
                        orjson.dumps(winback),
                    )
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def defer(self, job: dict[str, Any], not_before: float) -> None:
        try:
            await self.r.zadd(f"{self.prefix}:deferred", {orjson.dumps(job): not_before})
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def due(self, now: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """Claim the deferred jobs that are due, each for one notifier only.

        A claim is a lease: the job stays queued with its time moved to
        ``now + lease_s`` and is removed by :meth:`finish` once its action is
        published. A notifier that dies in between loses nothing: the job comes
        due again when the lease ends, and the done mark keeps it from sending twice.
        """
        key = f"{self.prefix}:deferred"
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
            await self.r.zrem(f"{self.prefix}:deferred", job["_claim"])
        except RedisError as exc:
            raise StoreUnavailable(f"Redis deferred queue failed: {exc}") from exc

    async def deferred_depth(self) -> int:
        try:
            return int(await self.r.zcard(f"{self.prefix}:deferred"))
        except RedisError:
            return -1

    # Failed deliveries, kept for ``churnwatch notifier redrive`` (services/notifier/redrive.py).

    async def remember_failed(self, job: dict[str, Any]) -> None:
        """Keep a delivery that failed after its retries, by action id (a later failure
        of the same action replaces it), until a re-drive settles it."""
        try:
            await self.r.hset(f"{self.prefix}:failed", job["action_id"], orjson.dumps(job))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def failed_jobs(self) -> list[dict[str, Any]]:
        """Every remembered failed delivery, oldest failure first."""
        try:
            found = [
                orjson.loads(raw)
                async for _, raw in self.r.hscan_iter(f"{self.prefix}:failed", count=1000)
            ]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return sorted(found, key=lambda job: job["failed_at"])

    async def claim_failed(self, action_id: str, *, lease_s: float) -> dict[str, Any] | None:
        """The failed job, claimed for one re-drive for ``lease_s``; None when another
        re-drive holds it or it is settled already. A claim that is never released
        (the re-drive died) ends with its lease."""
        lease = f"{self.prefix}:failed:lease:{action_id}"
        try:
            if not await self.r.set(lease, 1, nx=True, px=max(1, int(lease_s * 1000))):
                return None
            raw = await self.r.hget(f"{self.prefix}:failed", action_id)
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
                await self.r.hdel(f"{self.prefix}:failed", action_id)
            await self.r.delete(f"{self.prefix}:failed:lease:{action_id}")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def failed_depth(self) -> int:
        try:
            return int(await self.r.hlen(f"{self.prefix}:failed"))
        except RedisError:
            return -1

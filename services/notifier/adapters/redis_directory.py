"""The notifier's Redis adapter: contacts, consent, sends, idempotency, deferred queue.

Key layout (``P`` = ``CHURNWATCH_KEY_PREFIX``). A user's keys carry the user id
as a hash tag, so a Redis Cluster keeps them in one slot with the scorer's
``P:{uid}:u``; the queues and counters shared by all users live elsewhere.

P:{uid}:contact   hash  email, phone, push_token, locale, timezone (never copied elsewhere)
P:{uid}:consent   hash  <channel> = 1 | 0, preferred = <channel>
P:{uid}:sends     zset  action_id -> time of each contact, sent or deferred (frequency cap)
P:{uid}:done      hash  action_id -> status once delivered (idempotency)
P:{uid}:pub       hash  action_id -> 1 once the action is on winback-actions
P:{uid}:actions   list  newest-first action history (capped)
P:{uid}:u         hash  wbid, wb = the latest win-back decision (the scorer resolves outcomes)
P:{uid}:wbc       hash  alert_id -> "<playbook>:<group>", decisions not counted yet (cluster)
P:{uid}:erased    string, the time of the user's erase, kept ERASED_KEEP_S (see below)
P:deferred        zset  JSON job -> not_before (a claimed job: the end of its lease)
P:failed          hash  action_id -> JSON job of a delivery that failed after its retries
P:failed:lease:<action_id>   string, a re-drive's claim on one failed delivery (expires)
P:winback:<playbook>:<group>:{treated,won}   counters of the uplift report
P:wbcounted:{P:winback:<playbook>:<group>:treated}:<alert_id>   string, "counted" for a
                  day (cluster); its hash tag is the counter's name: the counter's slot

What is written together. :meth:`RedisDirectory.record` writes everything of one
user (done mark, cap window, history, win-back decision) in one Lua script. On
one Redis that script also increments the decision's treated (or control)
counter: a decision counts once per alert, atomically with the decision.

On a Redis Cluster (``CHURNWATCH_REDIS_CLUSTER=true``) the counter is in another
slot, so the count is a step of its own. The user's script stores the decision
with a pending mark in ``P:{uid}:wbc``; then a script in the counter's slot
increments the counter unless the alert's ``P:wbcounted:...`` exists (SET NX,
so repeating this step never counts twice), and the mark is removed. Every
``record`` and ``mark_published`` of the user finishes the marks it finds.
After a crash or a failed write:

- between the decision and the count, the mark stays. The retry (the alert,
  not committed, is redelivered; a deferred job comes due when its lease ends;
  the failure stays for the next re-drive) finds the action done but not
  published and ends in ``mark_published``, which counts it. A count is lost
  only if the user is erased (or the mark expires) before that.
- between the count and removing the mark, the next ``record`` or
  ``mark_published`` finds the ``wbcounted`` key and only removes the mark. It
  counts a second time only if it comes more than a day later (the key expired).
- two notifiers (or the deferred timer and the agent) finishing one mark at
  once count it once.

An erased user is not contacted again, nor recorded again. The erase (the risk
API's DELETE) deletes the user's keys and sets ``P:{uid}:erased`` for
``ERASED_KEEP_S``: long enough to outlive any alert of the user still on its way
(on the topic, redelivered, deferred, or claimed by a re-drive). The notifier
drops such alerts and jobs unsent, and every script that writes a user's keys
writes nothing while the mark is there, so a delivery already under way when
the erase came cannot bring the user's keys back. Saving the user's consent
again through the API lifts the mark.

The deferred queue and the failed-delivery store live in
:mod:`services.notifier.adapters.redis_queues`; the directory has their methods.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster
from services.notifier.adapters.redis_queues import RedisJobQueues
from services.notifier.core.guardrails import UNSCHEDULED, ConsentRecord

KEEP_S = 90 * 86400  # done marks, cap window, published marks, pending counts
# An erase outlives the user's alerts in flight: the longest an alert can wait is the
# alert topic's retention (Kafka's default, 7 days, which the local stack keeps) plus
# the age of its segment (segment.ms, 7 days): Kafka deletes whole segments.
ERASED_KEEP_S = 14 * 86400
COUNTED_S = 86400  # how long a cluster remembers that an alert's decision was counted

# One user's record of an action, atomically: KEYS are the user's done, sends,
# actions, u, wbc and erased mark (one slot), then on one Redis the win-back
# counter. One alert counts once as treated (or control), however many of its
# actions were sent; the scorer later resolves "wb" into a win or lets it expire.
# Returns the user's pending counts (cluster: alert_id, counter, ...; one Redis:
# none). An erased user's keys are not written again.
RECORD_ACTION = """
if redis.call('EXISTS', KEYS[6]) == 1 then
  return {}
end
local ttl = tonumber(ARGV[6])
if ARGV[2] ~= '' then
  redis.call('HSET', KEYS[1], ARGV[1], ARGV[2])
  redis.call('EXPIRE', KEYS[1], ttl)
end
if ARGV[3] == '-' then
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif ARGV[3] ~= '' then
  redis.call('ZADD', KEYS[2], ARGV[3], ARGV[1])
  redis.call('EXPIRE', KEYS[2], ttl)
end
redis.call('LPUSH', KEYS[3], ARGV[4])
redis.call('LTRIM', KEYS[3], 0, tonumber(ARGV[5]) - 1)
if ARGV[7] ~= '' and redis.call('HGET', KEYS[4], 'wbid') ~= ARGV[7] then
  redis.call('HSET', KEYS[4], 'wbid', ARGV[7], 'wb', ARGV[8])
  if #KEYS == 7 then
    redis.call('INCR', KEYS[7])
  else
    redis.call('HSET', KEYS[5], ARGV[7], ARGV[9])
    redis.call('EXPIRE', KEYS[5], ttl)
  end
end
return redis.call('HGETALL', KEYS[5])
"""

# Published marks (KEYS[1]); returns the pending counts (KEYS[2]) to finish. Nothing
# for an erased user (KEYS[3]).
MARK_PUBLISHED = """
if redis.call('EXISTS', KEYS[3]) == 1 then
  return {}
end
for i = 2, #ARGV do
  redis.call('HSET', KEYS[1], ARGV[i], 1)
end
redis.call('EXPIRE', KEYS[1], ARGV[1])
return redis.call('HGETALL', KEYS[2])
"""

# A deferred contact's place in the cap window (KEYS[1]), unless the user is erased
# (KEYS[2]).
SCHEDULE_CONTACT = """
if redis.call('EXISTS', KEYS[2]) == 1 then
  return 0
end
redis.call('ZADD', KEYS[1], ARGV[2], ARGV[1])
redis.call('EXPIRE', KEYS[1], ARGV[3])
return 1
"""

# Count an alert's decision once (cluster): KEYS = the counter, its "counted" key
# (same slot). 1 if this call counted it.
COUNT_ONCE = """
if redis.call('SET', KEYS[2], 1, 'NX', 'EX', ARGV[1]) then
  redis.call('INCR', KEYS[1])
  return 1
end
return 0
"""

CONTACT_FIELDS = {"email": "email", "sms": "phone", "push": "push_token"}


def ukey(prefix: str, user_id: str, kind: str) -> str:
    return f"{prefix}:{{{user_id}}}:{kind}"


def erased_key(prefix: str, user_id: str) -> str:
    """The mark an erase leaves: while it is there, the user is not contacted or recorded.

    >>> erased_key("cw", "u1")
    'cw:{u1}:erased'
    """
    return ukey(prefix, user_id, "erased")


def treated_key(prefix: str, counter: str) -> str:
    """The uplift counter of ``<playbook>:<group>`` (read by the API's /v1/stats).

    >>> treated_key("cw", "vip:control")
    'cw:winback:vip:control:treated'
    """
    return f"{prefix}:winback:{counter}:treated"


def counted_key(prefix: str, counter_key: str, alert_id: str) -> str:
    """The mark "alert counted" in the counter's slot: its hash tag is the counter's name.

    Playbook names carry no braces (core/playbooks.py), so the counter's slot is
    the hash of its whole name.

    >>> from redis.crc import key_slot
    >>> key = counted_key("cw", "cw:winback:vip:treated:treated", "a1")
    >>> key, key_slot(key.encode()) == key_slot(b"cw:winback:vip:treated:treated")
    ('cw:wbcounted:{cw:winback:vip:treated:treated}:a1', True)
    """
    return f"{prefix}:wbcounted:{{{counter_key}}}:{alert_id}"


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDirectory(RedisJobQueues):
    """Everything the notifier keeps in Redis, per user and shared (see the module doc)."""

    def __init__(
        self, client: AsyncRedis, *, prefix: str, history: int = 50, lease_s: float = 300.0
    ) -> None:
        self.r = client
        self.cluster = is_cluster(client)
        self.prefix = prefix
        self.history = history
        self.lease_s = lease_s

    async def profile(self, user_id: str) -> tuple[dict[str, str], ConsentRecord, dict[str, float]]:
        """Contact, consent and recent contacts (action id -> time), in one round trip."""
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
        return contact, record, {_s(a): float(score) for a, score in sends}

    async def is_erased(self, user_id: str) -> bool:
        try:
            return bool(await self.r.exists(erased_key(self.prefix, user_id)))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

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
        """These actions are on winback-actions: a redelivered alert publishes nothing.

        On a cluster this also finishes the user's pending win-back counts (see
        the module doc): the redelivery of an alert whose count a crash
        interrupted ends here.
        """
        if not action_ids:
            return
        keys = (
            ukey(self.prefix, user_id, "pub"),
            ukey(self.prefix, user_id, "wbc"),
            erased_key(self.prefix, user_id),
        )
        try:
            pending = await self.r.eval(MARK_PUBLISHED, len(keys), *keys, KEEP_S, *action_ids)
            await self._count(user_id, pending)
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
        kinds = ("done", "sends", "actions", "u", "wbc", "erased")
        keys = [ukey(self.prefix, user_id, k) for k in kinds]
        counter = f"{winback['playbook']}:{winback['group']}" if winback is not None else ""
        if winback is not None and not self.cluster:
            keys.append(treated_key(self.prefix, counter))
        done = action["status"] if action["status"] in ("sent", "control", "suppressed") else ""
        try:
            pending = await self.r.eval(
                RECORD_ACTION,
                len(keys),
                *keys,
                action["action_id"],
                done,
                repr(time.time()) if contacted else _unscheduled(action),
                orjson.dumps(action),
                self.history,
                KEEP_S,
                action["alert_id"] if winback is not None else "",
                orjson.dumps(winback) if winback is not None else "",
                counter,
            )
            await self._count(user_id, pending)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def schedule_contact(self, user_id: str, action_id: str, at: float) -> None:
        """Count a deferred contact in the user's cap window from now, at its time."""
        keys = (ukey(self.prefix, user_id, "sends"), erased_key(self.prefix, user_id))
        try:
            await self.r.eval(SCHEDULE_CONTACT, len(keys), *keys, action_id, repr(at), KEEP_S)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def _count(self, user_id: str, pending: list[Any]) -> None:
        """Finish pending win-back counts (cluster): count each alert once, then forget it."""
        if not pending:
            return
        marks = {_s(a): _s(c) for a, c in zip(pending[::2], pending[1::2], strict=True)}
        for alert_id, counter in marks.items():
            key = treated_key(self.prefix, counter)
            await self.r.eval(
                COUNT_ONCE, 2, key, counted_key(self.prefix, key, alert_id), COUNTED_S
            )
        await self.r.hdel(ukey(self.prefix, user_id, "wbc"), *marks)


def _unscheduled(action: dict[str, Any]) -> str:
    """RECORD_ACTION's "-": an action that ends without contacting the user (suppressed
    when it came due, or failed) leaves the cap window it was scheduled into."""
    return "-" if action["status"] in UNSCHEDULED else ""

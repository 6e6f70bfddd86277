"""The notifier's Redis adapter: contacts, consent, sends, idempotency, deferred queue.

:class:`RedisDirectory` is what the notifier constructs and calls. What it keeps
is apart, each in a module of its own:

redis_layout.py    the key layout: key names, how long they live, the erase mark
redis_scripts.py   the Lua scripts, and what each writes at once (a decision and
                   its win-back count, on one Redis and on a Redis Cluster)
redis_queues.py    the deferred queue and the failed-delivery store; the directory
                   has their methods

The layout's names other code imports from here are re-exported.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, is_cluster
from services.notifier.adapters.redis_layout import (
    CONTACT_FIELDS,
    COUNTED_S,
    ERASED_KEEP_S,
    KEEP_S,
    counted_key,
    erased_key,
    treated_key,
    ukey,
)
from services.notifier.adapters.redis_queues import RedisJobQueues
from services.notifier.adapters.redis_scripts import (
    COUNT_ONCE,
    MARK_PUBLISHED,
    RECORD_ACTION,
    SCHEDULE_CONTACT,
)
from services.notifier.core.guardrails import UNSCHEDULED, ConsentRecord

__all__ = [
    "CONTACT_FIELDS",
    "COUNTED_S",
    "COUNT_ONCE",
    "ERASED_KEEP_S",
    "RedisDirectory",
    "counted_key",
    "erased_key",
    "treated_key",
    "ukey",
]


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class RedisDirectory(RedisJobQueues):
    """Everything the notifier keeps in Redis, per user and shared (layout: ``redis_layout``)."""

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
        ``redis_scripts``): the redelivery of an alert whose count a crash
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

"""An in-memory contact directory: the fake the fast tests use instead of Redis.

It keeps the same rules as :class:`~services.notifier.adapters.redis_directory.RedisDirectory`
(which statuses count as done, which count against the frequency cap, who owns a
due deferred job), so a service test that passes here means the same on Redis.

>>> import asyncio
>>> d = MemoryDirectory()
>>> d.set_contact("u1", email="u1@example.test")
>>> d.set_consent("u1", email=True)
>>> contact, consent, sends = asyncio.run(d.profile("u1"))
>>> contact["email"], consent.allows("email"), sends
('u1@example.test', True, {})
"""

from __future__ import annotations

import time
from collections import Counter
from copy import deepcopy
from typing import Any

from services.notifier.core.guardrails import UNSCHEDULED, ConsentRecord

DONE_STATUSES = ("sent", "control", "suppressed")


class MemoryDirectory:
    """Contacts, consent, sends, done marks, action history and the deferred queue in dicts."""

    def __init__(self, *, clock: Any = time.time, history: int = 50) -> None:
        self.clock = clock
        self.history = history
        self.contacts: dict[str, dict[str, str]] = {}
        self.consents: dict[str, dict[str, str]] = {}
        self.sends: dict[str, dict[str, float]] = {}
        self.done: dict[str, dict[str, str]] = {}
        self.actions: dict[str, list[dict[str, Any]]] = {}
        self.winback: dict[str, dict[str, Any]] = {}
        self.published: dict[str, set[str]] = {}
        self.counters: Counter[str] = Counter()
        self.deferred: list[tuple[float, dict[str, Any]]] = []
        self.failed: dict[str, dict[str, Any]] = {}
        self.leases: set[str] = set()
        self.erased: set[str] = set()

    # Set-up helpers: what the API or a bulk import writes in production.

    def set_contact(self, user_id: str, **fields: str) -> None:
        self.contacts.setdefault(user_id, {}).update(fields)

    def set_consent(self, user_id: str, *, preferred: str | None = None, **channels: bool) -> None:
        record = self.consents.setdefault(user_id, {})
        record.update({ch: "1" if ok else "0" for ch, ok in channels.items()})
        if preferred is not None:
            record["preferred"] = preferred

    def erase(self, user_id: str) -> None:
        """What the API's erase does to the user's keys: all gone, and the erased mark.
        The queues keep the user's jobs: what a deferred timer or a re-drive holds already."""
        for store in (self.contacts, self.consents, self.sends, self.done, self.actions):
            store.pop(user_id, None)
        self.winback.pop(user_id, None)
        self.published.pop(user_id, None)
        self.erased.add(user_id)

    # The Directory port used by the Notifier.

    async def is_erased(self, user_id: str) -> bool:
        return user_id in self.erased

    async def profile(self, user_id: str) -> tuple[dict[str, str], ConsentRecord, dict[str, float]]:
        raw = dict(self.consents.get(user_id, {}))
        record = ConsentRecord(
            channels={k: v == "1" for k, v in raw.items() if k != "preferred"},
            preferred=raw.get("preferred"),
        )
        since = self.clock() - 90 * 86400
        sends = {a: ts for a, ts in self.sends.get(user_id, {}).items() if ts >= since}
        return dict(self.contacts.get(user_id, {})), record, sends

    async def already_done(self, user_id: str, action_id: str) -> str | None:
        return self.done.get(user_id, {}).get(action_id)

    async def is_published(self, user_id: str, action_id: str) -> bool:
        return action_id in self.published.get(user_id, set())

    async def mark_published(self, user_id: str, action_ids: list[str]) -> None:
        if user_id in self.erased:
            return
        self.published.setdefault(user_id, set()).update(action_ids)

    async def record(
        self,
        user_id: str,
        action: dict[str, Any],
        *,
        contacted: bool,
        winback: dict[str, Any] | None,
    ) -> None:
        if user_id in self.erased:  # like the Redis script: an erased user is not recorded
            return
        if action["status"] in DONE_STATUSES:
            self.done.setdefault(user_id, {})[action["action_id"]] = action["status"]
        if contacted:
            self.sends.setdefault(user_id, {})[action["action_id"]] = self.clock()
        elif action["status"] in UNSCHEDULED:  # out of the window it was scheduled into
            self.sends.get(user_id, {}).pop(action["action_id"], None)
        history = self.actions.setdefault(user_id, [])
        history.insert(0, deepcopy(action))
        del history[self.history :]
        previous = self.winback.get(user_id, {}).get("alert_id")
        if winback is not None and previous != action["alert_id"]:  # once per alert
            self.winback[user_id] = {**winback, "alert_id": action["alert_id"]}
            self.counters[f"winback:{winback['playbook']}:{winback['group']}:treated"] += 1

    async def defer(self, job: dict[str, Any], not_before: float) -> None:
        job = deepcopy(job)
        # Like a sorted set: the same job again only moves its time.
        self.deferred = [(ts, j) for ts, j in self.deferred if j != job]
        self.deferred.append((not_before, job))

    async def schedule_contact(self, user_id: str, action_id: str, at: float) -> None:
        if user_id in self.erased:
            return
        self.sends.setdefault(user_id, {})[action_id] = at

    async def due(self, now: float, *, limit: int = 500) -> list[dict[str, Any]]:
        """Take the jobs due at ``now``, earliest first; each is handed out once."""
        ready = sorted((p for p in self.deferred if p[0] <= now), key=lambda p: p[0])[:limit]
        for pair in ready:
            self.deferred.remove(pair)
        return [job for _, job in ready]

    async def finish(self, job: dict[str, Any]) -> None:
        """Jobs leave the fake's queue when handed out (no lease to end)."""

    async def deferred_depth(self) -> int:
        return len(self.deferred)

    async def remember_failed(self, job: dict[str, Any]) -> None:
        self.failed[job["action_id"]] = deepcopy(job)

    async def failed_jobs(self) -> list[dict[str, Any]]:
        return sorted(deepcopy(list(self.failed.values())), key=lambda job: job["failed_at"])

    async def claim_failed(self, action_id: str, *, lease_s: float) -> dict[str, Any] | None:
        if action_id in self.leases or action_id not in self.failed:
            return None
        self.leases.add(action_id)
        return deepcopy(self.failed[action_id])

    async def release_failed(self, action_id: str, *, settled: bool) -> None:
        if settled:
            self.failed.pop(action_id, None)
        self.leases.discard(action_id)

    async def failed_depth(self) -> int:
        return len(self.failed)

"""What a micro-batch or a sweep gives back, and the store port the batch scorer uses.

:class:`Outcome` is what :class:`~services.scorer.pipeline.BatchScorer` (and
the runtime's sweeps) return for the worker's batch handler
(:mod:`services.scorer.app`) to publish and count. :class:`UserStore` is the
two methods of the store they need, so the fast tests run them on a fake.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Protocol

from services.common.messages import ChurnAlert, DeadLetter
from services.scorer.rows import StoredUser, UserWrite


class UserStore(Protocol):
    async def load(self, user_ids: list[str]) -> dict[str, StoredUser]: ...

    async def save(self, writes: list[UserWrite]) -> None: ...


@dataclass
class Outcome:
    alerts: list[ChurnAlert] = field(default_factory=list)
    dead: list[DeadLetter] = field(default_factory=list)
    events: int = 0
    users: int = 0
    duplicates: int = 0
    erased: int = 0  # events of users erased lately, dropped (the erase guard)
    newest_ts: float = 0.0  # newest event time in the batch (for the event-time lag)
    bands: Counter[str] = field(default_factory=Counter)
    redis_s: dict[str, float] = field(default_factory=dict)  # round-trip time by operation
    winbacks: Counter[str] = field(default_factory=Counter)  # "<playbook>:<group>" won back
    # Stored values that could not be read, by kind: "state" (that user's events were
    # dead-lettered), "policy" or "record" (dropped: see scoring.readable).
    unreadable: Counter[str] = field(default_factory=Counter)

    def add(self, part: Outcome) -> None:
        """Fold in what some of the batch's users gave (their events are counted already)."""
        self.alerts += part.alerts
        self.dead += part.dead
        self.duplicates += part.duplicates
        self.erased += part.erased
        self.unreadable.update(part.unreadable)
        self.newest_ts = max(self.newest_ts, part.newest_ts)
        self.bands.update(part.bands)
        self.winbacks.update(part.winbacks)

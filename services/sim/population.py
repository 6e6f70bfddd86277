"""A whole population's events in event-time order, and the churn labels they imply.

What counts as churn (the definition ``evaluate`` is scored against, and the
same as the scorer's, ``services/scorer/core/labels.py``):

- an explicit churn event (``subscription_cancelled``, ``account_deleted`` or
  ``uninstall``): ``churned=1``, ``churned_at`` = the first such event's time;
- otherwise, no event at all in the last ``inactivity_days`` (30) of the
  simulated period: ``churned=1``, ``churned_at`` = the *departure*, the time
  of the user's last event (as the scorer dates inactivity churn);
- otherwise ``churned=0`` and ``churned_at`` empty.

A user who signed up less than ``inactivity_days`` before the end cannot be
called churned by silence: there was not time to see it.

>>> from services.sim.lifecycle import make_personas
>>> ps = make_personas(5, days=40, seed=1)
>>> book = LabelBook()
>>> evs = [book.observe(e) for e in simulate_events(ps, start=0.0, days=40, seed=1)]
>>> sorted(book.labels(end=40 * 86400.0)) == sorted(p.user.user_id for p in ps)
True
"""

from __future__ import annotations

import csv
import heapq
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from services.common.events import parse_time
from services.sim.generator import DAY, rfc3339
from services.sim.lifecycle import Persona, live

CHURN_EVENTS = frozenset({"subscription_cancelled", "account_deleted", "uninstall"})
INACTIVITY_DAYS = 30.0


@dataclass(frozen=True, slots=True)
class Label:
    user_id: str
    churned: bool
    churned_at: float | None  # UNIX seconds
    how: str  # "cancel", "silence" or ""


def simulate_events(
    personas: Iterable[Persona], *, start: float, days: int, seed: int
) -> Iterator[dict[str, Any]]:
    """Every persona's events merged into one stream in event-time order.

    Ties are broken by event id, so the order is the same on every run.
    """
    streams = [live(p, start=start, days=days, seed=seed) for p in personas]
    for _, _, ev in heapq.merge(*streams):
        yield ev


class LabelBook:
    """Folds events into what is needed to label each user (last event, first churn)."""

    def __init__(self) -> None:
        self.last: dict[str, float] = {}
        self.churn: dict[str, float] = {}

    def observe(self, ev: dict[str, Any]) -> dict[str, Any]:
        """Note one event; returns it, so the book can sit in a pipeline."""
        uid = ev["user_id"]
        ts = parse_time(ev["occurred_at"], path="occurred_at").timestamp()
        self.last[uid] = max(ts, self.last.get(uid, ts))
        if ev["type"] in CHURN_EVENTS and uid not in self.churn:
            self.churn[uid] = ts
        return ev

    def labels(self, *, end: float, inactivity_days: float = INACTIVITY_DAYS) -> dict[str, Label]:
        """Each user's label at ``end`` (UNIX seconds), by the rules in this module's doc."""
        out = {}
        for uid, last in self.last.items():
            if uid in self.churn:
                out[uid] = Label(uid, True, self.churn[uid], "cancel")
            elif end - last >= inactivity_days * DAY:
                out[uid] = Label(uid, True, last, "silence")
            else:
                out[uid] = Label(uid, False, None, "")
        return out


def write_labels(path: Path, labels: dict[str, Label]) -> None:
    """``user_id,churned,churned_at`` sorted by user, ``churned_at`` RFC 3339 or empty."""
    with path.open("w", newline="", encoding="utf-8") as fh:
        out = csv.writer(fh, lineterminator="\n")
        out.writerow(["user_id", "churned", "churned_at"])
        for uid in sorted(labels):
            lab = labels[uid]
            at = rfc3339(lab.churned_at) if lab.churned_at is not None else ""
            out.writerow([uid, int(lab.churned), at])

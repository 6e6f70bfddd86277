"""Which alerts carry the run's precision: by trigger and lifecycle stage, and by day.

The headline precision says how many alerted users churned; tuning the policy
(per-stage thresholds, the sharp-rise trigger, ``CHURNWATCH_SCORER_*``) needs to
know which kind of alert is the noise, and when it came (a model that has learned
few labels yet alerts differently from one that has learned many). Pure functions
over the alerts as the replay published them.

>>> seen = [SeenAlert("a", 0.0, "band_up", "active"), SeenAlert("a", 9e5, "sharp_rise", "at-risk"),
...         SeenAlert("b", 86_400.0, "band_up", "active")]
>>> [(g.trigger, g.stage, g.alerts, g.users, g.churned_users, g.first_catches)
...  for g in alert_groups(seen, churned={"a"}, churned_at={"a": 86_400.0})]
[('band_up', 'active', 2, 2, 1, 1), ('sharp_rise', 'at-risk', 1, 1, 1, 0)]
>>> alerts_per_day(seen, churned={"a"})
[(0, 1, 0), (1, 0, 1), (10, 1, 0)]
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class SeenAlert:
    """One published alert, as much of it as the evaluation reads."""

    user_id: str
    ts: float  # occurred_at, UNIX seconds
    trigger: str  # band_up, sharp_rise ("-" if the alert did not say)
    stage: str  # the user's lifecycle stage when alerted ("-" if unknown)


@dataclass(frozen=True, slots=True)
class AlertGroup:
    """The alerts of one trigger and stage: how many, for how many users, how many of
    those churned, and how many churners this kind of alert warned first, before they
    churned."""

    trigger: str
    stage: str
    alerts: int
    users: int
    churned_users: int
    first_catches: int

    @property
    def precision(self) -> float | None:
        return self.churned_users / self.users if self.users else None


def alert_groups(
    alerts: Sequence[SeenAlert], *, churned: set[str], churned_at: Mapping[str, float]
) -> list[AlertGroup]:
    """One :class:`AlertGroup` per (trigger, stage), the most alerts first.

    A user alerted by two kinds of alert counts in both groups' ``users``; the
    first alert of each churner (by time) is the one ``first_catches`` credits, if
    it came before ``churned_at`` (when that is known): a warning, not a late notice.
    """
    users: dict[tuple[str, str], set[str]] = defaultdict(set)
    counts: dict[tuple[str, str], int] = defaultdict(int)
    first: dict[str, tuple[float, tuple[str, str]]] = {}
    for a in alerts:
        kind = (a.trigger, a.stage)
        counts[kind] += 1
        users[kind].add(a.user_id)
        if a.user_id not in first or a.ts < first[a.user_id][0]:
            first[a.user_id] = (a.ts, kind)
    caught: dict[tuple[str, str], int] = defaultdict(int)
    for uid, (ts, kind) in first.items():
        caught[kind] += uid in churned and ts <= churned_at.get(uid, ts)
    groups = [
        AlertGroup(t, s, counts[(t, s)], len(who), len(who & churned), caught[(t, s)])
        for (t, s), who in users.items()
    ]
    return sorted(groups, key=lambda g: (-g.alerts, g.trigger, g.stage))


def alerts_per_day(alerts: Sequence[SeenAlert], *, churned: set[str]) -> list[tuple[int, int, int]]:
    """``(day, alerts of users who churned, alerts of users who did not)`` for each day
    with an alert, days counted from the first alert's UTC day."""
    if not alerts:
        return []
    start = min(a.ts for a in alerts) // DAY
    days: dict[int, list[int]] = defaultdict(lambda: [0, 0])
    for a in alerts:
        days[int(a.ts // DAY - start)][a.user_id not in churned] += 1
    return [(d, hit, miss) for d, (hit, miss) in sorted(days.items())]

"""Delayed labels: feature snapshots that learn their outcome once it is known.

The question a snapshot taken at ``t`` answers: did the user churn within
``H = horizon_days`` after ``t``? The churn *moment* is

- the event time of an explicit churn event (``churn_events``), or
- for inactivity churn, the *departure*: the last activity before ``N =
  inactivity_days`` of silence. It is only confirmed at ``last_seen + N``
  (what ``inactivity_churn_ts`` returns), which with N=30 > H=14 is after
  the horizon of every snapshot it concerns.

Labels, given the moment ``m`` (``resolve_on_churn``):
- taken in ``[m - H, confirmation]`` -> y=1. This includes snapshots taken
  while the user was already silent: they had left, and never came back;
- taken before ``m - H`` -> y=0: the user was still there H days later;
- taken after an inactivity churn was confirmed, still in that silence (the
  timer keeps re-scoring users for H days past N): the question becomes
  whether they stay gone, so y=1 once ``t + H`` passes with no return
  (``services.scorer.labelling.label_user``). These teach the model about
  long-silent users, the ones a purchase-data question like "will they buy
  again?" is mostly about.

A snapshot learns y=0 by time (``resolve_by_time``) only once no churn can
fall in its horizon any more: H days have passed *and* the user has been
active after ``t + H`` (then any later silence starts after the horizon), or,
without that evidence, ``t + H + N`` has passed with no churn confirmed. So a
snapshot with no activity for its whole horizon waits for the verdict: a
return gives 0, a confirmed inactivity churn gives 1.

On a timer tick for a user, check inactivity churn first, then time. When an
event arrives after a gap of N days or more, confirm the inactivity churn
before the new event moves ``last_seen``. Nothing leaks from the future: a
snapshot carries a copy of the features as they were when it was taken.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from services.common.errors import ConfigError

DAY = 86_400.0
DEFAULT_CHURN_EVENTS = frozenset({"subscription_cancelled", "account_deleted", "uninstall"})


@dataclass(frozen=True, slots=True)
class LabelSettings:
    """What churn is, and how long snapshots wait for their label.

    ``snapshot_ttl_days`` must cover ``horizon_days + inactivity_days``, the
    longest a snapshot can wait; the store expires snapshots after it.

    ``equal_delay``: a survivor's y=0 waits ``horizon_days + inactivity_days``,
    as long as a churner's y=1 can, instead of resolving once the user is
    active after the horizon. Labels then reach the learner in the order their
    snapshots were taken whatever their class; otherwise the newest resolved
    labels are mostly survivors (churners are still being confirmed), which an
    online learner reads as "later = safer" when time-like features (tenure)
    grow with the calendar, as in a one-cohort replay. Slower to learn, so off
    by default.
    """

    horizon_days: float = 14.0
    churn_events: frozenset[str] = DEFAULT_CHURN_EVENTS
    inactivity_days: float | None = 30.0
    snapshot_ttl_days: float = 60.0
    equal_delay: bool = False

    def __post_init__(self) -> None:
        if self.horizon_days <= 0:
            raise ConfigError("label horizon_days must be > 0")
        if self.inactivity_days is not None and self.inactivity_days <= 0:
            raise ConfigError("label inactivity_days must be > 0, or None to disable it")
        if self.snapshot_ttl_days < self.longest_wait_days:
            raise ConfigError(
                f"snapshot_ttl_days ({self.snapshot_ttl_days:g}) must be at least horizon_days"
                f" + inactivity_days ({self.longest_wait_days:g}), or labels are lost"
            )

    @property
    def longest_wait_days(self) -> float:
        return self.horizon_days + (self.inactivity_days or 0.0)

    @property
    def snapshot_ttl_s(self) -> int:
        return int(self.snapshot_ttl_days * DAY)


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every snapshot taken or learned on the
# scorer's hot path. Treat it as immutable all the same.
@dataclass(slots=True)
class Snapshot:
    """A user's features as they were at ``taken_at``, with the score they got then."""

    user_id: str
    taken_at: float
    day: int
    features: dict[str, float] = field(hash=False)
    raw: float
    risk: float

    def to_dict(self) -> dict[str, Any]:
        return {
            "user_id": self.user_id,
            "taken_at": self.taken_at,
            "day": self.day,
            "features": self.features,
            "raw": self.raw,
            "risk": self.risk,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Snapshot:
        return cls(
            user_id=str(data["user_id"]),
            taken_at=float(data["taken_at"]),
            day=int(data["day"]),
            features={k: float(v) for k, v in data["features"].items()},
            raw=float(data["raw"]),
            risk=float(data["risk"]),
        )


Resolved = list[tuple[Snapshot, int]]


def day_of(ts: float) -> int:
    """The UTC day number of an epoch timestamp.

    >>> day_of(86_399.0), day_of(86_400.0)
    (0, 1)
    """
    return int(ts // DAY)


def take_snapshot(
    user_id: str, features: dict[str, float], *, taken_at: float, raw: float, risk: float
) -> Snapshot:
    """Snapshot a copy of ``features``, so later updates to the live vector cannot leak in.

    >>> live = {"recency_days": 1.0}
    >>> snap = take_snapshot("u1", live, taken_at=90_000.0, raw=0.2, risk=0.1)
    >>> live["recency_days"] = 9.0
    >>> snap.features, snap.day
    ({'recency_days': 1.0}, 1)
    """
    return Snapshot(user_id, taken_at, day_of(taken_at), dict(features), raw, risk)


def should_snapshot(last_snapshot_day: int | None, day: int, *, every_days: int = 1) -> bool:
    """At most one snapshot per user every ``every_days`` days (a late, older day never
    snapshots).

    >>> should_snapshot(None, 5), should_snapshot(5, 5), should_snapshot(5, 6)
    (True, False, True)
    >>> should_snapshot(5, 7, every_days=3), should_snapshot(5, 8, every_days=3)
    (False, True)
    """
    return last_snapshot_day is None or day >= last_snapshot_day + max(every_days, 1)


def inactivity_churn_ts(last_seen: float, now: float, *, settings: LabelSettings) -> float | None:
    """When inactivity churn was confirmed (``last_seen + N``), or ``None`` if not yet.

    >>> s = LabelSettings()
    >>> inactivity_churn_ts(0.0, 29 * DAY, settings=s) is None
    True
    >>> inactivity_churn_ts(0.0, 31 * DAY, settings=s) / DAY
    30.0
    """
    if settings.inactivity_days is None:
        return None
    confirmed = last_seen + settings.inactivity_days * DAY
    return confirmed if now >= confirmed else None


def resolve_on_churn(
    snapshots: list[Snapshot],
    churn_ts: float,
    *,
    settings: LabelSettings,
    departed_at: float | None = None,
) -> Resolved:
    """Label every pending snapshot of a user who churned.

    ``churn_ts`` is the explicit churn event's time, or for inactivity churn the
    confirmation time, with ``departed_at`` = the user's last activity. Snapshots
    taken after ``churn_ts`` are dropped: the user had churned already.

    >>> s = LabelSettings()
    >>> snaps = [take_snapshot("u", {}, taken_at=d * DAY, raw=0.5, risk=0.5) for d in (0, 20, 30)]
    >>> [(x.day, y) for x, y in resolve_on_churn(snaps, 40 * DAY, settings=s)]
    [(0, 0), (20, 0), (30, 1)]
    >>> [(x.day, y) for x, y in resolve_on_churn(snaps, 40 * DAY, settings=s, departed_at=20 * DAY)]
    [(0, 0), (20, 1), (30, 1)]
    """
    moment = churn_ts if departed_at is None else min(departed_at, churn_ts)
    start = moment - settings.horizon_days * DAY
    return [(s, int(s.taken_at >= start)) for s in snapshots if s.taken_at <= churn_ts]


def resolve_by_time(
    snapshots: list[Snapshot],
    now: float,
    *,
    settings: LabelSettings,
    last_seen: float | None = None,
) -> tuple[Resolved, list[Snapshot]]:
    """Split off snapshots that can no longer see a churn in their horizon: they learn 0.

    Call after ``resolve_on_churn`` had its chance. ``last_seen`` (the user's
    last activity) lets an active user's snapshots resolve at ``t + H``;
    without it they wait ``t + H + N``.

    >>> s = LabelSettings()
    >>> snap = take_snapshot("u", {}, taken_at=0.0, raw=0.5, risk=0.5)
    >>> resolve_by_time([snap], 15 * DAY, settings=s, last_seen=14.5 * DAY)[0] == [(snap, 0)]
    True
    >>> resolve_by_time([snap], 15 * DAY, settings=s, last_seen=3 * DAY) == ([], [snap])
    True
    """
    horizon = settings.horizon_days * DAY
    longest = settings.longest_wait_days * DAY
    resolved: Resolved = []
    remaining: list[Snapshot] = []
    for snap in snapshots:
        end = snap.taken_at + horizon
        active_after = last_seen is not None and last_seen > end and not settings.equal_delay
        if now >= end and (active_after or now >= snap.taken_at + longest):
            resolved.append((snap, 0))
        else:
            remaining.append(snap)
    return resolved, remaining

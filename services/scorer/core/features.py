"""Per-user behaviour features: a small state value and pure functions over it.

``update_features(state, event)`` folds one event into a new :class:`UserState`
(``fold_events`` a user's micro-batch); :mod:`~services.scorer.core.state_update`
holds what one event changes, :mod:`~services.scorer.core.event_counts` how it
counts in its day; :func:`services.scorer.core.vector.to_vector` reads the
model's feature vector off a state; :mod:`services.scorer.core.state_codec`
gives the compact bytes stored in Redis. Nothing here does I/O.

Rules, in plain words:

- Event time decides, not arrival order. Counters live in buckets per local
  calendar day of the user (``context.timezone``, remembered; UTC if unknown).
- An event older than the user's newest event minus ``lateness_s`` (48 h) is
  refused with :class:`LateEvent`; later-arriving events inside that tolerance
  land on their own day.
- Each ``event_id`` counts once: its 64-bit hash is remembered while the event
  is inside the lateness window (older ones would be refused as late anyway).
- A window of N days is the N local days ending with the day of ``now``, so an
  event exactly 7 days back is outside the 7-day window.
- Unknown event types count as generic activity; churnwatch's own win-back
  events are not user activity (see :mod:`~services.scorer.core.event_counts`).

>>> from datetime import datetime, UTC
>>> s = FeatureSettings()
>>> e = UserEvent("e1", "u1", "login", datetime(2026, 1, 1, 12, tzinfo=UTC))
>>> state = update_features(None, e, settings=s)
>>> update_features(state, e, settings=s) is state  # the same event again
True
>>> from services.scorer.core.vector import to_vector
>>> v = to_vector(state, e.ts + 86_400)
>>> v["recency_days"], v["events_1d"], v["events_7d"]
(1.0, 0.0, 1.0)
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from services.common.errors import LateEvent
from services.common.events import UserEvent
from services.scorer.core.event_counts import Day
from services.scorer.core.state_update import apply_event


@dataclass(frozen=True, slots=True)
class FeatureSettings:
    """How features are kept. Windows must include the contract's 1/7/30/90 days."""

    lateness_s: int = 48 * 3600
    windows: tuple[int, ...] = (1, 7, 30, 90)
    max_remembered_ids: int = 512

    def __post_init__(self) -> None:
        if self.lateness_s < 0 or self.max_remembered_ids < 1:
            raise ValueError("lateness_s must be >= 0 and max_remembered_ids >= 1")
        if not {1, 7, 30, 90} <= set(self.windows) or list(self.windows) != sorted(self.windows):
            raise ValueError("windows must be ascending and include 1, 7, 30 and 90 days")

    @property
    def history_days(self) -> int:
        return self.windows[-1]  # ascending (checked above): read once per event


@dataclass(slots=True)
class UserState:
    """One user's feature state. Treat as immutable: updates return a new one.

    Times are whole UNIX seconds; 0 means "never" for the optional ones.
    ``seen`` maps event-id hashes to the hour of their event time.
    """

    first_seen: int
    last_seen: int  # newest event time of any kind: the lateness reference
    last_active: int = 0  # newest user activity (recency)
    engaged_at: int = 0  # newest user activity that is not an explicit churn
    churn_at: int = 0  # newest subscription_cancelled / account_deleted / uninstall
    uninstall_at: int = 0
    signup_ts: int = 0
    plan_at: int = 0
    timezone: str | None = None
    plan: str | None = None
    last_type: str = ""
    days: dict[int, Day] = field(default_factory=dict)
    seen: dict[int, int] = field(default_factory=dict)
    # Whole-history counters (the windows forget after 90 days): local days with
    # user activity, purchases, and revenue in cents, since first seen.
    active_days_total: int = 0
    purchases_total: int = 0
    revenue_total_c: int = 0


def _hash64(text: str) -> int:
    # Stable across processes, unlike hash(), so a restarted worker recognises ids.
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "little")


def update_features(
    state: UserState | None, event: UserEvent, *, settings: FeatureSettings
) -> UserState:
    """Fold one event into a new state; the input state is never modified.

    >>> from datetime import datetime, UTC
    >>> s = FeatureSettings()
    >>> new = update_features(None, UserEvent("a", "u", "login",
    ...     datetime(2026, 1, 5, tzinfo=UTC)), settings=s)
    >>> update_features(new, UserEvent("b", "u", "login",
    ...     datetime(2026, 1, 1, tzinfo=UTC)), settings=s)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    services.common.errors.LateEvent: event 'b' is 96.0 h older than ... (tolerance 48 h)
    """
    folded = fold_events(state, (event,), settings=settings)
    if folded.late:
        raise folded.late[0][1]
    assert folded.state is not None  # one event, not late: applied, or a duplicate of state's
    return folded.state


@dataclass(slots=True)
class Folded:
    """What :func:`fold_events` made of a user's events: the new state (the input
    state itself when no event changed it), the late events with their errors, and
    how many were duplicates."""

    state: UserState | None
    late: list[tuple[UserEvent, LateEvent]]
    duplicates: int


def fold_events(
    state: UserState | None, events: Iterable[UserEvent], *, settings: FeatureSettings
) -> Folded:
    """Fold a user's events, in the order given, into a new state; ``state`` is never modified.

    The same as :func:`update_features` event by event (a late event is set
    aside, a duplicate skipped), but the state is copied once, at the first
    event that changes it, and the rest are applied to that copy: a busy user's
    remembered ids and days are not copied once per event. The scorer folds
    each user's micro-batch in event-time order.

    >>> from datetime import datetime, UTC
    >>> a = UserEvent("a", "u", "login", datetime(2026, 1, 5, tzinfo=UTC))
    >>> b = UserEvent("b", "u", "login", datetime(2026, 1, 1, tzinfo=UTC))
    >>> out = fold_events(None, [a, a, b], settings=FeatureSettings())
    >>> out.state.last_seen == int(a.ts), out.duplicates, [e.event_id for e, _ in out.late]
    (True, 1, ['b'])
    >>> fold_events(out.state, [a], settings=FeatureSettings()).state is out.state
    True
    """
    late: list[tuple[UserEvent, LateEvent]] = []
    duplicates = 0
    owned: UserState | None = None  # the copy this fold made, changed in place
    for event in events:
        h = _hash64(event.event_id)
        if state is not None and h in state.seen:
            duplicates += 1
            continue
        ts = math.floor(event.ts)
        if state is not None and ts < state.last_seen - settings.lateness_s:
            late.append((event, _late(event, ts, state.last_seen, settings)))
            continue
        if owned is None:
            state = owned = (
                UserState(first_seen=ts, last_seen=ts) if state is None else _own_copy(state)
            )
        apply_event(owned, event, h=h, ts=ts, settings=settings)
    return Folded(state, late, duplicates)


def _late(event: UserEvent, ts: int, last_seen: int, settings: FeatureSettings) -> LateEvent:
    return LateEvent(
        f"event {event.event_id!r} is {(last_seen - ts) / 3600:.1f} h older than the "
        f"user's newest event (tolerance {settings.lateness_s / 3600:g} h)",
        path="occurred_at",
    )


def _own_copy(state: UserState) -> UserState:
    """A copy whose days and remembered ids may be changed without touching ``state``'s."""
    return UserState(  # positional (the fields' order): once per user and batch
        state.first_seen,
        state.last_seen,
        state.last_active,
        state.engaged_at,
        state.churn_at,
        state.uninstall_at,
        state.signup_ts,
        state.plan_at,
        state.timezone,
        state.plan,
        state.last_type,
        dict(state.days),
        dict(state.seen),
        state.active_days_total,
        state.purchases_total,
        state.revenue_total_c,
    )


def apply_batch(
    state: UserState | None, events: Iterable[UserEvent], *, settings: FeatureSettings
) -> tuple[UserState | None, list[tuple[UserEvent, LateEvent]]]:
    """Fold one user's micro-batch in event-time order; late events are returned, not raised.

    >>> from datetime import datetime, UTC
    >>> e = UserEvent("a", "u", "login", datetime(2026, 1, 5, tzinfo=UTC))
    >>> state, late = apply_batch(None, [e, e], settings=FeatureSettings())
    >>> len(state.seen), late
    (1, [])
    """
    folded = fold_events(state, sorted(events, key=lambda e: e.occurred_at), settings=settings)
    return folded.state, folded.late

"""Per-user behaviour features: a small state value and pure functions over it.

``update_features(state, event)`` folds one event into a new :class:`UserState`;
:func:`services.scorer.core.vector.to_vector` reads the model's feature vector
off it; :mod:`services.scorer.core.state_codec` gives the compact bytes stored
in Redis. Nothing here does I/O.

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
- Unknown event types count as generic activity. ``winback_sent`` and
  ``winback_responded`` are churnwatch's own outcome events: they feed the
  win-back counters but are not user activity.

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
from functools import lru_cache

from services.common.clock import day_index
from services.common.errors import LateEvent
from services.common.events import UserEvent

DAY_S = 86_400
MAX_FEATURES_PER_DAY = 64

# Slots of the per-day counter tuple (all ints; revenue in cents so sums are exact).
(EVENTS, SESSIONS, SESSION_S, TIMED, PURCHASES, REVENUE_C, PAY_FAIL, TICKETS, COMPLAINTS) = range(9)
(DOWNGRADES, CHURNS, WB_SENT, WB_RESP) = range(9, 13)
N_COUNTERS = 13
_ZEROS = (0,) * N_COUNTERS
_COMMON = TIMED + 1  # events, sessions, session seconds, timed sessions

INTERNAL_TYPES = frozenset({"winback_sent", "winback_responded"})
CHURN_TYPES = frozenset({"subscription_cancelled", "account_deleted", "uninstall"})
PAYMENT_TYPES = frozenset({"purchase", "subscription_started", "subscription_renewed"})
FREE_PLANS = frozenset({"free", "trial", "freemium", "none"})
_SLOT = {
    "session_start": SESSIONS,
    "payment_failed": PAY_FAIL,
    "support_ticket": TICKETS,
    "complaint": COMPLAINTS,
    "plan_downgraded": DOWNGRADES,
    "subscription_cancelled": CHURNS,
    "account_deleted": CHURNS,
    "uninstall": CHURNS,
    "winback_sent": WB_SENT,
    "winback_responded": WB_RESP,
}

Day = tuple[tuple[int, ...], frozenset[int]]  # (counters, hashed features used)


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


@lru_cache(maxsize=4096)
def _feature_hash(name: str) -> int:
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=2).digest(), "little")


def _is_paid(plan: str | None) -> bool:
    return bool(plan) and str(plan).lower() not in FREE_PLANS


def _bump_day(day: Day | None, event: UserEvent, *, user: bool) -> Day:
    counts, feats = day or (_ZEROS, frozenset())
    c = list(counts)
    etype, props = event.type, event.properties
    if user:
        c[EVENTS] += 1
    slot = _SLOT.get(etype)
    if slot is not None:
        c[slot] += 1
    if etype in PAYMENT_TYPES:
        c[PURCHASES] += 1
        c[REVENUE_C] += _revenue_cents(event)
    elif etype == "session_end":
        duration = props.get("duration_s")
        if isinstance(duration, int | float) and 0 < duration < DAY_S:
            c[SESSION_S] += round(duration)
            c[TIMED] += 1
    elif etype == "notification_opened" and "action_id" in props:
        c[WB_RESP] += 1
    feature = props.get("feature")
    if isinstance(feature, str) and feature and len(feats) < MAX_FEATURES_PER_DAY:
        feats = feats | {_feature_hash(feature)}
    return tuple(c), feats


def _revenue_cents(event: UserEvent) -> int:
    """A payment's ``amount`` in whole cents; 0 for anything else or a nonsense amount."""
    if event.type not in PAYMENT_TYPES:
        return 0
    amount = event.amount
    return round(amount * 100) if math.isfinite(amount) and abs(amount) < 1e9 else 0


def _plan_candidate(event: UserEvent, current: str | None) -> tuple[bool, str | None]:
    plan = event.properties.get("plan")
    if event.type == "subscription_cancelled":
        return True, None
    if isinstance(plan, str) and plan:
        return True, plan[:32]
    if event.type in ("subscription_started", "subscription_renewed"):
        # Keep the plan's name when known; "paid" is all that can be said otherwise.
        return True, current if _is_paid(current) else "paid"
    return False, None


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
        _apply(owned, event, h, ts, settings)
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


def _apply(s: UserState, event: UserEvent, h: int, ts: int, settings: FeatureSettings) -> None:
    """Fold one event (not late, not seen before) into ``s``, a state the caller owns."""
    etype = event.type
    user = etype not in INTERNAL_TYPES
    churn = etype in CHURN_TYPES
    last_seen = s.last_seen
    newest = ts > last_seen or (ts == last_seen and etype >= s.last_type)

    ctx_tz = event.context.get("timezone")
    tz = ctx_tz[:64] if isinstance(ctx_tz, str) and ctx_tz else None
    state_tz = s.timezone
    if tz is not None and (state_tz is None or newest):
        state_tz = tz
    day = day_index(ts, tz or state_tz)

    days = s.days
    newest_day = day if ts >= last_seen and tz in (None, state_tz) else None
    if newest_day is None:
        newest_day = day_index(max(ts, last_seen), state_tz)
    cutoff = newest_day - settings.history_days
    new_day = False
    if day >= cutoff:
        bucket = days.get(day)
        # A day joins the lifetime count with its first user event, in whatever order
        # events come: a late one (< lateness_s << history) still finds its day's bucket.
        new_day = user and (bucket is None or not bucket[0][EVENTS])
        days[day] = _bump_day(bucket, event, user=user)
    if ts > last_seen and min(days, default=cutoff) < cutoff:
        s.days = {d: v for d, v in days.items() if d >= cutoff}

    has_plan, candidate = _plan_candidate(event, s.plan)
    if has_plan and (ts, candidate or "") >= (s.plan_at, s.plan or ""):
        s.plan, s.plan_at = candidate, ts

    s.seen = _remember(s.seen, h, ts, last_seen=max(last_seen, ts), settings=settings)
    s.first_seen = min(s.first_seen, ts)
    s.last_seen = max(last_seen, ts)
    if user:
        s.last_active = max(s.last_active, ts)
        if not churn:
            s.engaged_at = max(s.engaged_at, ts)
    if churn:
        s.churn_at = max(s.churn_at, ts)
    if etype == "uninstall":
        s.uninstall_at = max(s.uninstall_at, ts)
    if etype == "signup":
        s.signup_ts = min(s.signup_ts or ts, ts)
    s.timezone = state_tz
    if newest:
        s.last_type = etype[:32]
    s.active_days_total += new_day
    s.purchases_total += etype in PAYMENT_TYPES
    s.revenue_total_c += _revenue_cents(event)


def _remember(
    seen: dict[int, int], h: int, ts: int, *, last_seen: int, settings: FeatureSettings
) -> dict[int, int]:
    """Remember ``h`` in ``seen`` (the caller's own, changed in place); the dict to keep."""
    seen[h] = ts // 3600
    horizon = (last_seen - settings.lateness_s) // 3600
    # Ids mostly arrive in time order, so the first entry is (nearly) the oldest:
    # a cheap staleness test, and the cap drops from the front without sorting.
    if next(iter(seen.values())) < horizon:
        seen = {k: hour for k, hour in seen.items() if hour >= horizon}
    while len(seen) > settings.max_remembered_ids:
        del seen[next(iter(seen))]
    return seen


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

"""How one event changes a user's feature state (pure, no I/O).

:func:`apply_event` folds one event, already known to be neither late nor seen
before, into a :class:`~services.scorer.core.features.UserState` that the
caller owns and lets it change in place: the event's local day, the days kept,
the plan, the remembered event ids, the times, and the whole-history counters
(the windows forget after 90 days). :func:`~services.scorer.core.features.fold_events`
decides which events get here and copies the state once per batch.

Counters live in buckets per local calendar day of the user
(``context.timezone``, remembered; UTC if unknown). Each event id is
remembered while its event is inside the lateness window (older ones would be
refused as late anyway), at most ``max_remembered_ids`` of them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from services.common.clock import day_index
from services.common.events import UserEvent
from services.scorer.core.event_counts import (
    CHURN_TYPES,
    EVENTS,
    INTERNAL_TYPES,
    PAYMENT_TYPES,
    bump_day,
    plan_candidate,
    revenue_cents,
)

if TYPE_CHECKING:  # features imports this module; these are only annotations here
    from services.scorer.core.features import FeatureSettings, UserState


def apply_event(
    s: UserState, event: UserEvent, *, h: int, ts: int, settings: FeatureSettings
) -> None:
    """Fold ``event`` (id hash ``h``, whole-second time ``ts``) into ``s`` in place."""
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
        days[day] = bump_day(bucket, event, user=user)
    if ts > last_seen and min(days, default=cutoff) < cutoff:
        s.days = {d: v for d, v in days.items() if d >= cutoff}

    has_plan, candidate = plan_candidate(event, s.plan)
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
    s.revenue_total_c += revenue_cents(event)


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

"""The model's feature vector, read off a user's feature state as of a moment.

``to_vector(state, now)`` gives the ``dict[str, float]`` the model, the
segments and the label snapshots read (keys in docs/CONTRACTS.md); the state
and the functions that fold events into it are in
:mod:`services.scorer.core.features`, the day counters' slots in
:mod:`services.scorer.core.event_counts`. Nothing here does I/O.
"""

from __future__ import annotations

from functools import lru_cache

from services.common.clock import day_index
from services.scorer.core.event_counts import (
    CHURNS,
    COMPLAINTS,
    DAY_S,
    DOWNGRADES,
    EVENTS,
    PAY_FAIL,
    PURCHASES,
    REVENUE_C,
    SESSION_S,
    SESSIONS,
    TICKETS,
    TIMED,
    WB_RESP,
    WB_SENT,
    ZEROS,
    Day,
    is_paid,
)
from services.scorer.core.features import FeatureSettings, UserState

__all__ = ["RETURN_GAP_DAYS", "to_vector"]

# Days between two active days (or an explicit churn) that make the next one a "return".
RETURN_GAP_DAYS = 14


@lru_cache(maxsize=64)
def _window_key(name: str, days: int) -> str:
    return f"{name}_{days}d"


def _days_since_return(
    state: UserState, newest_first: list[tuple[int, Day]], today: int, *, explicit_churn: bool
) -> float:
    """Days since the user came back after a long gap or an explicit churn; -1 if never."""
    start: int | None = None
    for d, (c, _) in newest_first:
        if not c[EVENTS]:
            continue
        churned_that_day = c[CHURNS] > 0
        if start is None and churned_that_day and not explicit_churn:
            return float(today - d)  # churned and came back on the same day
        if start is not None and (start - d >= RETURN_GAP_DAYS or churned_that_day):
            return float(today - start)
        start = d
    if start is None:
        return -1.0
    # Pruned history: an empty stretch of RETURN_GAP_DAYS after the cut-off is still a gap.
    tz = state.timezone
    cutoff = day_index(state.last_seen, tz) - 90
    if start - cutoff >= RETURN_GAP_DAYS and day_index(state.first_seen, tz) < start:
        return float(today - start)
    return -1.0


def to_vector(
    state: UserState, now: float, *, settings: FeatureSettings | None = None
) -> dict[str, float]:
    """The model's feature vector as of ``now`` (windows end with the local day of ``now``).

    Days stamped after ``now`` (clock skew, replay watermarks) count as today.
    Besides the contract keys it has ``events_<N>d``/``active_days_<N>d`` for
    every configured window, ``explicit_churn`` (a cancel, delete or uninstall
    not followed by activity) and ``days_since_return`` (days since the user
    came back after >= 14 silent days or an explicit churn; -1 if not seen).

    Whole history, what the BG/NBD model reads off a purchase log (x, t_x, T):
    ``active_days_total``, ``purchases_total``, ``active_span_days`` (first
    seen to last activity), ``mean_gap_days`` (span / (active days - 1); 0
    before a second active day) and ``recency_vs_gap`` (recency / mean gap:
    away for longer than usual *for this user*; before a second active day the
    usual gap counts as one day, so it is the recency); and RFM's monetary
    part, ``revenue_total`` (payments since first seen).

    >>> from datetime import datetime, UTC
    >>> from services.common.events import UserEvent
    >>> from services.scorer.core.features import update_features
    >>> e = UserEvent("a", "u", "purchase", datetime(2026, 1, 5, tzinfo=UTC),
    ...               properties={"amount": 9.99})
    >>> v = to_vector(update_features(None, e, settings=FeatureSettings()), e.ts)
    >>> v["purchases_30d"], v["revenue_90d"], v["trend_7d_vs_30d"], v["tenure_days"]
    (1.0, 9.99, 4.285714285714286, 0.0)
    """
    windows = (settings or _DEFAULT_SETTINGS).windows
    today = day_index(now, state.timezone)
    # Newest day first: window counts become running totals, one pass in all.
    newest_first = sorted(state.days.items(), reverse=True)
    ev = dict.fromkeys(windows, 0)
    act = dict.fromkeys(windows, 0)
    wi, run_events, run_active = 0, 0, 0
    n_windows = len(windows)
    last_30: list[tuple[int, ...]] = []
    last_60: list[tuple[int, ...]] = []  # the 60 days before those 30
    sessions_7 = sessions_prev_7 = 0
    feats: set[int] = set()
    for d, (c, f) in newest_first:
        age = today - d if d < today else 0
        n = c[EVENTS]
        while wi < n_windows and age >= windows[wi]:
            ev[windows[wi]], act[windows[wi]] = run_events, run_active
            wi += 1
        if n:
            run_events += n
            run_active += 1
        if age < 30:
            last_30.append(c)
            if f:
                feats.update(f)
            if age < 7:
                sessions_7 += c[SESSIONS]
            elif age < 14:
                sessions_prev_7 += c[SESSIONS]
        elif age < 90:
            last_60.append(c)
    for w in windows[wi:]:
        ev[w], act[w] = run_events, run_active
    # Column sums in C (zip) rather than a Python loop per counter.
    s30 = [sum(col) for col in zip(*last_30, strict=True)] if last_30 else ZEROS
    s90 = [sum(col) for col in zip(s30, *last_60, strict=True)] if last_60 else s30
    e7, e30 = ev[7], ev[30]
    explicit_churn = state.churn_at > state.engaged_at
    vector = {
        "recency_days": max(now - (state.last_active or state.first_seen), 0.0) / DAY_S,
        "tenure_days": max(now - state.first_seen, 0.0) / DAY_S,
        **{_window_key("events", w): float(ev[w]) for w in windows},
        **{_window_key("active_days", w): float(act[w]) for w in windows},
        "sessions_30d": float(s30[SESSIONS]),
        "mean_session_s": s30[SESSION_S] / s30[TIMED] if s30[TIMED] else 0.0,
        "distinct_features_30d": float(len(feats)),
        "purchases_30d": float(s30[PURCHASES]),
        "purchases_90d": float(s90[PURCHASES]),
        "revenue_30d": s30[REVENUE_C] / 100,
        "revenue_90d": s90[REVENUE_C] / 100,
        "is_paid": float(is_paid(state.plan)),
        "payment_failures_30d": float(s30[PAY_FAIL]),
        # No history at all reads as "steady", not as a collapse or a surge.
        "trend_7d_vs_30d": e7 / (e30 * 7 / 30) if e30 else 1.0,
        "sessions_change": float(sessions_7 - sessions_prev_7),
        "support_tickets_30d": float(s30[TICKETS]),
        "complaints_30d": float(s30[COMPLAINTS]),
        "downgrades_90d": float(s90[DOWNGRADES]),
        "uninstalled": float(state.uninstall_at > state.engaged_at),
        "winback_sent_90d": float(s90[WB_SENT]),
        "winback_responded_90d": float(s90[WB_RESP]),
        "explicit_churn": float(explicit_churn),
    }
    vector["days_since_return"] = _days_since_return(
        state, newest_first, today, explicit_churn=explicit_churn
    )
    vector.update(_lifetime(state, vector["recency_days"]))
    return vector


def _lifetime(state: UserState, recency_days: float) -> dict[str, float]:
    """The whole-history features of ``to_vector``.

    >>> s = UserState(first_seen=0, last_seen=20 * DAY_S, last_active=20 * DAY_S,
    ...               active_days_total=3, purchases_total=2, revenue_total_c=2500)
    >>> _lifetime(s, 30.0)
    {'active_days_total': 3.0, 'purchases_total': 2.0, 'active_span_days': 20.0, \
'mean_gap_days': 10.0, 'recency_vs_gap': 3.0, 'revenue_total': 25.0}
    """
    n = state.active_days_total
    span = max((state.last_active or state.first_seen) - state.first_seen, 0) / DAY_S
    gap = span / (n - 1) if n > 1 else 0.0
    return {
        "active_days_total": float(n),
        "purchases_total": float(state.purchases_total),
        "active_span_days": span,
        "mean_gap_days": gap,
        # A gap under a day (several active days in a row) counts as one day, and so
        # does no gap yet (one active day): every day away counts. (It was 0 there,
        # "right on schedule", which ranked one-time buyers as the safest of the gone.)
        "recency_vs_gap": recency_days / max(gap, 1.0),
        "revenue_total": state.revenue_total_c / 100,
    }


_DEFAULT_SETTINGS = FeatureSettings()

"""What a scored (or only updated) user writes, and the marks and outcomes it carries.

Pure functions of a user's state and score: the micro-batch pipeline
(:mod:`services.scorer.batch_users`), the sweep and the replay scorer build their
:class:`~services.scorer.rows.UserWrite` here.
"""

from __future__ import annotations

from datetime import UTC, datetime
from functools import lru_cache

import orjson

from services.common.events import UserEvent
from services.notifier.core.guardrails import won_back
from services.scorer.core.event_counts import CHURN_TYPES
from services.scorer.core.features import UserState
from services.scorer.core.state_codec import encode_state
from services.scorer.rows import UserWrite
from services.scorer.scoring import UserScore


@lru_cache(maxsize=1024)
def utc_day(day: int) -> str:
    """``YYYYMMDD`` of a UTC day number (the daily HLL's name), cached: days repeat a lot.

    >>> utc_day(20_000)
    '20241004'
    """
    return datetime.fromtimestamp(day * 86_400, UTC).strftime("%Y%m%d")


def user_write(
    uid: str,
    state: UserState,
    result: UserScore,
    *,
    active_days: tuple[str, ...] = (),
    previous: str | None = None,
) -> UserWrite:
    """What to store for one scored user."""
    return UserWrite(
        user_id=uid,
        features=encode_state(state),
        policy=result.policy,
        record=result.record,
        last_active=float(state.last_active or state.last_seen),
        risk=result.risk,
        snapshot=result.snapshot,
        snapshot_day=result.snapshot_day,
        alert=orjson.dumps(result.alert.to_dict()) if result.alert else None,
        alert_id=result.alert.alert_id if result.alert else "",
        cohort_marks=cohort_marks(state, active_days),
        stage=result.stage,
        previous_stage=previous,
        active_days=active_days,
        label_due=result.label_due,
    )


def winback_outcome(
    decision: bytes | None, events: list[UserEvent], *, now: float, window_s: float
) -> tuple[str | None, str]:
    """Resolve the notifier's latest win-back decision for a user, if this batch settles it.

    "won": the user was active within the window after the decision (treated or
    control alike, so the uplift is known); "expired": the window passed first.
    Returns the outcome and the counter key prefix to add it to.

    >>> wb = orjson.dumps({"at": 100.0, "playbook": "p", "group": "treated"})
    >>> e = UserEvent("e", "u", "login", datetime.fromtimestamp(200.0, UTC))
    >>> winback_outcome(wb, [e], now=200.0, window_s=1000)
    ('won', 'p:treated')
    >>> winback_outcome(wb, [], now=2000.0, window_s=1000)
    ('expired', 'p:treated')
    >>> winback_outcome(None, [e], now=200.0, window_s=1000)
    (None, '')
    """
    if decision is None:
        return None, ""
    wb = orjson.loads(decision)
    at, key = float(wb["at"]), f"{wb['playbook']}:{wb['group']}"
    active = [e.ts for e in events if e.type not in CHURN_TYPES and e.ts > at]
    if active and won_back(at, min(active), window_days=window_s / 86_400):
        return "won", key
    if now > at + window_s:
        return "expired", key
    return None, key


RETENTION_DAYS = (0, 1, 7, 30)


def cohort_marks(state: UserState, active_days: tuple[str, ...]) -> tuple[str, ...]:
    """The signup-cohort retention marks that this batch's active days earn the user.

    >>> from services.common.events import UserEvent
    >>> from services.scorer.core.features import FeatureSettings, update_features
    >>> s = update_features(None, UserEvent("e", "u", "signup",
    ...     datetime(2026, 1, 1, 9, tzinfo=UTC)), settings=FeatureSettings())
    >>> cohort_marks(s, ("20260101", "20260102", "20260105", "20260108"))
    ('20260101:d0', '20260101:d1', '20260101:d7')
    """
    signup = int((state.signup_ts or state.first_seen) // 86_400)
    marks = []
    for day in active_days:
        k = _day_number(day) - signup
        if k in RETENTION_DAYS:
            marks.append(f"{utc_day(signup)}:d{k}")
    return tuple(marks)


@lru_cache(maxsize=1024)
def _day_number(day: str) -> int:
    """The UTC day number of ``YYYYMMDD`` (inverse of :func:`utc_day`), cached.

    >>> _day_number(utc_day(20_000))
    20000
    """
    return int(datetime.strptime(day, "%Y%m%d").replace(tzinfo=UTC).timestamp() // 86_400)

"""How one event counts in a user's features (pure, no I/O).

The event types (``CHURN_TYPES``, ``PAYMENT_TYPES``, ``INTERNAL_TYPES``), the
slots of a local day's counter tuple they fill (a :data:`Day` bucket), what one
event adds to its day (:func:`bump_day`), its revenue (:func:`revenue_cents`)
and the plan it names (:func:`plan_candidate`). The folding of events into a
state is :mod:`services.scorer.core.features`; the windows over days are read
by :mod:`services.scorer.core.vector`.

Unknown event types count as generic activity. ``winback_sent`` and
``winback_responded`` are churnwatch's own outcome events: they feed the
win-back counters but are not user activity.

>>> from datetime import datetime, UTC
>>> e = UserEvent("e1", "u1", "purchase", datetime(2026, 1, 1, tzinfo=UTC),
...               properties={"amount": 9.99, "feature": "cart"})
>>> counts, used = bump_day(None, e, user=True)
>>> counts[EVENTS], counts[PURCHASES], counts[REVENUE_C], len(used)
(1, 1, 999, 1)
"""

from __future__ import annotations

import hashlib
import math
from functools import lru_cache

from services.common.events import UserEvent

DAY_S = 86_400
MAX_FEATURES_PER_DAY = 64

# Slots of the per-day counter tuple (all ints; revenue in cents so sums are exact).
(EVENTS, SESSIONS, SESSION_S, TIMED, PURCHASES, REVENUE_C, PAY_FAIL, TICKETS, COMPLAINTS) = range(9)
(DOWNGRADES, CHURNS, WB_SENT, WB_RESP) = range(9, 13)
N_COUNTERS = 13
ZEROS = (0,) * N_COUNTERS
COMMON = TIMED + 1  # events, sessions, session seconds, timed sessions

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


@lru_cache(maxsize=4096)
def feature_hash(name: str) -> int:
    """A product feature's name as the 16-bit hash a day remembers it by."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=2).digest(), "little")


def is_paid(plan: str | None) -> bool:
    """Whether ``plan`` names a paid plan (any plan not in ``FREE_PLANS``)."""
    return bool(plan) and str(plan).lower() not in FREE_PLANS


def bump_day(day: Day | None, event: UserEvent, *, user: bool) -> Day:
    """``day``'s bucket with ``event`` counted in (``user``: it is user activity)."""
    counts, feats = day or (ZEROS, frozenset())
    c = list(counts)
    etype, props = event.type, event.properties
    if user:
        c[EVENTS] += 1
    slot = _SLOT.get(etype)
    if slot is not None:
        c[slot] += 1
    if etype in PAYMENT_TYPES:
        c[PURCHASES] += 1
        c[REVENUE_C] += revenue_cents(event)
    elif etype == "session_end":
        duration = props.get("duration_s")
        if isinstance(duration, int | float) and 0 < duration < DAY_S:
            c[SESSION_S] += round(duration)
            c[TIMED] += 1
    elif etype == "notification_opened" and "action_id" in props:
        c[WB_RESP] += 1
    feature = props.get("feature")
    if isinstance(feature, str) and feature and len(feats) < MAX_FEATURES_PER_DAY:
        feats = feats | {feature_hash(feature)}
    return tuple(c), feats


def revenue_cents(event: UserEvent) -> int:
    """A payment's ``amount`` in whole cents; 0 for anything else or a nonsense amount."""
    if event.type not in PAYMENT_TYPES:
        return 0
    amount = event.amount
    return round(amount * 100) if math.isfinite(amount) and abs(amount) < 1e9 else 0


def plan_candidate(event: UserEvent, current: str | None) -> tuple[bool, str | None]:
    """Whether ``event`` says which plan the user is on, and that plan (``None``: none)."""
    plan = event.properties.get("plan")
    if event.type == "subscription_cancelled":
        return True, None
    if isinstance(plan, str) and plan:
        return True, plan[:32]
    if event.type in ("subscription_started", "subscription_renewed"):
        # Keep the plan's name when known; "paid" is all that can be said otherwise.
        return True, current if is_paid(current) else "paid"
    return False, None

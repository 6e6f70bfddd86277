"""What the churn model answers, in plain words (pure, no I/O).

A :class:`Score` (the risk and the parts it was made of), the :class:`Reason`
objects behind it, and ``LABELS``: every feature the model reads, with the plain
words reasons (and the dashboard) show it in. The model itself is
:class:`~services.scorer.core.model.ChurnModel`.
"""

from __future__ import annotations

from typing import NamedTuple

LABELS: dict[str, str] = {
    "recency_days": "days since last activity",
    "tenure_days": "days since signup",
    "events_1d": "activity in the last day",
    "events_7d": "activity in the last 7 days",
    "events_30d": "activity in the last 30 days",
    "events_90d": "activity in the last 90 days",
    "active_days_7d": "active days in the last 7 days",
    "active_days_30d": "active days in the last 30 days",
    "active_days_90d": "active days in the last 90 days",
    "sessions_30d": "sessions in the last 30 days",
    "mean_session_s": "average session length (seconds)",
    "distinct_features_30d": "distinct features used in the last 30 days",
    "purchases_30d": "purchases in the last 30 days",
    "purchases_90d": "purchases in the last 90 days",
    "revenue_30d": "revenue in the last 30 days",
    "revenue_90d": "revenue in the last 90 days",
    "is_paid": "on a paid plan",
    "payment_failures_30d": "failed payments in the last 30 days",
    "trend_7d_vs_30d": "activity trend (last 7 days vs. usual)",
    "sessions_change": "change in sessions",
    "support_tickets_30d": "support tickets in the last 30 days",
    "complaints_30d": "complaints in the last 30 days",
    "downgrades_90d": "plan downgrades in the last 90 days",
    "uninstalled": "app uninstalled",
    "winback_sent_90d": "win-back messages received in the last 90 days",
    "winback_responded_90d": "win-back messages answered in the last 90 days",
    "active_days_total": "active days since first seen",
    "purchases_total": "purchases since first seen",
    "active_span_days": "days from first seen to last activity",
    "mean_gap_days": "usual days between active days",
    "recency_vs_gap": "time away against the user's usual gap",
    "revenue_total": "revenue since first seen",
}


class Score(NamedTuple):
    """``risk`` is what alerts use; the parts show how it was made."""

    risk: float
    raw: float
    prior: float
    weight_prior: float


class Reason(NamedTuple):
    """One feature pushing this user's risk up, in log-odds points."""

    feature: str
    label: str
    contribution: float
    value: float


def top_reasons(contributions: dict[str, float], x: dict[str, float], *, top: int) -> list[Reason]:
    """The ``top`` positive contributions, largest first, with plain labels.

    >>> [r.feature for r in top_reasons({"a": 0.2, "b": -1.0, "c": 0.5}, {}, top=3)]
    ['c', 'a']
    """
    best = sorted([kc for kc in contributions.items() if kc[1] > 0], key=_by_value, reverse=True)
    return [Reason(k, LABELS.get(k, k), c, float(x.get(k, 0.0))) for k, c in best[:top]]


def _by_value(item: tuple[str, float]) -> float:
    return item[1]

"""The rule-based prior: a transparent churn probability before any label exists.

Log-odds points per rule (``PRIOR_RULES``) summed on ``PRIOR_BASE``, with a tiny
tie-break (``prior_order``) so that users the rules score alike keep an order.
Pure: a feature vector in, a probability out. The model blends it out as its
learner proves better (:mod:`services.scorer.core.blend`).
"""

from __future__ import annotations

import math
import operator

# How far the tie-break may move a risk; the model breaks its calibrated risks' ties
# with the raw score by the same amount.
TIE_BREAK = 1e-4

# The prior: log-odds points per rule, summed on ``PRIOR_BASE``; rules on one
# feature add up. ``trend_7d_vs_30d`` is read as a ratio, 1.0 = the usual pace.
PRIOR_BASE = -2.5  # nothing wrong: about 8 %
PRIOR_RULES: tuple[tuple[str, str, float, float], ...] = (
    ("recency_days", ">", 7.0, 1.0),  # a week away: 18 %
    ("recency_days", ">", 14.0, 2.25),  # two weeks away: 68 %, high on its own
    ("recency_days", ">", 30.0, 1.0),  # a month away: 85 %, critical
    ("trend_7d_vs_30d", "<", 0.5, 1.0),  # this week under half the usual pace
    ("active_days_30d", "<", 3.0, 0.75),  # rarely here
    ("active_days_30d", ">=", 15.0, -1.0),  # a habit protects
    ("payment_failures_30d", ">", 0.0, 1.0),
    ("complaints_30d", ">", 0.0, 0.5),
    ("support_tickets_30d", ">=", 3.0, 0.5),
    ("downgrades_90d", ">", 0.0, 0.75),
    ("uninstalled", ">", 0.0, 2.5),
)
_OPS = {">": operator.gt, ">=": operator.ge, "<": operator.lt}
_RULES = tuple((f, _OPS[op], t, pts) for f, op, t, pts in PRIOR_RULES)


def prior_contributions(x: dict[str, float]) -> dict[str, float]:
    """Log-odds points of the rules that fire, summed per feature.

    >>> prior_contributions({"recency_days": 20.0, "active_days_30d": 1.0})
    {'recency_days': 3.25, 'trend_7d_vs_30d': 1.0, 'active_days_30d': 0.75}
    """
    points: dict[str, float] = {}
    for feature, op, threshold, pts in _RULES:
        if op(x.get(feature, 0.0), threshold):
            points[feature] = points.get(feature, 0.0) + pts
    return points


def prior_risk(x: dict[str, float]) -> float:
    """The transparent rule-based churn probability used before labels exist.

    >>> round(prior_risk({"trend_7d_vs_30d": 1.0, "active_days_30d": 20.0}), 3)
    0.029
    >>> round(prior_risk({"recency_days": 15.0, "trend_7d_vs_30d": 1.0, "active_days_30d": 5}), 3)
    0.679
    """
    return prior_from(prior_contributions(x), x)


def prior_from(points: dict[str, float], x: dict[str, float]) -> float:
    rules = 1.0 / (1.0 + math.exp(-(PRIOR_BASE + sum(points.values()))))
    return (1.0 - TIE_BREAK) * rules + TIE_BREAK * prior_order(x)


def prior_order(x: dict[str, float]) -> float:
    """Breaks the rules' ties (every user a month away scores the same), in (0, 1).

    Higher the longer the user is away, more so against its own usual gap
    between active days (``recency_vs_gap``), lower the more days it has been
    active: the order of a BG/NBD-like "still alive?" among equals. It moves
    the prior's risk by at most ``TIE_BREAK``.

    >>> away = {"recency_days": 60.0, "active_days_total": 1.0}
    >>> prior_order(away) < prior_order({**away, "recency_days": 90.0})
    True
    >>> prior_order({**away, "active_days_total": 4.0}) < prior_order(away)
    True
    >>> usual = {**away, "active_days_total": 4.0, "recency_vs_gap": 1.0}
    >>> prior_order(usual) < prior_order({**usual, "recency_vs_gap": 3.0})
    True
    """
    get = x.get
    z = (
        math.log1p(max(get("recency_days", 0.0), 0.0))
        + math.log1p(max(get("recency_vs_gap", 0.0), 0.0))
        - math.log1p(max(get("active_days_total", 0.0), 0.0))
    )
    return 1.0 / (1.0 + math.exp(-z))

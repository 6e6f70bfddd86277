"""Quality figures of churn scores and alerts: pure functions over plain lists.

``y`` are 0/1 outcomes (1 = churned), ``s`` the scores (higher = more at risk).
Functions that need both classes return ``None`` when one is missing.

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
>>> pr_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.8333333333333333
>>> alert_scores(alerted={"a", "b"}, churned={"b", "c"})
AlertScores(precision=0.5, recall=0.5, f1=0.5, true_positives=1)
"""

from __future__ import annotations

import statistics
from collections.abc import Sequence
from dataclasses import dataclass

from services.common.ranking import roc_auc

__all__ = [
    "AlertScores",
    "alert_scores",
    "brier",
    "calibration",
    "expected_calibration_error",
    "lead_times",
    "median",
    "per_thousand",
    "pr_auc",
    "pr_curve",
    "roc_auc",
    "roc_curve",
]


def _tied_ranks(
    s: Sequence[float], y: Sequence[int]
) -> list[tuple[float, tuple[float, list[int]]]]:
    """Groups of equal score in ascending order, each with its average 1-based rank."""
    order = sorted(range(len(s)), key=lambda i: s[i])
    out: list[tuple[float, tuple[float, list[int]]]] = []
    i = 0
    while i < len(order):
        j = i
        while j + 1 < len(order) and s[order[j + 1]] == s[order[i]]:
            j += 1
        out.append(((i + j) / 2 + 1, (s[order[i]], [y[order[k]] for k in range(i, j + 1)])))
        i = j + 1
    return out


def roc_curve(y: Sequence[int], s: Sequence[float]) -> list[tuple[float, float]]:
    """(false positive rate, true positive rate) at every distinct threshold, from (0, 0).

    >>> roc_curve([0, 1], [0.2, 0.9])
    [(0.0, 0.0), (0.0, 1.0), (1.0, 1.0)]
    """
    pos = sum(1 for v in y if v)
    neg = len(y) - pos
    points, tp, fp = [(0.0, 0.0)], 0, 0
    for _, (_, ys) in reversed(_tied_ranks(s, y)):
        tp += sum(ys)
        fp += len(ys) - sum(ys)
        points.append((fp / neg if neg else 0.0, tp / pos if pos else 0.0))
    return points


def pr_curve(y: Sequence[int], s: Sequence[float]) -> list[tuple[float, float]]:
    """(recall, precision) at every distinct threshold, highest threshold first.

    >>> pr_curve([0, 1], [0.2, 0.9])
    [(1.0, 1.0), (1.0, 0.5)]
    """
    pos = sum(1 for v in y if v)
    points, tp, n = [], 0, 0
    for _, (_, ys) in reversed(_tied_ranks(s, y)):
        tp += sum(ys)
        n += len(ys)
        points.append((tp / pos if pos else 0.0, tp / n))
    return points


def pr_auc(y: Sequence[int], s: Sequence[float]) -> float | None:
    """Area under the precision-recall curve as average precision (sum of P x delta R)."""
    if not any(y) or all(y):
        return None
    area, last_recall = 0.0, 0.0
    for recall, precision in pr_curve(y, s):
        area += precision * (recall - last_recall)
        last_recall = recall
    return area


@dataclass(frozen=True, slots=True)
class AlertScores:
    precision: float | None
    recall: float | None
    f1: float | None
    true_positives: int


def alert_scores(*, alerted: set[str], churned: set[str]) -> AlertScores:
    """Alerted users judged against churned users (each user counts once)."""
    tp = len(alerted & churned)
    precision = tp / len(alerted) if alerted else None
    recall = tp / len(churned) if churned else None
    f1 = None
    if precision is not None and recall is not None:
        f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return AlertScores(precision, recall, f1, tp)


def lead_times(
    first_alert: dict[str, float], churned_at: dict[str, float]
) -> tuple[list[float], int]:
    """Days from each churner's first alert to their churn, and how many were alerted late.

    A churner whose first alert came after ``churned_at`` counts as late (no lead time).

    >>> lead_times({"a": 0.0, "b": 5 * 86400.0}, {"a": 2 * 86400.0, "b": 86400.0, "c": 0.0})
    ([2.0], 1)
    """
    leads, late = [], 0
    for uid, at in churned_at.items():
        first = first_alert.get(uid)
        if first is None:
            continue
        if first <= at:
            leads.append((at - first) / 86_400.0)
        else:
            late += 1
    return sorted(leads), late


def median(values: Sequence[float]) -> float | None:
    return statistics.median(values) if values else None


def per_thousand(count: int, users: int) -> float | None:
    """``count`` per 1,000 users.

    >>> per_thousand(3, 200)
    15.0
    """
    return 1000.0 * count / users if users else None


@dataclass(frozen=True, slots=True)
class CalibrationBin:
    low: float
    high: float
    count: int
    mean_predicted: float | None
    observed: float | None


def calibration(y: Sequence[int], p: Sequence[float], *, bins: int = 10) -> list[CalibrationBin]:
    """Equal-width bins of predicted probability: mean prediction vs observed churn rate.

    >>> [(b.count, b.mean_predicted, b.observed) for b in calibration([0, 1, 1], [0.1, 0.7, 0.9],
    ...                                                                bins=2)]
    [(1, 0.1, 0.0), (2, 0.8, 1.0)]
    """
    groups: list[list[tuple[int, float]]] = [[] for _ in range(bins)]
    for yi, pi in zip(y, p, strict=True):
        groups[min(bins - 1, max(0, int(pi * bins)))].append((yi, pi))
    out = []
    for k, g in enumerate(groups):
        mean_p = sum(pi for _, pi in g) / len(g) if g else None
        obs = sum(yi for yi, _ in g) / len(g) if g else None
        out.append(CalibrationBin(k / bins, (k + 1) / bins, len(g), mean_p, obs))
    return out


def expected_calibration_error(table: Sequence[CalibrationBin]) -> float | None:
    """Count-weighted mean of |mean predicted - observed| over the bins.

    >>> expected_calibration_error(calibration([0, 1], [0.0, 1.0], bins=2))
    0.0
    """
    n = sum(b.count for b in table)
    if not n:
        return None
    return sum(b.count * abs((b.mean_predicted or 0.0) - (b.observed or 0.0)) for b in table) / n


def brier(y: Sequence[int], p: Sequence[float]) -> float | None:
    """Mean squared error of the predicted probabilities.

    >>> brier([0, 1], [0.0, 0.5])
    0.125
    """
    return sum((pi - yi) ** 2 for yi, pi in zip(y, p, strict=True)) / len(y) if y else None

"""Progressive validation of the model on resolved labels.

Each resolved label is judged by the risk the service gave at snapshot time,
before the model learned from it: the honest, out-of-sample view. Metrics cover
a bounded window of recent labels (they follow drift, and the AUC stays exact
and cheap); label counts by class are lifetime totals.
"""

from __future__ import annotations

import math
from collections import deque
from typing import Any

from services.common import ranking

_EPS = 1e-15
_FORMAT = 1


def roc_auc(pairs: list[tuple[float, bool]]) -> float | None:
    """Exact ROC AUC (ties count half) of (score, label) pairs; ``None`` until both
    classes are present.

    >>> roc_auc([(0.9, True), (0.4, False), (0.4, True), (0.1, False)])
    0.875
    >>> roc_auc([(0.3, False)]) is None
    True
    """
    return ranking.roc_auc([y for _, y in pairs], [p for p, _ in pairs])


class QualityTracker:
    """ROC AUC, log loss, precision and recall at the alert threshold, on recent labels.

    ``threshold`` is the risk (0..1) at which an alert fires, e.g. 0.65 for the
    default "high" band.

    >>> q = QualityTracker(threshold=0.5)
    >>> for risk, y in [(0.9, 1), (0.7, 0), (0.2, 0), (0.6, 1), (0.1, 0)]:
    ...     q.update(risk, y)
    >>> q.roc_auc, q.precision, q.recall, q.counts
    (0.8333333333333334, 0.6666666666666666, 1.0, {'positive': 2, 'negative': 3})
    >>> QualityTracker.from_dict(q.to_dict()).log_loss == q.log_loss
    True
    """

    def __init__(self, *, threshold: float = 0.65, window: int = 10_000) -> None:
        self.threshold = threshold
        self.window = window
        self.recent: deque[tuple[float, bool]] = deque(maxlen=window)
        self.positives = 0
        self.negatives = 0
        self._cache: dict[str, float | None] | None = None

    def reset(self) -> None:
        """Start over (a model loaded in place of the one these figures judged).

        >>> q = QualityTracker(threshold=0.5)
        >>> q.update(0.9, 1)
        >>> q.reset()
        >>> q.counts, q.roc_auc
        ({'positive': 0, 'negative': 0}, None)
        """
        self.recent.clear()
        self.positives = self.negatives = 0
        self._cache = None

    def update(self, risk_at_snapshot: float, y: bool | int) -> None:
        """Record one resolved label with the risk given when its snapshot was taken."""
        label = bool(y)
        self.recent.append((float(risk_at_snapshot), label))
        if label:
            self.positives += 1
        else:
            self.negatives += 1
        self._cache = None

    @property
    def counts(self) -> dict[str, int]:
        return {"positive": self.positives, "negative": self.negatives}

    @property
    def roc_auc(self) -> float | None:
        return self._metrics()["roc_auc"]

    @property
    def log_loss(self) -> float | None:
        return self._metrics()["log_loss"]

    @property
    def precision(self) -> float | None:
        """Share of alerts (risk >= threshold) that churned; ``None`` with no alert."""
        return self._metrics()["precision"]

    @property
    def recall(self) -> float | None:
        """Share of churners that were alerted; ``None`` with no churner."""
        return self._metrics()["recall"]

    def _metrics(self) -> dict[str, float | None]:
        # One pass over the window, cached until the next label: exporters poll often.
        if self._cache is not None:
            return self._cache
        pairs = list(self.recent)
        loss = tp = fp = fn = 0.0
        for risk, y in pairs:
            p = min(max(risk, _EPS), 1.0 - _EPS)
            loss -= math.log(p if y else 1.0 - p)
            alerted = risk >= self.threshold
            tp += alerted and y
            fp += alerted and not y
            fn += y and not alerted
        self._cache = {
            "roc_auc": roc_auc(pairs),
            "log_loss": loss / len(pairs) if pairs else None,
            "precision": tp / (tp + fp) if tp + fp else None,
            "recall": tp / (tp + fn) if tp + fn else None,
        }
        return self._cache

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready checkpoint of the tracker."""
        return {
            "format": _FORMAT,
            "threshold": self.threshold,
            "window": self.window,
            "positives": self.positives,
            "negatives": self.negatives,
            "recent": [[risk, int(y)] for risk, y in self.recent],
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> QualityTracker:
        if data.get("format") != _FORMAT:
            raise ValueError(f"quality checkpoint format {data.get('format')!r} is not supported")
        tracker = cls(threshold=float(data["threshold"]), window=int(data["window"]))
        tracker.recent.extend((float(risk), bool(y)) for risk, y in data["recent"])
        tracker.positives = int(data["positives"])
        tracker.negatives = int(data["negatives"])
        return tracker

"""Calibration of the learner's raw probabilities on resolved labels.

Pure: counts in, a monotone map out. Pickled inside model checkpoints (see
:meth:`services.scorer.core.model.ChurnModel.to_bytes`).
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any


class BinCalibrator:
    """Online histogram binning of raw probabilities, kept monotone by pool-adjacent-violators.

    Counts decay so that about ``window`` recent labels matter: the learner
    moves, and old (raw, y) pairs describe a model that is gone. The map is
    linear between the pooled blocks' centres and from the outer ones to
    (0, 0) and (1, 1), so it rises strictly: the learner's order survives
    everywhere, also past the top bin's centre, where most users of a
    high-churn population sit (a flat end there tied them, and rounding the
    risk to 6 decimals, as alerts and replay scores do, lost the tie-break:
    CDNOW calibration-only check 0.724 for the raw scores, 0.713 for the risks).

    >>> cal = BinCalibrator(bins=4, window=1000)
    >>> for raw, y in [(0.1, 0), (0.1, 0), (0.9, 1), (0.6, 1), (0.6, 0), (0.6, 0)] * 20:
    ...     cal.learn(raw, y)
    >>> cal.ready(100), [round(cal.predict(r), 2) for r in (0.1, 0.6, 0.9)]
    (True, [0.01, 0.32, 0.98])
    >>> cal.predict(0.95) < cal.predict(0.99) < 1.0
    True
    """

    def __init__(self, *, bins: int, window: int) -> None:
        self.bins = bins
        self.keep = 1.0 - 1.0 / window
        self.n = [0.0] * bins
        self.pos = [0.0] * bins
        self.labels = 0
        self.positives = 0
        self._knots: tuple[list[float], list[float]] | None = None

    def learn(self, raw: float, y: bool | int) -> None:
        keep = self.keep
        self.n = [v * keep for v in self.n]
        self.pos = [v * keep for v in self.pos]
        b = min(int(raw * self.bins), self.bins - 1)
        self.n[b] += 1.0
        self.pos[b] += float(y)
        self.labels += 1
        self.positives += bool(y)
        self._knots = None

    def ready(self, min_labels: int) -> bool:
        """Enough labels, and at least 10 of each class."""
        return self.labels >= min_labels and 10 <= self.positives <= self.labels - 10

    def predict(self, raw: float) -> float:
        xs, ys = self._knots or self._fit()
        if not xs:
            return raw
        i = bisect_right(xs, raw)
        if i == 0:
            return ys[0]
        if i == len(xs):
            return ys[-1]
        x0, x1, y0, y1 = xs[i - 1], xs[i], ys[i - 1], ys[i]
        return y0 + (y1 - y0) * (raw - x0) / (x1 - x0)

    def _fit(self) -> tuple[list[float], list[float]]:
        # Half a pseudo-label per class keeps sparse bins off exactly 0 and 1.
        blocks: list[list[Any]] = []
        for i, (n, pos) in enumerate(zip(self.n, self.pos, strict=True)):
            if n < 1e-6:
                continue
            blocks.append([pos + 0.5, n + 1.0, [i]])
            while len(blocks) > 1 and blocks[-2][0] * blocks[-1][1] > blocks[-1][0] * blocks[-2][1]:
                p, m, idx = blocks.pop()
                blocks[-1][0] += p
                blocks[-1][1] += m
                blocks[-1][2] += idx
        # One knot per pooled block, at its count-weighted centre, and the ends pinned
        # at (0, 0) and (1, 1): the map rises strictly everywhere, so no stretch of raw
        # scores (a pooled block, or the saturated top bin where most users of a
        # high-churn population sit) collapses to one risk that rounding then ties.
        xs, ys = [0.0], [0.0]
        for p, m, idx in blocks:
            weight = sum(self.n[i] for i in idx)
            xs.append(sum((i + 0.5) * self.n[i] for i in idx) / (weight * self.bins))
            ys.append(p / m)
        xs.append(1.0)
        ys.append(1.0)
        self._knots = (xs, ys) if len(xs) > 2 else ([], [])
        return self._knots

"""ROC AUC by ranks, with numpy: the scorer judges its model with it after every
few dozen labels, the evaluation on whole populations.

>>> roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8])
0.75
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray


def roc_auc(
    y: Sequence[int] | Sequence[bool] | NDArray[np.bool_],
    s: Sequence[float] | NDArray[np.float64],
) -> float | None:
    """P(score of a positive > score of a negative), ties counting half; ``None`` until
    both classes are present (the Mann-Whitney U over average ranks).

    >>> roc_auc([0, 1], [0.5, 0.5]), roc_auc([1, 1], [0.1, 0.2])
    (0.5, None)
    >>> roc_auc([True, False, True, False], [0.9, 0.4, 0.4, 0.1])
    0.875
    """
    labels = np.asarray(y, dtype=bool)
    pos = int(labels.sum())
    neg = labels.size - pos
    if pos == 0 or neg == 0:
        return None
    scores = np.asarray(s, dtype=float)
    order = np.argsort(scores, kind="stable")
    _, first, counts = np.unique(scores[order], return_index=True, return_counts=True)
    # the k-th group of equal scores holds the 1-based ranks first+1 .. first+count
    average = first + (counts + 1) / 2.0
    ranks = np.repeat(average, counts)
    rank_sum = float(ranks[labels[order]].sum())
    return (rank_sum - pos * (pos + 1) / 2.0) / (pos * neg)

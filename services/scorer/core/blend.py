"""The hand-over from the rule-based prior to the learner (pure, no I/O).

The prior's weight follows measured quality, not the label count alone: every
resolved label judges the prior and the learner on the same example, before the
learner learns it (progressive validation), and weight moves to the learner
only while its ROC AUC on the last ``blend_window`` labels beats the prior's
(all of it at a lead of ``blend_margin``): :func:`measured_prior_share`. The
weight also never falls faster than linearly over ``prior_weight_labels``
labels: :func:`prior_weight`. :func:`blend_risk` and :func:`blend_reasons` mix
the two parts' risks and reasons by that weight.
:class:`~services.scorer.core.model.ChurnModel` keeps the judged labels.

>>> s = ModelSettings(blend_min_class=5)
>>> measured_prior_share([(0.9, 0.2, True), (0.1, 0.8, False)] * 10, s)  # the prior ranks
1.0
>>> measured_prior_share([(0.1, 0.8, True), (0.9, 0.2, False)] * 10, s)  # the learner does
0.0
>>> prior_weight(learned=250, prior_share=0.0, settings=ModelSettings(prior_weight_labels=1000))
0.75
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Collection

import numpy as np
from numpy.typing import NDArray

from services.common import ranking
from services.scorer.core.prior import TIE_BREAK
from services.scorer.core.reasons import Reason, Score, top_reasons
from services.scorer.core.river_pipeline import ModelSettings

# (prior, learner's raw score, y) of a label, each scored before the label was learned.
Judged = tuple[float, float, bool]


def judged_table(judged: Collection[Judged]) -> NDArray[np.float64]:
    """The judged labels as (prior, raw, y) rows: the blend runs every ``blend_every``
    labels over ``blend_window`` of them, so building it is part of a label's cost."""
    flat = itertools.chain.from_iterable(judged)
    return np.fromiter(flat, dtype=float, count=3 * len(judged)).reshape(-1, 3)


def aucs(table: NDArray[np.float64]) -> tuple[float | None, float | None]:
    """ROC AUC of the prior and of the learner on (prior, raw, y) rows."""
    labels = table[:, 2] > 0.5
    return ranking.roc_auc(labels, table[:, 0]), ranking.roc_auc(labels, table[:, 1])


def blend_quality(judged: Collection[Judged], prior_share: float) -> dict[str, float | None]:
    """Progressive ROC AUC of the prior and the learner on the same recent labels.

    >>> blend_quality([], 1.0)
    {'prior_auc': None, 'model_auc': None, 'labels': 0.0, 'prior_share': 1.0}
    """
    prior_auc, model_auc = aucs(judged_table(judged))
    return {
        "prior_auc": prior_auc,
        "model_auc": model_auc,
        "labels": float(len(judged)),
        "prior_share": prior_share,
    }


def measured_prior_share(judged: Collection[Judged], settings: ModelSettings) -> float:
    """The prior's share that the AUCs allow: 1 while the learner does not beat the
    prior, falling linearly to 0 as its lead grows to ``blend_margin``.

    Both scores are judged on the same labels, each before the learner saw
    it, so the comparison is fair and out of sample. Too few labels of
    either class (``blend_min_class``) is no evidence: the prior keeps it all.
    """
    table = judged_table(judged)
    positives = int(table[:, 2].sum())
    if min(positives, len(table) - positives) < settings.blend_min_class:
        return 1.0
    prior_auc, model_auc = aucs(table)
    assert prior_auc is not None and model_auc is not None
    lead = model_auc - prior_auc
    return min(1.0, max(0.0, 1.0 - lead / settings.blend_margin))


def prior_weight(*, learned: int, prior_share: float, settings: ModelSettings) -> float:
    """Share of the prior in the risk: 1 until the learner is measured to rank better.

    The larger of the count floor (1 falling to 0 over ``prior_weight_labels``)
    and the quality share (``prior_share``); ``prior_weight_labels=0`` turns the
    prior off.
    """
    n = settings.prior_weight_labels
    if not n:
        return 0.0
    return max(1.0 - learned / n, prior_share, 0.0)


def blend_risk(
    prior: float, raw: float, *, w: float, calibrate: Callable[[float], float] | None
) -> Score:
    """Risk = w * prior + (1 - w) * the learner's risk: its raw score mapped by
    ``calibrate`` (the calibrator, once trusted), else the raw score itself.

    >>> blend_risk(0.8, 0.4, w=0.25, calibrate=None)
    Score(risk=0.5, raw=0.4, prior=0.8, weight_prior=0.25)
    """
    if w >= 1.0:
        return Score(prior, raw, prior, 1.0)
    learned = raw
    if calibrate is not None:
        # Calibration bins flatten the model's ranking (every raw score in a
        # saturated bin maps to one value); a tiny share of the raw score
        # breaks those ties in the model's order without moving the
        # probability by more than 1e-4.
        learned = (1.0 - TIE_BREAK) * calibrate(raw) + TIE_BREAK * raw
    return Score(w * prior + (1.0 - w) * learned, raw, prior, w)


def blend_reasons(
    prior_points: dict[str, float],
    x: dict[str, float],
    *,
    scaled: dict[str, float],
    coefficient: Callable[[str, float], float],
    w: float,
    top: int,
) -> list[Reason]:
    """The top reasons of a risk that is ``w`` prior, in log-odds: the logistic
    learner's ``coefficient(feature, 0.0) * scaled value`` (its weights' ``get``)
    weighted by ``1 - w``, the prior's points by ``w``.

    >>> weights = {"b": 1.5}
    >>> reasons = blend_reasons({"a": 1.0}, {}, scaled={"b": 2.0}, coefficient=weights.get,
    ...                         w=0.5, top=2)
    >>> [(r.feature, r.contribution) for r in reasons]
    [('b', 1.5), ('a', 0.5)]
    """
    share = 1.0 - w
    contributions = {k: share * coefficient(k, 0.0) * v for k, v in scaled.items()}
    for k, v in prior_points.items():
        contributions[k] = contributions.get(k, 0.0) + w * v
    return top_reasons(contributions, x, top=top)

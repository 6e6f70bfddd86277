"""The churn model: a rule-based prior blended into a calibrated online River model.

Pure logic, no I/O. A feature vector is the ``dict[str, float]`` of
``vector.to_vector`` (keys in docs/CONTRACTS.md); missing keys count as 0.

- ``prior_risk`` scores users before any label exists (``PRIOR_RULES`` in
  :mod:`~services.scorer.core.prior`).
  Its weight follows measured quality, not the label count alone: every
  resolved label judges the prior and the learner on the same example, before
  the learner learns it (progressive validation), and weight moves to the
  learner only while its ROC AUC on the last ``blend_window`` labels beats the
  prior's (all of it at a lead of ``blend_margin``). The weight also never
  falls faster than linearly over ``prior_weight_labels`` labels.
- The learner is ``FuncTransformer(log1p) | StandardScaler | LogisticRegression``
  on ``FEATURES`` (every labelled feature but ``NOT_LEARNED``: tenure),
  class-weighted by a sample weight on positives (or an ARF forest).
- Class weighting inflates probabilities, so ``BinCalibrator`` maps raw scores
  to risks once it has seen enough resolved labels of both classes.
- Scoring never updates the model (not even the scaler): only ``learn`` does,
  with a resolved label. ``score_and_explain`` is the cheap hot path.

The prior's rules are in :mod:`~services.scorer.core.prior`, the calibrator in
:mod:`~services.scorer.core.calibration`, the pipeline with its settings and
inputs in :mod:`~services.scorer.core.river_pipeline`, scores, reasons and
``LABELS`` in :mod:`~services.scorer.core.reasons`. ``BinCalibrator``,
``ModelSettings`` and ``prepare`` (the pipeline's first step) stay importable
from here: checkpoints name them under ``services.scorer.core.model``, their
first home, so that every build, before the splits and after, loads them
(``_named_by_first_home``).
"""

from __future__ import annotations

import itertools
import pickle
import threading
from collections import deque
from collections.abc import Iterator
from contextlib import contextmanager
from hashlib import blake2b
from typing import Any

import numpy as np
import orjson
import river
from numpy.typing import NDArray

from services.common import ranking
from services.common.errors import ChurnwatchError
from services.scorer.core.calibration import BinCalibrator
from services.scorer.core.prior import TIE_BREAK, prior_contributions, prior_from, prior_risk
from services.scorer.core.reasons import LABELS, Reason, Score, top_reasons
from services.scorer.core.river_pipeline import (
    ModelSettings,
    build_pipeline,
    prepare,
    scale_and_learn,
)

__all__ = [
    "LABELS",
    "BinCalibrator",
    "CheckpointError",
    "ChurnModel",
    "ModelSettings",
    "Reason",
    "Score",
    "prepare",
    "prior_risk",
]

_MAGIC = b"churnwatch-model\n"
_FORMAT = 1


# Moved out of this module, which re-exports them. A checkpoint names them here, their
# first home, so that the builds before each move load a checkpoint of this one (a
# worker rolled back keeps its model); only while pickling, so that everything else
# (type hints, doctests, inspect) sees where they are defined.
_FIRST_HOME: tuple[Any, ...] = (BinCalibrator, ModelSettings, prepare)
_pickling = threading.Lock()


@contextmanager
def _named_by_first_home() -> Iterator[None]:
    with _pickling:
        homes = [obj.__module__ for obj in _FIRST_HOME]
        for obj in _FIRST_HOME:
            obj.__module__ = __name__
        try:
            yield
        finally:
            for obj, home in zip(_FIRST_HOME, homes, strict=True):
                obj.__module__ = home


class CheckpointError(ChurnwatchError):
    """A model checkpoint cannot be read by this build."""


def _aucs(judged: NDArray[np.float64]) -> tuple[float | None, float | None]:
    """ROC AUC of the prior and of the learner on (prior, raw, y) rows."""
    labels = judged[:, 2] > 0.5
    return ranking.roc_auc(labels, judged[:, 0]), ranking.roc_auc(labels, judged[:, 1])


class ChurnModel:
    """Scores, learns from resolved labels, explains, checkpoints.

    >>> model = ChurnModel()
    >>> quiet = {"recency_days": 20.0, "trend_7d_vs_30d": 0.1, "active_days_30d": 1.0}
    >>> s = model.score(quiet)
    >>> s.weight_prior, s.risk == s.prior, s.risk > 0.5
    (1.0, True, True)
    >>> model.explain(quiet, top=1)[0].feature
    'recency_days'
    >>> model.version.startswith("logreg-0-")
    True
    """

    def __init__(self, settings: ModelSettings | None = None) -> None:
        self.settings = settings or ModelSettings()
        self.pipeline = build_pipeline(self.settings)
        self.calibrator = BinCalibrator(
            bins=self.settings.calibration_bins, window=self.settings.calibration_window
        )
        self.learned = 0
        self.positives = 0
        # (prior, learner's raw score, y) of recent labels, each scored before it was learned.
        self.judged: deque[tuple[float, float, bool]] = deque(maxlen=self.settings.blend_window)
        self.prior_share = 1.0  # the prior's weight that measured quality allows
        # A running hash of settings and every label learned: the same history gives
        # the same version, before and after a checkpoint round trip.
        self.lineage = blake2b(repr(self.settings).encode(), digest_size=16).digest()

    @property
    def weight_prior(self) -> float:
        """Share of the prior in the risk: 1 until the learner is measured to rank better.

        The larger of the count floor (1 falling to 0 over ``prior_weight_labels``)
        and the quality share (see :meth:`blend_quality`); ``prior_weight_labels=0``
        turns the prior off.
        """
        n = self.settings.prior_weight_labels
        if not n:
            return 0.0
        return max(1.0 - self.learned / n, self.prior_share, 0.0)

    def blend_quality(self) -> dict[str, float | None]:
        """Progressive ROC AUC of the prior and the learner on the same recent labels.

        >>> ChurnModel().blend_quality()
        {'prior_auc': None, 'model_auc': None, 'labels': 0.0, 'prior_share': 1.0}
        """
        prior_auc, model_auc = _aucs(self._judged_table())
        return {
            "prior_auc": prior_auc,
            "model_auc": model_auc,
            "labels": float(len(self.judged)),
            "prior_share": self.prior_share,
        }

    def _judged_table(self) -> NDArray[np.float64]:
        """The judged labels as (prior, raw, y) rows: the blend runs every ``blend_every``
        labels over ``blend_window`` of them, so building it is part of a label's cost."""
        flat = itertools.chain.from_iterable(self.judged)
        return np.fromiter(flat, dtype=float, count=3 * len(self.judged)).reshape(-1, 3)

    def _reblend(self) -> None:
        """Set ``prior_share`` from the AUCs: 1 while the learner does not beat the prior,
        falling linearly to 0 as its lead grows to ``blend_margin``.

        Both scores are judged on the same labels, each before the learner saw
        it, so the comparison is fair and out of sample. Too few labels of
        either class (``blend_min_class``) is no evidence: the prior keeps it all.
        """
        s = self.settings
        table = self._judged_table()
        positives = int(table[:, 2].sum())
        if min(positives, len(table) - positives) < s.blend_min_class:
            self.prior_share = 1.0
            return
        prior_auc, model_auc = _aucs(table)
        assert prior_auc is not None and model_auc is not None
        lead = model_auc - prior_auc
        self.prior_share = min(1.0, max(0.0, 1.0 - lead / s.blend_margin))

    @property
    def calibrated(self) -> bool:
        """Whether the calibrator has enough labels of both classes to be trusted."""
        return self.calibrator.ready(self.settings.calibration_min_labels)

    def raw(self, x: dict[str, float]) -> float:
        """The learner's uncalibrated probability of churn (0.5 before it has learned)."""
        return self._raw(x, self._scaled(x))

    def score(self, x: dict[str, float]) -> Score:
        """Risk = w * prior + (1 - w) * calibrated model, w = ``weight_prior``."""
        return self._score(x, self._scaled(x), prior_contributions(x))

    def explain(self, x: dict[str, float], top: int = 3) -> list[Reason]:
        """Features pushing risk up most, in log-odds, blended like the risk.

        The logistic part is ``weight * scaled value``; a forest has no cheap
        additive attribution, so it is explained by the prior's rules.
        """
        return self._explain(x, self._scaled(x), prior_contributions(x), top)

    def score_and_explain(self, x: dict[str, float], *, top: int = 3) -> tuple[Score, list[Reason]]:
        """``score`` and ``explain`` sharing their work: the scorer's hot path."""
        scaled, points = self._scaled(x), prior_contributions(x)
        return self._score(x, scaled, points), self._explain(x, scaled, points, top)

    def learn(self, x: dict[str, float], y: bool | int) -> None:
        """Learn one resolved label; ``x`` must be the features as they were at the snapshot."""
        label = bool(y)
        weight = self.settings.positive_weight if label else 1.0
        if self.settings.kind == "logreg":
            # The pipeline's learn_one, step by step, so that the prediction before
            # learning and the learning share one prepare(x) (~a third of a label's cost),
            # and the scaler's three passes (scale, learn, scale again) are one.
            scaler, logreg = self.pipeline["StandardScaler"], self.pipeline["LogisticRegression"]
            before, after = scale_and_learn(scaler, prepare(x))
            raw = logreg.predict_proba_one(before)[True]
        else:
            raw = self.raw(x)
        # Calibrate and judge on the prediction made before learning: honest, out of sample.
        self.calibrator.learn(raw, label)
        self.judged.append((prior_risk(x), raw, label))
        if self.settings.kind == "logreg":
            logreg.learn_one(after, label, w=weight)
        else:
            # ARF takes no sample weight; repeating a positive is the weighting it supports.
            for _ in range(max(1, round(weight))):
                self.pipeline.learn_one(x, label)
        self.learned += 1
        self.positives += label
        if self.learned % self.settings.blend_every == 0:
            self._reblend()
        step = orjson.dumps([x, label], option=orjson.OPT_SORT_KEYS)
        self.lineage = blake2b(self.lineage + step, digest_size=16).digest()

    def adopt(self, other: ChurnModel) -> None:
        """Become ``other`` in place (what a learning process learned): the scorers hold
        this object, so its state is replaced rather than the object.

        >>> a, b = ChurnModel(), ChurnModel()
        >>> b.learn({"recency_days": 3.0}, 1)
        >>> a.adopt(b)
        >>> a.version == b.version, a.learned
        (True, 1)
        """
        vars(self).update(vars(other))

    def _scaled(self, x: dict[str, float]) -> dict[str, float] | None:
        if self.settings.kind != "logreg":
            return None
        scaled: dict[str, float] = self.pipeline["StandardScaler"].transform_one(prepare(x))
        return scaled

    def _raw(self, x: dict[str, float], scaled: dict[str, float] | None) -> float:
        # The pipeline's own steps, split so that explain can reuse the scaled vector.
        if scaled is not None:
            p: float = self.pipeline["LogisticRegression"].predict_proba_one(scaled)[True]
            return p
        proba = self.pipeline.predict_proba_one(x)
        # A forest that has only seen survivors returns {False: 1.0}: that is P(churn) = 0.
        return proba.get(True, 0.0) if proba else 0.5

    def _score(
        self, x: dict[str, float], scaled: dict[str, float] | None, points: dict[str, float]
    ) -> Score:
        prior = prior_from(points, x)
        raw = self._raw(x, scaled)
        w = self.weight_prior
        if w >= 1.0:
            return Score(prior, raw, prior, 1.0)
        learned = raw
        if self.calibrated:
            # Calibration bins flatten the model's ranking (every raw score in a
            # saturated bin maps to one value); a tiny share of the raw score
            # breaks those ties in the model's order without moving the
            # probability by more than 1e-4.
            learned = (1.0 - TIE_BREAK) * self.calibrator.predict(raw) + TIE_BREAK * raw
        return Score(w * prior + (1.0 - w) * learned, raw, prior, w)

    def _explain(
        self,
        x: dict[str, float],
        scaled: dict[str, float] | None,
        points: dict[str, float],
        top: int,
    ) -> list[Reason]:
        w = self.weight_prior if scaled is not None else 1.0
        if scaled is None or w >= 1.0:
            return top_reasons(points, x, top=top)
        get, share = self.pipeline["LogisticRegression"]._weights.get, 1.0 - w
        contributions = {k: share * get(k, 0.0) * v for k, v in scaled.items()}
        for k, v in points.items():
            contributions[k] = contributions.get(k, 0.0) + w * v
        return top_reasons(contributions, x, top=top)

    @property
    def version(self) -> str:
        """``{kind}-{labels learned}-{hash of settings and labels learned}``."""
        return f"{self.settings.kind}-{self.learned}-{self.lineage[:4].hex()}"

    def _state(self) -> bytes:
        state = {
            "settings": self.settings,
            "pipeline": self.pipeline,
            "calibrator": self.calibrator,
            "learned": self.learned,
            "positives": self.positives,
            "lineage": self.lineage,
            "judged": list(self.judged),
            "prior_share": self.prior_share,
            "river": river.__version__,
        }
        with _named_by_first_home():
            return pickle.dumps(state, protocol=5)

    def to_bytes(self) -> bytes:
        """A checkpoint: a magic line, a 2-byte format number, then a pickle.

        Pickle is only safe from a trusted store; checkpoints come from our own Redis.
        """
        return _MAGIC + _FORMAT.to_bytes(2, "big") + self._state()

    @classmethod
    def from_bytes(cls, data: bytes) -> ChurnModel:
        """Restore ``to_bytes`` output; raise ``CheckpointError`` on anything else.

        >>> ChurnModel.from_bytes(ChurnModel().to_bytes()).learned
        0
        >>> ChurnModel.from_bytes(b"junk")
        Traceback (most recent call last):
        ...
        services.scorer.core.model.CheckpointError: not a churnwatch model checkpoint
        """
        if not data.startswith(_MAGIC):
            raise CheckpointError("not a churnwatch model checkpoint")
        fmt = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 2], "big")
        if fmt != _FORMAT:
            raise CheckpointError(
                f"model checkpoint format {fmt} is not supported (this build reads {_FORMAT});"
                " start from a fresh model or run the matching churnwatch version"
            )
        try:
            state = pickle.loads(data[len(_MAGIC) + 2 :])
        except Exception as exc:
            raise CheckpointError(
                f"model checkpoint cannot be unpickled with river {river.__version__}: {exc}"
            ) from exc
        model = cls(state["settings"])
        model.pipeline = state["pipeline"]
        model.calibrator = state["calibrator"]
        model.learned = state["learned"]
        model.positives = state["positives"]
        model.lineage = state["lineage"]
        # Checkpoints from before the quality blend: no evidence yet, the count floor rules.
        model.judged.extend(state.get("judged", ()))
        model.prior_share = state.get("prior_share", 0.0)
        return model

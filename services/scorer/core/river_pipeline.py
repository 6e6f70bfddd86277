"""The River pipeline the churn model learns with (pure, no I/O).

Its settings (:class:`ModelSettings`), its inputs (``FEATURES``, every labelled
feature but ``NOT_LEARNED``, compressed by :func:`prepare`), the scaler step that
learning fuses (:func:`scale_and_learn`), and the factory (:func:`build_pipeline`):
``FuncTransformer(prepare) | StandardScaler | LogisticRegression``, or an ARF forest;
then a pipeline's two uses, predicting (:func:`scaled_inputs`, :func:`predict_raw`)
and learning one label (:func:`learn_label`).
:class:`~services.scorer.core.model.ChurnModel` holds one; its checkpoints pickle
``ModelSettings`` and ``prepare`` (see :mod:`~services.scorer.core.checkpoint`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Literal

from river import compose, forest, linear_model, optim, preprocessing

from services.common.errors import ConfigError
from services.scorer.core.reasons import LABELS

# Read by segments and reasons, never learned: in a history where users arrived
# together (a one-cohort replay, or the months after a first deployment) tenure
# is the calendar, and labels reach the learner late by class (a survivor's
# y=0 as soon as it is seen after the horizon, a churner's y=1 only once the
# lapse is confirmed), so the newest labels are mostly survivors and the
# learner reads "later = safer"; scoring then extrapolates it past any tenure
# it has seen. Early life is the "new" lifecycle stage's business.
NOT_LEARNED = frozenset({"tenure_days"})
FEATURES: tuple[str, ...] = tuple(k for k in LABELS if k not in NOT_LEARNED)


@dataclass(frozen=True, slots=True)
class ModelSettings:
    """How the model learns; validated on construction."""

    kind: Literal["logreg", "forest"] = "logreg"
    # A constant SGD step tracks the newest labels; delayed labels arrive skewed by
    # class (survivors resolve first), so a small step that averages over more of
    # them ranks better. L2 keeps near-duplicate features (a 90-day window and its
    # lifetime total, equal while users are young) from splitting one signal into
    # large weights of opposite sign, whose difference scoring then extrapolates:
    # a full batch fit on the same labels shows it too. CDNOW calibration-only
    # check (BENCHMARKS.md), step/L2: 0.01/1e-4 0.720, 0.01/0.01 0.745, 0.005/0.01
    # 0.746 (0.742-0.747 on reordered label streams, where 0.01/1e-4 swings
    # 0.720-0.745); the simulated stream's progressive AUC 0.891 -> 0.890.
    learning_rate: float = 0.005
    l2: float = 0.01
    positive_weight: float = 3.0
    prior_weight_labels: int = 500
    calibration_bins: int = 20
    calibration_min_labels: int = 200
    calibration_window: int = 5000
    blend_window: int = 2000
    blend_margin: float = 0.02
    blend_every: int = 100
    blend_min_class: int = 20
    forest_models: int = 10
    seed: int = 42

    def __post_init__(self) -> None:
        if self.kind not in ("logreg", "forest"):
            raise ConfigError(f"model kind must be 'logreg' or 'forest', not {self.kind!r}")
        if self.learning_rate <= 0 or self.positive_weight <= 0:
            raise ConfigError("model learning_rate and positive_weight must be > 0")
        if self.prior_weight_labels < 0 or self.calibration_bins < 2:
            raise ConfigError("prior_weight_labels must be >= 0 and calibration_bins >= 2")
        if self.calibration_window < 1 or self.forest_models < 1:
            raise ConfigError("calibration_window and forest_models must be >= 1")
        if self.blend_window < 2 or self.blend_every < 1 or self.blend_min_class < 1:
            raise ConfigError("blend_window must be >= 2, blend_every and blend_min_class >= 1")
        if self.blend_margin <= 0:
            raise ConfigError("blend_margin must be > 0")


def prepare(x: dict[str, float]) -> dict[str, float]:
    """Keep the contract features, compressing heavy tails with a signed log1p.

    >>> prepare({"events_7d": math.e - 1, "sessions_change": -(math.e - 1)})["sessions_change"]
    -1.0
    """
    # Counts and money are heavy-tailed; the log keeps whales from owning the scale.
    # Dense on purpose: the scaler only learns and scales the keys it is given.
    get = x.get
    return {k: math.copysign(math.log1p(abs(v := get(k, 0.0))), v) for k in FEATURES}


def scale_and_learn(
    scaler: preprocessing.StandardScaler, x: dict[str, float]
) -> tuple[dict[str, float], dict[str, float]]:
    """River's ``transform_one(x)``, ``learn_one(x)``, ``transform_one(x)`` in one pass.

    The same arithmetic on the scaler's own running counts, means and variances
    (a test holds it equal to River's three calls), a third of the dict work:
    learning a label is this, the logistic step and little else.

    >>> scaler = preprocessing.StandardScaler()
    >>> for v in (1.0, 3.0):
    ...     _ = scale_and_learn(scaler, {"a": v})
    >>> scale_and_learn(scaler, {"a": 5.0})
    ({'a': 3.0}, {'a': 1.224744871391589})
    """
    if scaler.window_size is not None or not scaler.with_std:
        before = scaler.transform_one(x)
        scaler.learn_one(x)
        return before, scaler.transform_one(x)
    counts, means, variances = scaler.counts, scaler.means, scaler.vars
    before, after = {}, {}
    for i, xi in x.items():
        mean, var = means[i], variances[i]
        before[i] = (xi - mean) / var**0.5 if var else 0.0
        n = counts[i] + 1
        counts[i] = n
        means[i] = new_mean = mean + (xi - mean) / n
        variances[i] = var = var + ((xi - mean) * (xi - new_mean) - var) / n
        after[i] = (xi - new_mean) / var**0.5 if var else 0.0
    return before, after


def build_pipeline(settings: ModelSettings) -> compose.Pipeline:
    """A fresh pipeline of ``settings.kind``, nothing learned.

    >>> list(build_pipeline(ModelSettings()).steps)
    ['prepare', 'StandardScaler', 'LogisticRegression']
    """
    if settings.kind == "forest":
        learner: Any = forest.ARFClassifier(n_models=settings.forest_models, seed=settings.seed)
        return compose.Pipeline(compose.FuncTransformer(prepare), learner)
    learner = linear_model.LogisticRegression(
        optimizer=optim.SGD(settings.learning_rate), l2=settings.l2
    )
    return compose.FuncTransformer(prepare) | preprocessing.StandardScaler() | learner


def scaled_inputs(
    pipeline: compose.Pipeline, x: dict[str, float], *, kind: str
) -> dict[str, float] | None:
    """The logistic step's inputs for ``x`` as the scaler stands (it learns nothing
    here); ``None`` for a forest, which has no such step."""
    if kind != "logreg":
        return None
    scaled: dict[str, float] = pipeline["StandardScaler"].transform_one(prepare(x))
    return scaled


def predict_raw(
    pipeline: compose.Pipeline, x: dict[str, float], *, scaled: dict[str, float] | None
) -> float:
    """The learner's uncalibrated probability of churn (0.5 before it has learned).

    ``scaled`` is ``scaled_inputs(pipeline, x)``: the pipeline's own steps, split
    so that explaining can reuse the scaled vector.

    >>> pipeline = build_pipeline(ModelSettings())
    >>> predict_raw(pipeline, {}, scaled=scaled_inputs(pipeline, {}, kind="logreg"))
    0.5
    """
    if scaled is not None:
        p: float = pipeline["LogisticRegression"].predict_proba_one(scaled)[True]
        return p
    proba = pipeline.predict_proba_one(x)
    # A forest that has only seen survivors returns {False: 1.0}: that is P(churn) = 0.
    return proba.get(True, 0.0) if proba else 0.5


def learn_label(
    pipeline: compose.Pipeline, x: dict[str, float], *, label: bool, settings: ModelSettings
) -> float:
    """Learn one label, positives weighted by ``positive_weight``; return the raw
    score predicted just before learning it (honest, out of sample)."""
    weight = settings.positive_weight if label else 1.0
    if settings.kind == "logreg":
        # The pipeline's learn_one, step by step, so that the prediction before
        # learning and the learning share one prepare(x) (~a third of a label's cost),
        # and the scaler's three passes (scale, learn, scale again) are one.
        scaler, logreg = pipeline["StandardScaler"], pipeline["LogisticRegression"]
        before, after = scale_and_learn(scaler, prepare(x))
        raw: float = logreg.predict_proba_one(before)[True]
        logreg.learn_one(after, label, w=weight)
        return raw
    raw = predict_raw(pipeline, x, scaled=None)
    # ARF takes no sample weight; repeating a positive is the weighting it supports.
    for _ in range(max(1, round(weight))):
        pipeline.learn_one(x, label)
    return raw

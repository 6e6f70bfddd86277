"""The churn model: a rule-based prior blended into a calibrated online River model.

Pure logic, no I/O. A feature vector is the ``dict[str, float]`` of
``vector.to_vector`` (keys in docs/CONTRACTS.md); missing keys count as 0.

- ``prior_risk`` scores users before any label exists (rules in
  :mod:`~services.scorer.core.prior`); its weight moves to the learner only
  while the learner is measured to rank better (:mod:`~services.scorer.core.blend`).
- The learner is ``FuncTransformer(log1p) | StandardScaler | LogisticRegression``
  on ``FEATURES`` (every labelled feature but tenure), class-weighted by a sample
  weight on positives, or an ARF forest (:mod:`~services.scorer.core.river_pipeline`).
- Class weighting inflates probabilities, so ``BinCalibrator``
  (:mod:`~services.scorer.core.calibration`) maps raw scores to risks once it
  has seen enough resolved labels of both classes.
- Scoring never updates the model (not even the scaler): only ``learn`` does,
  with a resolved label. ``score_and_explain`` is the cheap hot path.

Scores, reasons and ``LABELS`` are in :mod:`~services.scorer.core.reasons`, the
checkpoint format in :mod:`~services.scorer.core.checkpoint`. ``BinCalibrator``,
``ModelSettings`` and ``prepare`` stay importable from here: checkpoints name
them under ``services.scorer.core.model``, their first home, so that every
build, before the splits and after, loads them.
"""

from __future__ import annotations

from collections import deque
from hashlib import blake2b

import orjson

from services.scorer.core import blend
from services.scorer.core.calibration import BinCalibrator
from services.scorer.core.checkpoint import decode_checkpoint, encode_checkpoint
from services.scorer.core.prior import prior_contributions, prior_from, prior_risk
from services.scorer.core.reasons import LABELS, Reason, Score, top_reasons
from services.scorer.core.river_pipeline import (
    ModelSettings,
    build_pipeline,
    learn_label,
    predict_raw,
    prepare,
    scaled_inputs,
)

# BinCalibrator, ModelSettings and prepare: checkpoints load them from here.
__all__ = [
    "LABELS",
    "BinCalibrator",
    "ChurnModel",
    "ModelSettings",
    "Reason",
    "Score",
    "prepare",
    "prior_risk",
]


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
        self.judged: deque[blend.Judged] = deque(maxlen=self.settings.blend_window)
        self.prior_share = 1.0  # the prior's weight that measured quality allows
        # A running hash of settings and every label learned: the same history gives
        # the same version, before and after a checkpoint round trip.
        self.lineage = blake2b(repr(self.settings).encode(), digest_size=16).digest()

    @property
    def weight_prior(self) -> float:
        """Share of the prior in the risk (:func:`~services.scorer.core.blend.prior_weight`)."""
        return blend.prior_weight(
            learned=self.learned, prior_share=self.prior_share, settings=self.settings
        )

    def blend_quality(self) -> dict[str, float | None]:
        """Progressive ROC AUC of the prior and the learner on the same recent labels.

        >>> ChurnModel().blend_quality()
        {'prior_auc': None, 'model_auc': None, 'labels': 0.0, 'prior_share': 1.0}
        """
        return blend.blend_quality(self.judged, self.prior_share)

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
        raw = learn_label(self.pipeline, x, label=label, settings=self.settings)
        # Calibrate and judge on the prediction made before learning: honest, out of sample.
        self.calibrator.learn(raw, label)
        self.judged.append((prior_risk(x), raw, label))
        self.learned += 1
        self.positives += label
        if self.learned % self.settings.blend_every == 0:
            self.prior_share = blend.measured_prior_share(self.judged, self.settings)
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
        return scaled_inputs(self.pipeline, x, kind=self.settings.kind)

    def _raw(self, x: dict[str, float], scaled: dict[str, float] | None) -> float:
        return predict_raw(self.pipeline, x, scaled=scaled)

    def _score(
        self, x: dict[str, float], scaled: dict[str, float] | None, points: dict[str, float]
    ) -> Score:
        prior, raw, w = prior_from(points, x), self._raw(x, scaled), self.weight_prior
        calibrate = self.calibrator.predict if w < 1.0 and self.calibrated else None
        return blend.blend_risk(prior, raw, w=w, calibrate=calibrate)

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
        coefficient = self.pipeline["LogisticRegression"]._weights.get
        return blend.blend_reasons(points, x, scaled=scaled, coefficient=coefficient, w=w, top=top)

    @property
    def version(self) -> str:
        """``{kind}-{labels learned}-{hash of settings and labels learned}``."""
        return f"{self.settings.kind}-{self.learned}-{self.lineage[:4].hex()}"

    def to_bytes(self) -> bytes:
        """A checkpoint (format in :mod:`~services.scorer.core.checkpoint`)."""
        return encode_checkpoint(
            {
                "settings": self.settings,
                "pipeline": self.pipeline,
                "calibrator": self.calibrator,
                "learned": self.learned,
                "positives": self.positives,
                "lineage": self.lineage,
                "judged": list(self.judged),
                "prior_share": self.prior_share,
            }
        )

    @classmethod
    def from_bytes(cls, data: bytes) -> ChurnModel:
        """Restore ``to_bytes`` output; raise ``CheckpointError`` on anything else.

        >>> ChurnModel.from_bytes(ChurnModel().to_bytes()).learned
        0
        >>> ChurnModel.from_bytes(b"junk")
        Traceback (most recent call last):
        ...
        services.scorer.core.checkpoint.CheckpointError: not a churnwatch model checkpoint
        """
        state = decode_checkpoint(data)
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

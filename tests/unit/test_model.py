from __future__ import annotations

import contextlib
import math
import random
from collections import deque

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.scorer.core import checkpoint
from services.scorer.core.calibration import BinCalibrator
from services.scorer.core.checkpoint import CheckpointError
from services.scorer.core.model import ChurnModel
from services.scorer.core.prior import PRIOR_BASE, TIE_BREAK, prior_contributions, prior_risk
from services.scorer.core.quality import QualityTracker
from services.scorer.core.reasons import LABELS
from services.scorer.core.river_pipeline import FEATURES, ModelSettings, prepare


def synthetic_user(rng: random.Random) -> tuple[dict[str, float], bool]:
    """One user: churners are quieter, slipping, longer away and fail payments more.

    Every distribution overlaps between the classes, and some features are pure noise.
    """
    churner = rng.random() < 0.15
    level = rng.lognormvariate(1.2 if churner else 2.0, 0.7)
    trend = max(0.0, rng.gauss(0.55 if churner else 1.0, 0.35))
    return {
        "recency_days": rng.expovariate(1 / (8.0 if churner else 3.0)),
        "tenure_days": rng.uniform(1, 700),
        "events_7d": level * trend * rng.uniform(0.5, 1.5),
        "events_30d": level * 4.3 * rng.uniform(0.7, 1.3),
        "active_days_30d": min(30.0, level * rng.uniform(0.5, 2.0)),
        "trend_7d_vs_30d": trend,
        "payment_failures_30d": float(rng.random() < (0.2 if churner else 0.06)),
        "support_tickets_30d": float(rng.random() < (0.2 if churner else 0.12)),
        "revenue_30d": rng.expovariate(1 / 20),
        "is_paid": float(rng.random() < 0.4),
    }, churner


def run_delayed(model: ChurnModel, rng: random.Random, *, labels: int, delay: int = 100):
    """Score each user now, learn its label ``delay`` users later, judging the earlier risk."""
    quality, prior_quality = QualityTracker(), QualityTracker()
    pending: deque = deque()
    while quality.positives + quality.negatives < labels:
        x, y = synthetic_user(rng)
        pending.append((x, y, model.score(x)))
        if len(pending) > delay:
            x0, y0, s0 = pending.popleft()
            quality.update(s0.risk, y0)
            prior_quality.update(s0.prior, y0)
            model.learn(x0, y0)
    return quality, prior_quality


@pytest.mark.parametrize("kind", ["logreg", "forest"])
def test_progressive_auc_after_2000_labels_is_above_0_8(kind: str) -> None:
    model = ChurnModel(ModelSettings(kind=kind))
    quality, _ = run_delayed(model, random.Random(1), labels=2000)
    measured = quality.roc_auc
    assert measured is not None and measured > 0.8, measured
    figures = model.blend_quality()
    # The learner ranks better than the prior on the same labels, so it earned weight.
    assert figures["model_auc"] > figures["prior_auc"]  # type: ignore[operator]
    assert model.calibrated and model.weight_prior < 1.0


def test_learned_model_beats_prior_and_is_calibrated() -> None:
    model = ChurnModel()
    rng = random.Random(2)
    run_delayed(model, rng, labels=2000)
    fresh = [synthetic_user(rng) for _ in range(3000)]
    scores = [model.score(x) for x, _ in fresh]
    learned, prior = QualityTracker(), QualityTracker()
    for (_, y), s in zip(fresh, scores, strict=True):
        learned.update(s.risk, y)
        prior.update(s.prior, y)
    assert learned.roc_auc is not None and prior.roc_auc is not None
    assert learned.roc_auc > prior.roc_auc + 0.02
    churn_rate = sum(y for _, y in fresh) / len(fresh)
    mean_risk = sum(s.risk for s in scores) / len(scores)
    mean_raw = sum(s.raw for s in scores) / len(scores)
    # Class weighting inflates the raw probability; the calibrator brings it back.
    assert abs(mean_risk - churn_rate) < 0.03
    assert mean_raw > churn_rate + 0.05


def test_calibration_keeps_the_learners_order_where_most_users_sit_in_one_bin() -> None:
    """A high-churn population: nearly every raw score in the top bin. The calibrated
    risk still ranks them, and 6 decimals (alerts, replay scores) keep that order."""
    cal = BinCalibrator(bins=20, window=5000)
    rng = random.Random(3)
    for _ in range(3000):
        raw = 0.975 + 0.025 * rng.random() if rng.random() < 0.9 else rng.random()
        cal.learn(raw, rng.random() < raw)
    raws = [0.976 + 0.0023 * k for k in range(10)]
    risks = [round(cal.predict(r), 6) for r in raws]
    assert risks == sorted(set(risks)) and risks[0] > 0.0 and risks[-1] < 1.0
    assert cal.predict(0.0) == 0.0 and cal.predict(1.0) == 1.0


def test_fresh_model_scores_with_the_prior_until_the_learner_is_measured_better() -> None:
    model = ChurnModel(ModelSettings(prior_weight_labels=10, blend_every=10))
    x = {"recency_days": 20.0, "trend_7d_vs_30d": 0.1}
    s = model.score(x)
    assert s.weight_prior == 1.0 and s.risk == s.prior == prior_risk(x)
    rng = random.Random(3)
    for _ in range(30):  # past the count floor, but too few labels to judge the learner
        model.learn(*synthetic_user(rng))
    assert model.score(x).weight_prior == 1.0
    run_delayed(model, rng, labels=1000)
    figures = model.blend_quality()
    assert figures["model_auc"] > figures["prior_auc"] + 0.02  # type: ignore[operator]
    assert model.score(x).weight_prior == 0.0


def test_the_prior_keeps_its_weight_while_it_ranks_better() -> None:
    """Labels that are the prior's own verdict: no learner can beat it, so it keeps the risk."""
    model = ChurnModel(ModelSettings(prior_weight_labels=10))
    rng = random.Random(8)
    for _ in range(1500):
        x, _ = synthetic_user(rng)
        model.learn(x, prior_risk(x) > 0.5)
    figures = model.blend_quality()
    assert figures["prior_auc"] == 1.0 and figures["labels"] == 1500
    assert model.weight_prior == 1.0
    x = synthetic_user(rng)[0]
    assert model.score(x).risk == prior_risk(x)


def test_the_count_floor_still_bounds_how_fast_the_prior_goes() -> None:
    model = ChurnModel(ModelSettings(prior_weight_labels=5000))
    run_delayed(model, random.Random(9), labels=1000)
    assert model.prior_share == 0.0  # measured better...
    assert model.weight_prior == pytest.approx(1.0 - model.learned / 5000)  # ...but not yet trusted


def test_prior_thresholds() -> None:
    usual = {"recency_days": 1.0, "trend_7d_vs_30d": 1.0, "active_days_30d": 10.0}
    assert prior_risk(usual) < 0.1
    assert prior_risk({**usual, "recency_days": 15.0}) >= 0.65  # high on its own
    assert prior_risk({**usual, "recency_days": 31.0}) >= 0.85  # critical
    assert prior_risk({**usual, "payment_failures_30d": 1.0}) > prior_risk(usual)
    assert prior_risk({**usual, "trend_7d_vs_30d": 0.2}) > prior_risk(usual)


@given(st.dictionaries(st.sampled_from(FEATURES), st.floats(-1e9, 1e9), max_size=len(FEATURES)))
def test_risk_is_a_probability_for_any_vector(x: dict[str, float]) -> None:
    s = ChurnModel(ModelSettings(prior_weight_labels=0)).score(x)
    assert 0.0 <= s.risk <= 1.0 and 0.0 <= s.prior <= 1.0


@pytest.mark.parametrize("learned", [0, 2000])
def test_a_decaying_user_is_explained_by_trend_or_recency(learned: int) -> None:
    model = ChurnModel()
    if learned:
        run_delayed(model, random.Random(4), labels=learned)
    decaying = {
        "recency_days": 12.0,
        "trend_7d_vs_30d": 0.15,
        "events_7d": 1.0,
        "events_30d": 25.0,
        "active_days_30d": 9.0,
        "revenue_30d": 20.0,
    }
    reasons = model.explain(decaying, top=3)
    assert reasons[0].feature in {"trend_7d_vs_30d", "recency_days"}
    assert reasons[0].label == LABELS[reasons[0].feature]
    assert reasons[0].value == decaying[reasons[0].feature]
    assert all(r.contribution > 0 for r in reasons)
    assert [r.contribution for r in reasons] == sorted(
        (r.contribution for r in reasons), reverse=True
    )


def test_a_healthy_user_has_no_prior_reasons() -> None:
    healthy = {"recency_days": 0.5, "trend_7d_vs_30d": 1.2, "active_days_30d": 20.0}
    assert ChurnModel().explain(healthy) == []


@pytest.mark.parametrize("kind", ["logreg", "forest"])
def test_checkpoint_round_trip_gives_identical_scores(kind: str) -> None:
    model = ChurnModel(ModelSettings(kind=kind))
    rng = random.Random(5)
    run_delayed(model, rng, labels=600)
    restored = ChurnModel.from_bytes(model.to_bytes())
    users = [synthetic_user(rng)[0] for _ in range(200)]
    assert [restored.score(x) for x in users] == [model.score(x) for x in users]
    assert [restored.explain(x) for x in users] == [model.explain(x) for x in users]
    assert restored.version == model.version
    # Both keep learning the same way.
    x, y = synthetic_user(rng)
    model.learn(x, y)
    restored.learn(x, y)
    assert restored.score(users[0]) == model.score(users[0])


def _learned_model() -> ChurnModel:
    model = ChurnModel()
    for i in range(300):
        model.learn({"recency_days": float(i % 40), "active_days_30d": float(i % 7)}, i % 3 == 0)
    return model


def _same_model(restored: ChurnModel, model: ChurnModel) -> None:
    assert isinstance(restored.calibrator, BinCalibrator)
    assert isinstance(restored.settings, ModelSettings) and restored.settings == model.settings
    assert restored.pipeline["prepare"].func is prepare
    x = {"recency_days": 20.0, "active_days_30d": 2.0}
    assert restored.score(x) == model.score(x)
    assert restored.explain(x) == model.explain(x)
    assert restored.version == model.version


def test_a_checkpoint_names_only_the_model_module_so_older_builds_load_it() -> None:
    # The calibrator, the settings and the pipeline's first step moved out of the model
    # module; builds before each move define them there, so a checkpoint must name
    # them there for a rolled-back worker to keep its model.
    model = _learned_model()
    data = model.to_bytes()
    assert b"services.scorer.core.model" in data
    assert b"river_pipeline" not in data and b"calibration" not in data
    _same_model(ChurnModel.from_bytes(data), model)


def test_a_checkpoint_that_names_the_new_modules_still_loads(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Builds between the calibrator's move and this one pickled it by its new module:
    # pickle everything by the module that defines it.
    model = _learned_model()
    monkeypatch.setattr(checkpoint, "_named_by_first_home", contextlib.nullcontext)
    data = model.to_bytes()
    monkeypatch.undo()
    assert b"services.scorer.core.calibration" in data and b"river_pipeline" in data
    _same_model(ChurnModel.from_bytes(data), model)


def test_checkpoint_refuses_unknown_formats() -> None:
    data = ChurnModel().to_bytes()
    magic = data.split(b"\n", 1)[0] + b"\n"
    with pytest.raises(CheckpointError, match="format 99 is not supported"):
        ChurnModel.from_bytes(magic + (99).to_bytes(2, "big") + data[len(magic) + 2 :])
    with pytest.raises(CheckpointError, match="not a churnwatch model"):
        ChurnModel.from_bytes(b"PK\x03\x04")
    with pytest.raises(CheckpointError, match="cannot be unpickled"):
        ChurnModel.from_bytes(data[: len(magic) + 2] + b"garbage")


def test_version_names_kind_labels_and_state() -> None:
    model = ChurnModel()
    first = model.version
    assert first.startswith("logreg-0-") and model.version == first
    model.learn({"recency_days": 3.0}, 0)
    assert model.version.startswith("logreg-1-") and model.version != first


def test_scoring_learns_nothing() -> None:
    model = ChurnModel()
    rng = random.Random(6)
    run_delayed(model, rng, labels=300)
    probes = [synthetic_user(rng)[0] for _ in range(20)]
    before = [model.score(x) for x in probes]
    for _ in range(200):
        model.score(synthetic_user(rng)[0])
    assert [model.score(x) for x in probes] == before


@pytest.mark.parametrize(
    "bad",
    [
        {"kind": "svm"},
        {"learning_rate": 0.0},
        {"prior_weight_labels": -1},
        {"calibration_bins": 1},
        {"blend_margin": 0.0},
        {"blend_window": 1},
    ],
)
def test_bad_settings_fail_loudly(bad: dict) -> None:
    with pytest.raises(ConfigError):
        ModelSettings(**bad)


@pytest.mark.parametrize("labels", [0, 300, 1000])
def test_score_and_explain_matches_the_separate_calls(labels: int) -> None:
    model = ChurnModel()
    rng = random.Random(7)
    if labels:
        run_delayed(model, rng, labels=labels)
    for _ in range(50):
        x = synthetic_user(rng)[0]
        assert model.score_and_explain(x, top=3) == (model.score(x), model.explain(x, top=3))


def test_the_prior_breaks_its_ties_by_time_away_and_frequency() -> None:
    """Every user a month away fires the same rules; the order among them still means something."""
    gone = {"recency_days": 40.0, "trend_7d_vs_30d": 1.0, "active_days_30d": 0.0}
    longer = {**gone, "recency_days": 200.0}
    regular = {**gone, "active_days_total": 12.0, "recency_vs_gap": 1.5}
    overdue = {**regular, "recency_vs_gap": 6.0}
    assert prior_contributions(gone) == prior_contributions(longer)
    assert prior_risk(gone) < prior_risk(longer)
    assert prior_risk(regular) < prior_risk(overdue) < prior_risk(gone)
    # Only an order: the probability moves by at most TIE_BREAK.
    rules = 1.0 / (1.0 + math.exp(-(PRIOR_BASE + sum(prior_contributions(gone).values()))))
    for x in (gone, longer, regular, overdue):
        assert abs(prior_risk(x) - rules) <= TIE_BREAK


def test_tenure_is_read_but_never_learned() -> None:
    """Tenure stays in the vector (segments, reasons) but is no input of the learner."""
    assert "tenure_days" in LABELS and "tenure_days" not in FEATURES
    model = ChurnModel()
    run_delayed(model, random.Random(5), labels=500)
    assert "tenure_days" not in model.pipeline["LogisticRegression"]._weights
    x = synthetic_user(random.Random(6))[0]
    assert model.raw(x) == model.raw({**x, "tenure_days": 5000.0})


def test_scale_and_learn_equals_rivers_three_calls() -> None:
    # The fused pass reads River's scaler internals: a River upgrade that changes
    # them must fail here, not drift the model silently.
    from river import preprocessing

    from services.scorer.core.river_pipeline import scale_and_learn

    rng = random.Random(7)
    river, fused = preprocessing.StandardScaler(), preprocessing.StandardScaler()
    for _ in range(2000):
        x = {k: rng.choice([0.0, 3.0, rng.random() * 100, -rng.random()]) for k in "abcdef"}
        before = river.transform_one(x)
        river.learn_one(x)
        assert scale_and_learn(fused, x) == (before, river.transform_one(x))
    assert (fused.counts, fused.means, fused.vars) == (river.counts, river.means, river.vars)

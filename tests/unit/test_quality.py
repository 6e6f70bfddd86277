from __future__ import annotations

import math
import random

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.scorer.core.quality import QualityTracker, roc_auc


def brute_force_auc(pairs: list[tuple[float, bool]]) -> float:
    pos = [r for r, y in pairs if y]
    neg = [r for r, y in pairs if not y]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


@given(st.lists(st.tuples(st.sampled_from([0.0, 0.1, 0.5, 0.9, 1.0]), st.booleans()), max_size=60))
def test_exact_auc_matches_pair_counting_with_ties(pairs: list[tuple[float, bool]]) -> None:
    expected = brute_force_auc(pairs) if 0 < sum(y for _, y in pairs) < len(pairs) else None
    assert roc_auc(pairs) == pytest.approx(expected)


def test_metrics_at_the_alert_threshold() -> None:
    q = QualityTracker(threshold=0.65)
    for risk, y in [(0.9, 1), (0.7, 0), (0.66, 1), (0.3, 1), (0.2, 0), (0.1, 0)]:
        q.update(risk, y)
    assert q.precision == pytest.approx(2 / 3)
    assert q.recall == pytest.approx(2 / 3)
    assert q.counts == {"positive": 3, "negative": 3}
    expected_loss = (
        -sum(
            math.log(r if y else 1 - r)
            for r, y in [(0.9, 1), (0.7, 0), (0.66, 1), (0.3, 1), (0.2, 0), (0.1, 0)]
        )
        / 6
    )
    assert q.log_loss == pytest.approx(expected_loss)


def test_empty_and_one_class_metrics_are_none() -> None:
    q = QualityTracker()
    assert (q.roc_auc, q.log_loss, q.precision, q.recall) == (None, None, None, None)
    q.update(0.2, 0)
    assert q.roc_auc is None and q.recall is None and q.precision is None
    assert q.log_loss == pytest.approx(-math.log(0.8))


def test_certain_mistakes_have_a_finite_log_loss() -> None:
    q = QualityTracker()
    q.update(0.0, 1)
    assert q.log_loss is not None and math.isfinite(q.log_loss)


def test_metrics_cover_the_window_but_counts_are_lifetime() -> None:
    q = QualityTracker(window=4)
    for _ in range(10):
        q.update(0.1, 1)  # old, badly ranked labels fall out of the window
    for risk, y in [(0.9, 1), (0.8, 1), (0.2, 0), (0.1, 0)]:
        q.update(risk, y)
    assert q.roc_auc == 1.0
    assert q.counts == {"positive": 12, "negative": 2}


def test_round_trip_through_json() -> None:
    rng = random.Random(0)
    q = QualityTracker(threshold=0.5, window=100)
    for _ in range(300):
        q.update(rng.random(), rng.random() < 0.3)
    restored = QualityTracker.from_dict(orjson.loads(orjson.dumps(q.to_dict())))
    assert (restored.roc_auc, restored.log_loss, restored.precision, restored.recall) == (
        q.roc_auc,
        q.log_loss,
        q.precision,
        q.recall,
    )
    assert restored.counts == q.counts and restored.window == 100
    with pytest.raises(ValueError, match="format"):
        QualityTracker.from_dict({**q.to_dict(), "format": 2})

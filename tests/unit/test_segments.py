"""Lifecycle stages from real feature vectors, RFM quintiles and value tiers."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.common.events import UserEvent
from services.scorer.core.features import FeatureSettings, UserState, update_features
from services.scorer.core.segments import (
    STAGES,
    RfmQuantiles,
    SegmentSettings,
    lifecycle_stage,
    value_tier,
)
from services.scorer.core.vector import to_vector

FS = FeatureSettings()
SS = SegmentSettings()
DAY0 = datetime(2026, 1, 5, 10, 0, tzinfo=UTC)


class User:
    """A user driven through time, remembering the previous stage like the scorer does."""

    def __init__(self) -> None:
        self.state: UserState | None = None
        self.stage: str | None = None
        self.n = 0

    def act(self, day: float, kind: str = "login", times: int = 1) -> None:
        for _ in range(times):
            self.n += 1
            at = DAY0 + timedelta(days=day, seconds=self.n)
            self.state = update_features(
                self.state, UserEvent(f"e{self.n}", "u", kind, at), settings=FS
            )

    def stage_on(self, day: float) -> str:
        assert self.state is not None
        vector = to_vector(self.state, (DAY0 + timedelta(days=day, hours=1)).timestamp())
        self.stage = lifecycle_stage(vector, previous_stage=self.stage, settings=SS)
        assert self.stage in STAGES
        return self.stage


def test_new_active_at_risk_dormant_churned_reactivated_active() -> None:
    user = User()
    for day in range(21):
        user.act(day)
    assert [user.stage_on(d) for d in (3, 20)] == ["new", "active"]
    assert user.stage_on(28) == "at-risk"  # quiet for 8 days
    assert user.stage_on(40) == "dormant"  # quiet for 20 days
    assert user.stage_on(52) == "churned"  # quiet for 32 days
    user.act(53)
    assert user.stage_on(53) == "reactivated"
    for day in range(54, 71):
        user.act(day)
        user.stage_on(day)
    assert user.stage == "active"  # more than 14 days after coming back


def test_explicit_churn_then_return_is_reactivated() -> None:
    user = User()
    for day in range(30):
        user.act(day)
    user.act(30, "subscription_cancelled")
    assert user.stage_on(30) == "churned"
    user.act(31)
    assert user.stage_on(31) == "reactivated"


def test_a_sharp_drop_in_activity_is_at_risk_even_when_recent() -> None:
    user = User()
    for day in range(30):
        user.act(day, times=10)
    for day in range(30, 37):
        user.act(day)
    assert user.stage_on(36) == "at-risk"


def test_return_after_a_gap_is_reactivated_even_with_a_low_trend() -> None:
    user = User()
    for day in range(41):
        user.act(day, times=10)
    user.act(61)
    assert user.stage_on(61) == "reactivated"


def test_loyal_needs_tenure_and_regular_activity() -> None:
    user = User()
    for day in range(0, 100):
        user.act(day)
    assert user.stage_on(99) == "loyal"
    sparse = User()
    for day in range(0, 100, 4):
        sparse.act(day)
    assert sparse.stage_on(96) == "active"  # 8 active days in 30: not loyal


def test_new_user_gone_quiet_for_a_week_is_at_risk_not_new() -> None:
    user = User()
    user.act(0, "signup")
    assert user.stage_on(1) == "new"
    assert user.stage_on(8) == "at-risk"


def test_previous_stage_covers_a_return_beyond_the_kept_history() -> None:
    vector = {
        "recency_days": 0.1,
        "tenure_days": 400.0,
        "trend_7d_vs_30d": 4.0,
        "active_days_30d": 1.0,
        "explicit_churn": 0.0,
        "days_since_return": -1.0,
    }
    assert lifecycle_stage(vector, previous_stage="churned", settings=SS) == "reactivated"
    assert lifecycle_stage(vector, previous_stage="active", settings=SS) == "active"


def test_thresholds_are_configurable_and_checked() -> None:
    vector = {"recency_days": 10.0, "tenure_days": 50.0, "trend_7d_vs_30d": 1.0}
    assert lifecycle_stage(vector, previous_stage=None, settings=SS) == "at-risk"
    lenient = SegmentSettings(at_risk_after_days=12)
    assert lifecycle_stage(vector, previous_stage=None, settings=lenient) == "active"
    with pytest.raises(ValueError):
        SegmentSettings(dormant_after_days=40)


def test_value_tier_weighs_monetary_double() -> None:
    assert value_tier(5, 5, 5) == "high"
    assert value_tier(3, 3, 5) == "high"  # (3 + 3 + 10) / 4 = 4
    assert value_tier(5, 5, 1) == "medium"  # 3
    assert value_tier(2, 2, 3) == "medium"  # 2.5
    assert value_tier(2, 2, 2) == "low"
    assert value_tier(3, 3, 5, settings=SegmentSettings(high_tier_score=4.5)) == "medium"


def _rfm(value: float) -> dict[str, float]:
    return {"recency_days": value, "events_90d": value, "revenue_90d": value}


def test_quintiles_split_a_uniform_population_into_fifths() -> None:
    rfm = RfmQuantiles(size=1000)
    for i in range(1000):
        rfm.update(_rfm(float(i)))
    probes = [100.0, 300.0, 500.0, 700.0, 900.0]
    assert [rfm.scores(_rfm(v))[1] for v in probes] == [1, 2, 3, 4, 5]
    assert [rfm.scores(_rfm(v))[0] for v in probes] == [5, 4, 3, 2, 1]


@given(
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=1, max_size=300),
    st.lists(st.floats(min_value=0, max_value=1e6), min_size=2, max_size=20),
)
def test_scores_are_monotone_and_within_1_to_5(
    population: list[float], probes: list[float]
) -> None:
    rfm = RfmQuantiles(size=64, refresh_every=16)
    for v in population:
        rfm.update(_rfm(v))
    scores = [rfm.scores(_rfm(v)) for v in sorted(probes)]
    r, f, m = zip(*scores, strict=True)
    assert list(f) == sorted(f) and list(m) == sorted(m)
    assert list(r) == sorted(r, reverse=True)
    assert all(1 <= s <= 5 for triple in scores for s in triple)


def test_no_data_scores_neutral_and_bad_values_are_ignored() -> None:
    rfm = RfmQuantiles()
    assert rfm.scores(_rfm(3.0)) == (3, 3, 3)
    rfm.update(_rfm(float("nan")))
    assert rfm.n == 0


def test_memory_stays_fixed_and_follows_a_drifting_population() -> None:
    rfm = RfmQuantiles(size=100, refresh_every=10, horizon=1000)
    for _ in range(1000):
        rfm.update(_rfm(0.0))
    for _ in range(5000):
        rfm.update(_rfm(100.0))
    assert all(len(s) == 100 for s in rfm.to_dict()["samples"])
    assert rfm.scores(_rfm(50.0))[1] == 1  # the old zeros have been replaced


def test_checkpoint_round_trip_continues_identically() -> None:
    rfm = RfmQuantiles(size=50, refresh_every=5, seed=7)
    for i in range(120):
        rfm.update(_rfm(float(i % 37)))
    restored = RfmQuantiles.from_dict(orjson.loads(orjson.dumps(rfm.to_dict())))
    for i in range(200):
        rfm.update(_rfm(float(i % 53)))
        restored.update(_rfm(float(i % 53)))
        assert restored.scores(_rfm(float(i % 29))) == rfm.scores(_rfm(float(i % 29)))
    assert restored.to_dict() == rfm.to_dict()
    with pytest.raises(ValueError):
        RfmQuantiles.from_dict({**rfm.to_dict(), "version": 2})

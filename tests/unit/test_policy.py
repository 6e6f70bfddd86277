from __future__ import annotations

import pytest

from services.common.errors import ConfigError
from services.scorer.core.policy import (
    DAY,
    AlertState,
    PolicySettings,
    Thresholds,
    band_for,
    decide_alert,
    make_alert_id,
)

S = PolicySettings()


def run(scores: list[tuple[float, float]], settings: PolicySettings = S, stage: str | None = None):
    """Feed (day, score) pairs; return the triggers, one per score."""
    state: AlertState | None = None
    triggers = []
    for day, score in scores:
        state, trigger = decide_alert(
            state, score=score, now=day * DAY, stage=stage, settings=settings
        )
        triggers.append(trigger)
    return triggers


def test_bands() -> None:
    assert [band_for(s, S) for s in (0, 39.9, 40, 64, 65, 84, 85, 100)] == [
        "low", "low", "medium", "medium", "high", "high", "critical", "critical",
    ]  # fmt: skip


def test_moving_up_into_high_alerts_once() -> None:
    assert run([(0, 30), (1, 70), (2, 72)]) == [None, "band_up", None]


def test_first_score_already_high_alerts() -> None:
    assert run([(0, 90)]) == ["band_up"]


def test_hysteresis_needs_a_fall_below_rearm() -> None:
    # Flapping around 65 after the cooldown: 55 is not below 50, so no re-arm.
    flapping = [(0, 60), (1, 66), (9, 55), (10, 67)]
    assert run(flapping) == [None, "band_up", None, None]
    rearmed = [(0, 60), (1, 66), (9, 45), (10, 67)]
    assert run(rearmed) == [None, "band_up", None, "band_up"]


def test_cooldown_bounds_repeats() -> None:
    assert run([(0, 70), (1, 40), (2, 70)]) == ["band_up", None, None]
    assert run([(0, 70), (1, 40), (7, 70)]) == ["band_up", None, "band_up"]


def test_entering_high_during_cooldown_does_not_alert_later_without_a_new_crossing() -> None:
    triggers = run([(0, 70), (1, 30), (3, 70), (8, 71), (9, 86)])
    assert triggers == ["band_up", None, None, None, "band_up"]


def test_sharp_rise_alerts_below_high() -> None:
    assert run([(0, 20), (0.5, 50)]) == [None, "sharp_rise"]


def test_sharp_rise_split_over_micro_batches_is_seen() -> None:
    assert run([(0, 20), (0.1, 30), (0.2, 38), (0.3, 46)]) == [None, None, None, "sharp_rise"]


def test_a_slow_rise_is_not_sharp() -> None:
    assert run([(0, 20), (1.5, 35), (3, 50), (4.5, 60)]) == [None, None, None, None]


def test_sharp_rise_needs_at_least_medium_and_can_be_turned_off() -> None:
    assert run([(0, 0), (0.5, 30)]) == [None, None]
    off = PolicySettings(sharp_rise=False)
    assert run([(0, 20), (0.5, 50)], off) == [None, None]


def test_sharp_rise_below_high_keeps_the_band_alert_armed() -> None:
    triggers = run([(0, 20), (0.5, 50), (8, 70)])
    assert triggers == [None, "sharp_rise", "band_up"]


def test_stage_overrides() -> None:
    settings = PolicySettings(by_stage={"new": Thresholds(high=75.0, critical=90.0)})
    # Two days apart, so the rise is not sharp.
    assert run([(0, 50), (2, 70)], settings, stage="new") == [None, None]
    assert run([(0, 50), (2, 70)], settings, stage="loyal") == [None, "band_up"]
    assert run([(0, 50), (2, 80)], settings, stage="new") == [None, "band_up"]


def test_state_records_the_alert() -> None:
    state, trigger = decide_alert(None, score=70, now=5 * DAY, stage=None, settings=S)
    assert trigger == "band_up"
    assert (state.band, state.armed, state.last_alert_ts, state.last_score) == (
        "high", False, 5 * DAY, 70,
    )  # fmt: skip


def test_alert_ids_are_deterministic_per_day() -> None:
    a = make_alert_id("u1", "high", "band_up", 100.0)
    assert a == make_alert_id("u1", "high", "band_up", 86_399.0)
    assert a != make_alert_id("u1", "high", "band_up", 86_400.0)
    assert a != make_alert_id("u2", "high", "band_up", 100.0)
    assert a != make_alert_id("u1", "critical", "band_up", 100.0)
    assert a != make_alert_id("u1", "high", "sharp_rise", 100.0)
    assert len(a) == 24 and int(a, 16) >= 0


@pytest.mark.parametrize(
    "make",
    [
        lambda: Thresholds(medium=70.0),
        lambda: Thresholds(rearm_below=70.0),
        lambda: PolicySettings(cooldown_days=0.5),
    ],
)
def test_bad_settings_fail_loudly(make) -> None:
    with pytest.raises(ConfigError):
        make()

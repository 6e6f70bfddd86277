"""The scorer's alert-policy settings: checked at start, naming the variable to fix,
and carried into the policy the worker runs."""

from __future__ import annotations

import pytest

from services.common.errors import ConfigError
from services.common.settings import env_for, load_settings
from services.scorer.config import ScorerSettings
from services.scorer.core.policy import decide_alert
from services.scorer.wiring import policy_settings


@pytest.mark.parametrize(
    ("env", "says"),
    [
        ({"CHURNWATCH_SCORER_BAND_HIGH": "30"}, "_MEDIUM <= _HIGH <= _CRITICAL"),
        ({"CHURNWATCH_SCORER_REARM_BELOW": "70"}, "REARM_BELOW must not exceed _HIGH"),
        ({"CHURNWATCH_SCORER_COOLDOWN_S": "3600"}, "CHURNWATCH_SCORER_COOLDOWN_S"),
        ({"CHURNWATCH_SCORER_BANDS_BY_STAGE": '{"newbie": {"high": 70}}'}, "unknown stage"),
        ({"CHURNWATCH_SCORER_BANDS_BY_STAGE": '{"new": {"hi": 70}}'}, "unknown key"),
        ({"CHURNWATCH_SCORER_BANDS_BY_STAGE": '{"new": {"high": 95}}'}, "for stage 'new'"),
        ({"CHURNWATCH_SCORER_BANDS_BY_STAGE": "new=70"}, "BANDS_BY_STAGE: .*not valid JSON"),
        (
            {"CHURNWATCH_SCORER_BANDS_BY_STAGE": '{"new": {"high": "x"}}'},
            r"CHURNWATCH_SCORER_BANDS_BY_STAGE \(at new\.high\): Input should be a valid number",
        ),
        ({"CHURNWATCH_SCORER_SHARP_RISE_POINTS": "-5"}, "SHARP_RISE_POINTS"),
    ],
)
def test_bad_policy_settings_are_refused_at_start(
    env: dict[str, str], says: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ConfigError, match=says):
        load_settings(ScorerSettings)


def test_an_empty_per_stage_variable_means_none(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CHURNWATCH_SCORER_BANDS_BY_STAGE", "")  # a ConfigMap entry left blank
    assert load_settings(ScorerSettings).scorer_bands_by_stage == {}


def test_per_stage_bands_and_the_sharp_rise_reach_the_policy(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CHURNWATCH_SCORER_BANDS_BY_STAGE", '{"new": {"high": 80}}')
    monkeypatch.setenv("CHURNWATCH_SCORER_SHARP_RISE_POINTS", "0")
    monkeypatch.setenv("CHURNWATCH_SCORER_COOLDOWN_S", "172800")
    settings = load_settings(ScorerSettings)
    policy = policy_settings(settings)
    assert policy.cooldown_days == 2.0 and policy.sharp_rise is False

    def trigger(score: float, stage: str) -> str | None:
        return decide_alert(None, score=score, now=0.0, stage=stage, settings=policy)[1]

    # 70 is high for an active user, not yet for a new one.
    assert (trigger(70.0, "active"), trigger(70.0, "new"), trigger(82.0, "new")) == (
        "band_up",
        None,
        "band_up",
    )
    # No sharp rise: from 10 to 60 (medium) within the window alerts only with it on.
    state, _ = decide_alert(None, score=10.0, now=0.0, stage="active", settings=policy)
    assert decide_alert(state, score=60.0, now=60.0, stage="active", settings=policy)[1] is None
    default = policy_settings(ScorerSettings(scorer_sharp_rise_points=25))
    state, _ = decide_alert(None, score=10.0, now=0.0, stage="active", settings=default)
    assert decide_alert(state, score=60.0, now=60.0, stage="active", settings=default)[1] == (
        "sharp_rise"
    )

    # A child process (the learning process) reads the same settings from its environment.
    for name, value in env_for(settings).items():
        monkeypatch.setenv(name, value)
    assert load_settings(ScorerSettings).scorer_bands_by_stage == {"new": {"high": 80.0}}

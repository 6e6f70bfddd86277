"""Settings of the scorer worker and the risk API (``CHURNWATCH_SCORER_*``, ``..._API_*``)."""

from __future__ import annotations

import json
import socket
from typing import Annotated, Any, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import NoDecode

from services.common.settings import CommonSettings
from services.scorer.core.segments import STAGES

BAND_KEYS = ("medium", "high", "critical", "rearm_below")


class ScorerSettings(CommonSettings):
    scorer_group: str = Field(
        "churnwatch-scorer", description="Kafka consumer group (Faust app id)"
    )
    scorer_worker_name: str = Field(
        default_factory=socket.gethostname,
        description="names this worker's model checkpoint; keep it stable across restarts",
    )
    scorer_metrics_port: int = Field(8002, ge=0, le=65535, description="0 disables /metrics")
    scorer_session_timeout_s: float = Field(
        10.0,
        ge=6,
        le=300,
        description="a worker silent this long (crashed) loses its partitions to the others",
    )
    scorer_batch_size: int = Field(2000, ge=1, description="events per micro-batch at most")
    scorer_batch_within_s: float = Field(
        0.0,
        ge=0,
        description="after a batch's first records, wait up to this long for more (adds to "
        "alert latency); 0 = take what has arrived: under load batches are full anyway",
    )
    scorer_commit_every_s: float = Field(
        1.0,
        ge=0,
        description="commit the consumed offsets at most this often (a crash redelivers up "
        "to this much, idempotently); 0 = after every micro-batch",
    )
    scorer_rescore_every_s: float = Field(
        60.0,
        ge=0,
        description="re-score a user whose new events are only ordinary activity "
        "at most this often (events that can raise risk always re-score); 0 = every batch",
    )
    scorer_rescore_spread: float = Field(
        0.5,
        ge=0,
        le=4,
        description="each user's re-score interval is longer by a fixed share of this "
        "(from the user id), so users first seen together do not all come due together",
    )
    scorer_winback_window_days: float = Field(
        14.0, gt=0, description="active again within this many days of a win-back decision = won"
    )
    scorer_silent_snapshot_days: int = Field(
        7,
        ge=1,
        description="a user re-scored only because time passed gets a label snapshot "
        "at most this often",
    )
    scorer_snapshot_every_days: int = Field(
        7,
        ge=1,
        description="an active user gets a label snapshot at most this often, like a silent "
        "one (each pending snapshot costs ~55 bytes of Redis until its label resolves; "
        "1 = one per scored day)",
    )
    scorer_clock: Literal["live", "replay"] = Field(
        "live", description="live: wall clock; replay: the stream's event time"
    )
    scorer_lateness_s: float = Field(48 * 3600, ge=0, description="late events accepted")
    scorer_sweep_interval_s: float = Field(
        60.0, gt=0, description="how often silent users are re-scored and labels resolved"
    )
    scorer_model: Literal["logreg", "forest"] = "logreg"
    scorer_learner: Literal["process", "inline"] = Field(
        "process",
        description="where a live worker resolves and learns its labels: process = in a "
        "child process while the worker goes on scoring (the same model, a fifth of its CPU "
        "freed; logreg only); inline = on the worker's own loop (a replay and a forest always "
        "learn inline)",
    )
    scorer_checkpoint_every: int = Field(1000, ge=1, description="checkpoint every N learns")
    scorer_checkpoint_interval_s: float = Field(60.0, gt=0, description="... or every T seconds")
    scorer_horizon_days: int = Field(14, ge=1, description="predict churn within H days")
    scorer_inactivity_days: int = Field(30, ge=1, description="no activity for N days = churned")
    scorer_label_equal_delay: bool = Field(
        False,
        description="survivors' labels wait horizon + inactivity days, like churners' can "
        "(no class skew in what the model has learned so far; slower)",
    )
    scorer_band_medium: int = Field(40, ge=0, le=100)
    scorer_band_high: int = Field(65, ge=0, le=100)
    scorer_band_critical: int = Field(85, ge=0, le=100)
    scorer_rearm_below: int = Field(50, ge=0, le=100, description="hysteresis: re-arm under this")
    scorer_cooldown_s: float = Field(
        7 * 86400, ge=86400, description="at most one alert per window (alert ids are per day)"
    )
    scorer_sharp_rise_points: float = Field(
        25.0,
        ge=0,
        le=100,
        description="a rise of this many score points within SHARP_RISE_DAYS alerts from "
        "medium up; 0 = off",
    )
    scorer_sharp_rise_days: float = Field(1.0, gt=0, description="the sharp-rise window")
    scorer_bands_by_stage: Annotated[dict[str, dict[str, float]], NoDecode] = Field(
        default_factory=dict,
        description="per lifecycle stage, the band thresholds that differ from the ones above, "
        'as JSON: {"new": {"high": 75, "critical": 90}} (keys: medium, high, critical, '
        "rearm_below); empty = none",
    )
    scorer_user_ttl_days: int = Field(
        400, ge=1, description="a user silent for this long costs no memory any more"
    )
    scorer_long_silent_every_days: int = Field(
        7,
        ge=0,
        description="past inactivity + horizon days of silence, re-score (and snapshot) a "
        "silent user this often until its state expires; 0 = stop re-scoring there",
    )

    @field_validator("scorer_bands_by_stage", mode="before")
    @classmethod
    def _bands_json(cls, value: Any) -> Any:
        # Read here, not by the settings source, so that an empty variable (a ConfigMap
        # entry left blank) means "none" and bad JSON says so in one line.
        if not isinstance(value, str):
            return value
        if not value.strip():
            return {}
        try:
            return json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"not valid JSON ({exc})") from None

    @model_validator(mode="after")
    def _check_bands(self) -> ScorerSettings:
        """Refuse thresholds the policy cannot use at start, naming the variables."""
        problems = []
        default = self.band_thresholds()
        for stage, keys in self.scorer_bands_by_stage.items():
            if stage not in STAGES:
                problems.append(f"unknown stage {stage!r} (stages: {', '.join(STAGES)})")
            if unknown := sorted(set(keys) - set(BAND_KEYS)):
                problems.append(f"stage {stage!r}: unknown key(s) {', '.join(unknown)}")
        staged = [s for s in self.scorer_bands_by_stage if s in STAGES]
        for stage, bands in [("", default), *((s, self.band_thresholds(s)) for s in staged)]:
            where = f" for stage {stage!r} (CHURNWATCH_SCORER_BANDS_BY_STAGE)" if stage else ""
            if not 0 <= bands["medium"] <= bands["high"] <= bands["critical"] <= 100:
                problems.append(
                    "CHURNWATCH_SCORER_BAND_MEDIUM <= _HIGH <= _CRITICAL <= 100 must hold" + where
                )
            if bands["rearm_below"] > bands["high"]:
                problems.append("CHURNWATCH_SCORER_REARM_BELOW must not exceed _HIGH" + where)
        if problems:
            raise ValueError("; ".join(dict.fromkeys(problems)))
        return self

    def band_thresholds(self, stage: str = "") -> dict[str, float]:
        """The band floors and re-arm level of ``stage`` (the defaults for ``""``).

        >>> ScorerSettings(scorer_bands_by_stage={"new": {"high": 75}}).band_thresholds("new")
        {'medium': 40.0, 'high': 75.0, 'critical': 85.0, 'rearm_below': 50.0}
        """
        default = {
            "medium": float(self.scorer_band_medium),
            "high": float(self.scorer_band_high),
            "critical": float(self.scorer_band_critical),
            "rearm_below": float(self.scorer_rearm_below),
        }
        return default | self.scorer_bands_by_stage.get(stage, {})


class ApiSettings(CommonSettings):
    api_host: str = "127.0.0.1"
    api_port: int = Field(8001, ge=1, le=65535)
    api_retry_after_s: int = Field(
        5,
        ge=1,
        description="Retry-After (whole seconds) on every 503: Redis, the key store, or Kafka "
        "for the alert stream unavailable",
    )

"""The scorer's wiring: the store it needs, and its clock, core and scorer built from settings.

:class:`~services.scorer.runtime.Runtime` calls these once, on the worker's
event loop (Redis asyncio client), the first time the batch handler asks for
its scorer; nothing connects at import time.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from services.common.clock import Clock, EventTimeClock, WallClock
from services.common.redis_client import async_redis
from services.scorer.adapters.redis_store import RedisUserStore
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings
from services.scorer.core.labels import LabelSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.policy import PolicySettings, Thresholds
from services.scorer.core.river_pipeline import ModelSettings
from services.scorer.core.segments import RfmQuantiles, SegmentSettings
from services.scorer.labelling import SnapshotStore
from services.scorer.outcome import UserStore
from services.scorer.pipeline import BatchScorer
from services.scorer.replay_mode import ReplayScorer, Sweep
from services.scorer.scoring import ScoringCore

DAY = 86_400.0


class ScorerStore(UserStore, SnapshotStore, Protocol):
    """Everything the runtime asks of its store (``RedisUserStore``, ``MemoryUserStore``)."""

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]: ...

    async def outbox(self) -> list[bytes]: ...

    async def published(self, alert_ids: Sequence[str]) -> None: ...

    async def save_quality(self, worker: str, data: bytes) -> None: ...

    async def checkpoint_request(self) -> bytes | str | None: ...

    async def checkpoint_done(self, request: bytes | str) -> None: ...

    async def model_request(self, worker: str) -> bytes | None: ...

    async def model_request_done(self, worker: str, request: bytes, answer: bytes) -> None: ...

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None: ...

    async def newest_checkpoint(
        self, *, besides: str
    ) -> tuple[str, bytes, bytes | None] | None: ...

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None: ...


def make_clock(settings: ScorerSettings) -> Clock:
    if settings.scorer_clock == "replay":
        return EventTimeClock(allowed_lateness_s=0.0)
    return WallClock()


def make_core(
    settings: ScorerSettings,
    model: ChurnModel | None = None,
    quantiles: RfmQuantiles | None = None,
) -> ScoringCore:
    return ScoringCore(
        model=model or ChurnModel(ModelSettings(kind=settings.scorer_model)),
        quantiles=quantiles or RfmQuantiles(),
        policy=policy_settings(settings),
        segments=SegmentSettings(),
        labels=LabelSettings(
            horizon_days=settings.scorer_horizon_days,
            inactivity_days=settings.scorer_inactivity_days,
            snapshot_ttl_days=settings.scorer_horizon_days + settings.scorer_inactivity_days + 1,
            equal_delay=settings.scorer_label_equal_delay,
        ),
        silent_snapshot_days=settings.scorer_silent_snapshot_days,
        snapshot_every_days=settings.scorer_snapshot_every_days,
    )


def policy_settings(settings: ScorerSettings) -> PolicySettings:
    """The alert policy the settings describe (checked when the settings were built).

    >>> p = policy_settings(ScorerSettings(scorer_bands_by_stage={"new": {"high": 75}},
    ...                                    scorer_sharp_rise_points=0))
    >>> p.thresholds_for("new").high, p.thresholds_for("active").high, p.sharp_rise
    (75.0, 65.0, False)
    """
    return PolicySettings(
        thresholds=Thresholds(**settings.band_thresholds()),
        by_stage={
            stage: Thresholds(**settings.band_thresholds(stage))
            for stage in settings.scorer_bands_by_stage
        },
        cooldown_days=settings.scorer_cooldown_s / DAY,
        sharp_rise=settings.scorer_sharp_rise_points > 0,
        sharp_rise_points=settings.scorer_sharp_rise_points,
        sharp_rise_days=settings.scorer_sharp_rise_days,
    )


def make_store(settings: ScorerSettings) -> RedisUserStore:
    """The Redis store the settings name (its client connects when first used)."""
    s = settings
    client = async_redis(
        s.redis_url, cluster=s.redis_cluster, socket_timeout=5, health_check_interval=10
    )
    return RedisUserStore(
        client,
        prefix=s.key_prefix,
        user_ttl_s=s.scorer_user_ttl_days * int(DAY),
        worker=s.scorer_worker_name,
        index_shards=s.redis_index_shards,
    )


def make_scorer(
    settings: ScorerSettings,
    *,
    store: UserStore,
    core: ScoringCore,
    clock: Clock,
    sweep: Sweep,
) -> BatchScorer:
    """The live batch scorer, or in replay mode the :class:`ReplayScorer`, which calls
    ``sweep`` at its event-time ticks."""
    s = settings
    features = FeatureSettings(lateness_s=int(s.scorer_lateness_s))
    if s.scorer_clock == "replay":
        replay = ReplayScorer(store=store, core=core, clock=clock, features=features)
        replay.sweep = sweep
        replay.interval = s.scorer_sweep_interval_s
        return replay
    return BatchScorer(
        store=store,
        core=core,
        clock=clock,
        features=features,
        rescore_every_s=s.scorer_rescore_every_s,
        rescore_spread=s.scorer_rescore_spread,
        winback_window_s=s.scorer_winback_window_days * DAY,
    )

"""The scorer's wiring: builds the adapters and the core from settings, once.

``bootstrap`` work happens on the worker's event loop (Redis asyncio client),
the first time the batch handler asks for it; nothing connects at import time.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence
from typing import Protocol

import orjson

from services.common.clock import Clock, EventTimeClock, WallClock
from services.common.errors import StoreUnavailable, UnreadableStored
from services.common.messages import ChurnAlert
from services.common.redis_client import async_redis
from services.scorer import metrics
from services.scorer.adapters.redis_store import RedisUserStore
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings
from services.scorer.core.labels import LabelSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.policy import PolicySettings, Thresholds
from services.scorer.core.quality import QualityTracker
from services.scorer.core.river_pipeline import ModelSettings
from services.scorer.core.segments import RfmQuantiles, SegmentSettings
from services.scorer.core.state_codec import decode_state
from services.scorer.labelling import ROUND_USERS, Learned, SnapshotStore, resolve_labels
from services.scorer.learner import InlineLearner, Learner, LearnerClosed, ProcessLearner
from services.scorer.pipeline import BatchScorer, Outcome, UserStore
from services.scorer.replay_mode import ReplayScorer
from services.scorer.scoring import ScoringCore, previous_stage, readable
from services.scorer.user_writes import user_write

log = logging.getLogger("churnwatch.scorer")
DAY = 86_400.0


class ScorerStore(UserStore, SnapshotStore, Protocol):
    """Everything the runtime asks of its store (``RedisUserStore``, ``MemoryUserStore``)."""

    async def silent_between(self, ranges: Sequence[tuple[float, float]]) -> list[str]: ...

    async def outbox(self) -> list[bytes]: ...

    async def published(self, alert_ids: Sequence[str]) -> None: ...

    async def save_quality(self, worker: str, data: bytes) -> None: ...

    async def checkpoint_request(self) -> bytes | str | None: ...

    async def checkpoint_done(self, request: bytes | str) -> None: ...

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None: ...

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
    thresholds = Thresholds(
        medium=settings.scorer_band_medium,
        high=settings.scorer_band_high,
        critical=settings.scorer_band_critical,
        rearm_below=settings.scorer_rearm_below,
    )
    return ScoringCore(
        model=model or ChurnModel(ModelSettings(kind=settings.scorer_model)),
        quantiles=quantiles or RfmQuantiles(),
        policy=PolicySettings(
            thresholds=thresholds, cooldown_days=max(1.0, settings.scorer_cooldown_s / DAY)
        ),
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


class Runtime:
    """The scorer's state and timers around one store.

    ``store``: the store to use instead of connecting to Redis, e.g. a
    :class:`~services.scorer.adapters.memory_store.MemoryUserStore` for an
    offline replay (``services.offline_replay``); the scorer code is the same.
    """

    def __init__(self, settings: ScorerSettings, *, store: ScorerStore | None = None) -> None:
        self.settings = settings
        self._given_store = store
        self.clock = make_clock(settings)
        self._scorer: BatchScorer | None = None
        self._lock = asyncio.Lock()
        # Held while users' state is read, changed and written: by a micro-batch and
        # by the live sweep's re-scoring, which would otherwise overwrite each other.
        self.state_lock = asyncio.Lock()
        self._last_sweep: float | None = None
        self._learned_since_checkpoint = 0
        self.quality = QualityTracker(threshold=settings.scorer_band_high / 100)
        self._last_checkpoint = time.monotonic()
        # A replay learns inside its batches, and a forest's pickle is too big to ship.
        in_child = settings.scorer_learner == "process" and settings.scorer_model == "logreg"
        live = settings.scorer_clock == "live"
        self.learner: Learner = ProcessLearner() if live and in_child else InlineLearner()
        self.label_users = ROUND_USERS  # users a learning round takes (see learn)
        self.sweep_chunk = 1000  # silent users re-scored and written together
        # Alerts of silent-user re-scores already stored, kept until a sweep returns them:
        # a sweep that fails part-way is run again, and must not drop the earlier ones.
        self._swept_alerts: list[ChurnAlert] = []

    def ready_scorer(self) -> BatchScorer | None:
        """The scorer once :meth:`scorer` has built it, else None (never waits)."""
        return self._scorer

    async def scorer(self) -> BatchScorer:
        async with self._lock:
            if self._scorer is None:
                self._scorer = await self._bootstrap()
            return self._scorer

    async def _bootstrap(self) -> BatchScorer:
        s = self.settings
        if self._given_store is not None:
            self.store: ScorerStore = self._given_store
        else:
            client = async_redis(
                s.redis_url, cluster=s.redis_cluster, socket_timeout=5, health_check_interval=10
            )
            self.store = RedisUserStore(
                client,
                prefix=s.key_prefix,
                user_ttl_s=s.scorer_user_ttl_days * int(DAY),
                snapshot_ttl_s=make_core(s).labels.snapshot_ttl_s,
                worker=s.scorer_worker_name,
                index_shards=s.redis_index_shards,
            )
        model = None
        saved = await self.store.load_checkpoint(s.scorer_worker_name)
        if saved:
            model = ChurnModel.from_bytes(saved)
            log.info("model restored", extra={"model_version": model.version})
        rfm = await self.store.load_checkpoint(s.scorer_worker_name, part="rfm")
        quantiles = RfmQuantiles.from_dict(orjson.loads(rfm)) if rfm else None
        self.core = make_core(s, model, quantiles)
        features = FeatureSettings(lateness_s=int(s.scorer_lateness_s))
        if s.scorer_clock == "replay":
            replay = ReplayScorer(
                store=self.store, core=self.core, clock=self.clock, features=features
            )
            replay.sweep = self.sweep_at
            replay.interval = s.scorer_sweep_interval_s
            return replay
        return BatchScorer(
            store=self.store,
            core=self.core,
            clock=self.clock,
            features=features,
            rescore_every_s=s.scorer_rescore_every_s,
            rescore_spread=s.scorer_rescore_spread,
            winback_window_s=s.scorer_winback_window_days * DAY,
        )

    async def after_batch(self, outcome: Outcome) -> None:
        """The batch's alerts are on Kafka: empty them from the outbox."""
        await self.store.published([a.alert_id for a in outcome.alerts])

    async def unpublished(self) -> Outcome:
        """Alerts a previous run stored as raised but may not have published."""
        await self.scorer()
        pending = [ChurnAlert.from_dict(orjson.loads(raw)) for raw in await self.store.outbox()]
        if pending:
            log.warning("republishing alerts from the outbox", extra={"alerts": len(pending)})
        return Outcome(alerts=pending)

    async def checkpoint(self) -> None:
        """Save the model (and its quality figures) under this worker's name."""
        if self._scorer is None:
            return
        name = self.settings.scorer_worker_name
        await self.store.save_checkpoint(name, self.core.model.to_bytes())
        rfm = orjson.dumps(self.core.quantiles.to_dict())
        await self.store.save_checkpoint(name, rfm, part="rfm")
        await self.store.save_quality(
            name,
            orjson.dumps(
                {
                    "model_version": self.core.model.version,
                    "saved_at": time.time(),
                    **self.quality.to_dict(),
                    "metrics": quality_figures(self.quality),
                    # The prior and the learner judged on the same labels: why the blend is so.
                    "blend": self.core.model.blend_quality(),
                }
            ),
        )
        self._learned_since_checkpoint = 0
        metrics.CHECKPOINT_AGE.set(0)
        self._last_checkpoint = time.monotonic()

    def close(self) -> None:
        """Stop the learning process (after the last checkpoint)."""
        self.learner.close()

    async def checkpoint_if_requested(self) -> None:
        """Checkpoint when ``P:control:checkpoint`` holds a request id; ack it in ``...:done``."""
        if self._scorer is None:
            return
        request = await self.store.checkpoint_request()
        if request is not None:
            await self.checkpoint()
            await self.store.checkpoint_done(request)

    async def learn(self, now: float) -> Learned:
        """Resolve the labels that are due and learn from them; checkpoint every N learns.

        One round takes at most ``label_users`` users (their snapshots are read
        and shipped to the learning process together); while a round finds
        that many due, the next starts at once, so a backlog (a restart, a wave
        of survivals, one label per ten events at full load) drains now rather
        than ``label_users`` users per sweep interval. Every round moves its
        users' due time past ``now``, so the rounds end.
        """
        await self.scorer()
        done = Learned()
        more = True
        while more:
            try:
                learned = await resolve_labels(
                    self.store,
                    model=self.core.model,
                    quality=self.quality,
                    now=now,
                    settings=self.core.labels,
                    limit=self.label_users,
                    learner=self.learner,
                )
            except LearnerClosed:
                log.info("stopping: the labels due are left for the next start")
                break
            metrics.LABEL_ROUNDS.inc()
            await self._learned(learned)
            done.positives += learned.positives
            done.negatives += learned.negatives
            done.unreadable += learned.unreadable
            more = learned.more
        metrics.CHECKPOINT_AGE.set(time.monotonic() - self._last_checkpoint)
        return done

    async def _learned(self, learned: Learned) -> None:
        """Count one round's labels, log what was unreadable, checkpoint every N learns."""
        if learned.unreadable:
            metrics.UNREADABLE.labels("snapshots").inc(len(learned.unreadable))
            uid, error = learned.unreadable[0]
            log.warning(
                "label snapshots unreadable, left in place and tried again in a day",
                extra={"users": len(learned.unreadable), "user_id": uid, "error": error},
            )
        if learned.total:
            metrics.LABELS.labels("1").inc(learned.positives)
            metrics.LABELS.labels("0").inc(learned.negatives)
            for name, value in quality_figures(self.quality).items():
                if value is not None:
                    metrics.QUALITY.labels(name).set(value)
            metrics.QUALITY.labels("prior_weight").set(self.core.model.weight_prior)
            self._learned_since_checkpoint += learned.total
            if self._learned_since_checkpoint >= self.settings.scorer_checkpoint_every:
                await self.checkpoint()

    async def sweep(self) -> Outcome:
        """The live timer: sweep at the clock's now, the re-scoring under ``state_lock``.

        Learning needs no lock: it only reads features, and drops the oldest
        snapshots, which a concurrent write keeps in order.
        """
        now = self.clock.now()
        started = time.perf_counter()
        async with self.state_lock:
            out = await self.rescore_silent(now)
        learning = time.perf_counter()
        metrics.SWEEP_SECONDS.labels("rescore").observe(learning - started)
        try:
            await self.learn(now)
            metrics.SWEEP_SECONDS.labels("learn").observe(time.perf_counter() - learning)
        except StoreUnavailable as exc:
            # The re-scores are stored and their alerts go out with ``out``; the labels
            # stay due (nothing is trimmed before it is learned): the next sweep goes on.
            metrics.STORE_ERRORS.inc()
            log.warning(
                "labels left for the next sweep: redis unavailable", extra={"error": str(exc)}
            )
        return out

    async def sweep_at(self, now: float) -> Outcome:
        """Re-score the silent users and learn, at ``now`` (replay mode calls this from
        inside a batch, where the lock is already held)."""
        out = await self.rescore_silent(now)
        await self.learn(now)
        return out

    async def rescore_silent(self, now: float) -> Outcome:
        """Re-score users whose recency crossed a day boundary since the last sweep.

        For each whole number of days k, the users whose last activity lies in
        [previous sweep - k days, now - k days) just turned k days silent: one
        range query per k on the last-activity index (pipelined), never a scan.
        """
        scorer = await self.scorer()
        prev = self._last_sweep
        out = Outcome()
        if prev is None or now <= prev:
            self._last_sweep = now
            return out
        s = self.settings
        marks = silence_marks(
            s.scorer_inactivity_days + s.scorer_horizon_days,
            every=s.scorer_long_silent_every_days,
            until=s.scorer_user_ttl_days,
        )
        ranges = [(prev - k * DAY, now - k * DAY) for k in marks]
        users = list(dict.fromkeys(await self.store.silent_between(ranges)))
        for start in range(0, len(users), self.sweep_chunk):
            chunk = users[start : start + self.sweep_chunk]
            rows = await self.store.load(chunk)
            writes, alerts = [], []
            for uid in chunk:
                row, dropped = readable(rows[uid])
                out.unreadable.update(dropped)
                if row.features is None:
                    continue
                try:
                    state = decode_state(row.features)
                except UnreadableStored as exc:  # counted with the rest (app.count_unreadable)
                    out.unreadable["state"] += 1
                    log.warning("silent user skipped", extra={"user_id": uid, "error": str(exc)})
                    continue
                result = self.core.score_user(uid, state, row, now=now, silent=True)
                previous = previous_stage(row.record, dropped)
                writes.append(user_write(uid, state, result, previous=previous))
                if result.alert is not None:
                    alerts.append(result.alert)
            if writes:
                try:
                    await scorer.store.save(writes)
                finally:
                    scorer.epoch += 1  # users scored ahead from rows read before are scored again
            self._swept_alerts += alerts
            out.users += len(writes)
        # Only now: a sweep that failed part-way (Redis) is run again over the same span,
        # rather than skipping its users until their next mark (a day later at best).
        self._last_sweep = now
        out.alerts, self._swept_alerts = self._swept_alerts, []
        return out


def silence_marks(daily_until: int, *, every: int, until: int) -> list[int]:
    """The whole days of silence at which the sweep re-scores a user.

    Every day up to ``daily_until`` (inactivity + horizon: where alerts and
    labels move), then every ``every`` days while the state lives (``until``
    days; ``every=0`` stops at ``daily_until``). So a long-silent user's score
    says how long the silence has lasted, not how it stood months ago, and its
    weekly snapshots ("still gone a horizon later?") show the model the long
    silences it is asked about (silent re-scores snapshot every
    ``silent_snapshot_days`` anyway).

    >>> silence_marks(5, every=7, until=30)
    [1, 2, 3, 4, 5, 12, 19, 26]
    >>> silence_marks(5, every=0, until=30)
    [1, 2, 3, 4, 5]
    """
    marks = list(range(1, daily_until + 1))
    if every > 0:
        marks += range(daily_until + every, until, every)
    return marks


def quality_figures(quality: QualityTracker) -> dict[str, float | None]:
    return {
        "roc_auc": quality.roc_auc,
        "log_loss": quality.log_loss,
        "precision": quality.precision,
        "recall": quality.recall,
    }

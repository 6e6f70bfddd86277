"""The scorer's state and timers around one store: its scorer, outbox, checkpoints, sweeps.

``bootstrap`` work happens on the worker's event loop (Redis asyncio client),
the first time the batch handler asks for it; nothing connects at import time.
What it builds comes from :mod:`~services.scorer.wiring`; what a sweep does,
from :mod:`~services.scorer.sweeps`; the checkpoints and model loads, from its
base class :class:`~services.scorer.model_checkpoints.ModelCheckpoints`.
"""

from __future__ import annotations

import asyncio
import logging
import time

import orjson

from services.common.errors import StoreUnavailable
from services.common.messages import ChurnAlert
from services.scorer import metrics
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.core.segments import RfmQuantiles
from services.scorer.labelling import ROUND_USERS, Learned
from services.scorer.learner import InlineLearner, Learner, ProcessLearner
from services.scorer.model_checkpoints import ModelCheckpoints
from services.scorer.pipeline import BatchScorer, Outcome
from services.scorer.sweeps import SilentSweep, count_labels, learn_rounds
from services.scorer.wiring import ScorerStore, make_clock, make_core, make_scorer, make_store

log = logging.getLogger("churnwatch.scorer")


class Runtime(ModelCheckpoints):
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
        # Held by a learning round and by a model load, which would undo each other.
        self.model_lock = asyncio.Lock()
        self._silent = SilentSweep()  # the silent users' re-scoring, and what it keeps
        self._learned_since_checkpoint = 0
        self.quality = QualityTracker(threshold=settings.scorer_band_high / 100)
        self._last_checkpoint = time.monotonic()
        # A replay learns inside its batches, and a forest's pickle is too big to ship.
        in_child = settings.scorer_learner == "process" and settings.scorer_model == "logreg"
        live = settings.scorer_clock == "live"
        self.learner: Learner = ProcessLearner() if live and in_child else InlineLearner()
        self.label_users = ROUND_USERS  # users a learning round takes (see learn)
        self.sweep_chunk = 1000  # silent users re-scored and written together

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
            self.store = make_store(s)
        model = None
        saved = await self.store.load_checkpoint(s.scorer_worker_name)
        rfm = await self.store.load_checkpoint(s.scorer_worker_name, part="rfm")
        if saved:
            model = ChurnModel.from_bytes(saved)
            log.info("model restored", extra={"model_version": model.version})
        else:
            model, rfm = await self._borrowed_model(rfm)
        quantiles = RfmQuantiles.from_dict(orjson.loads(rfm)) if rfm else None
        self.core = make_core(s, model, quantiles)
        return make_scorer(
            s, store=self.store, core=self.core, clock=self.clock, sweep=self.sweep_at
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

    def close(self) -> None:
        """Stop the learning process (after the last checkpoint)."""
        self.learner.close()

    async def learn(self, now: float) -> Learned:
        """Resolve the labels that are due and learn from them; checkpoint every N learns.

        A round takes at most ``label_users`` users; rounds follow each other while
        they find that many due (:func:`~services.scorer.sweeps.learn_rounds`).
        """
        await self.scorer()
        return await learn_rounds(
            self.store,
            self.core,
            quality=self.quality,
            learner=self.learner,
            now=now,
            limit=self.label_users,
            each=self._learned,
            lock=self.model_lock,
        )

    async def _learned(self, learned: Learned) -> None:
        """Count one round's labels, log what was unreadable, checkpoint every N learns."""
        count_labels(learned, self.quality, self.core.model)
        if learned.total:
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
        """Re-score users whose recency crossed a day boundary since the last sweep
        (:class:`~services.scorer.sweeps.SilentSweep`)."""
        scorer = await self.scorer()
        return await self._silent.run(
            now,
            settings=self.settings,
            store=self.store,
            scorer=scorer,
            core=self.core,
            chunk=self.sweep_chunk,
        )

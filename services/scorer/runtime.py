"""The scorer's state and timers around one store: its scorer, outbox, checkpoints, sweeps.

``bootstrap`` work happens on the worker's event loop (Redis asyncio client),
the first time the batch handler asks for it; nothing connects at import time.
What it builds comes from :mod:`~services.scorer.wiring`; what a sweep does,
from :mod:`~services.scorer.sweeps`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from services.common.errors import StoreUnavailable
from services.common.messages import ChurnAlert
from services.scorer import metrics
from services.scorer.adapters.redis_worker import request_id
from services.scorer.config import ScorerSettings
from services.scorer.core.checkpoint import CheckpointError
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.core.segments import RfmQuantiles
from services.scorer.labelling import ROUND_USERS, Learned
from services.scorer.learner import InlineLearner, Learner, ProcessLearner
from services.scorer.pipeline import BatchScorer, Outcome
from services.scorer.sweeps import SilentSweep, count_labels, learn_rounds, quality_figures
from services.scorer.wiring import ScorerStore, make_clock, make_core, make_scorer, make_store

log = logging.getLogger("churnwatch.scorer")


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

    async def _borrowed_model(self, rfm: bytes | None) -> tuple[ChurnModel | None, bytes | None]:
        """A worker's first start (a new name: a scale-up, a new deployment): the model
        another worker saved last, rather than a cold one; none of the right kind, a
        fresh model."""
        found = await self.store.newest_checkpoint(besides=self.settings.scorer_worker_name)
        if found is None:
            return None, rfm
        source, data, theirs = found
        try:
            model = ChurnModel.from_bytes(data)
        except CheckpointError as exc:
            log.warning("another worker's model unreadable: a fresh one", extra={"error": str(exc)})
            return None, rfm
        if model.settings.kind != self.settings.scorer_model:
            return None, rfm
        log.info(
            "no checkpoint of its own: starting from another worker's model",
            extra={"from_worker": source, "model_version": model.version},
        )
        return model, theirs

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
        self._last_checkpoint = time.monotonic()

    def checkpoint_age_s(self) -> float:
        """Seconds since this worker last saved its model (or started)."""
        return time.monotonic() - self._last_checkpoint

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

    async def load_model_if_requested(self) -> None:
        """Take the model ``churnwatch scorer model load`` left for this worker.

        It replaces the worker's model between two learning rounds (waiting for the
        round in hand), its quality figures start over, and it is
        checkpointed at once; the answer in ``P:control:model:{<worker>}:done`` says
        which version the worker runs now, or why it refused the model.
        """
        if self._scorer is None:
            return
        name = self.settings.scorer_worker_name
        request = await self.store.model_request(name)
        if request is None:
            return
        answer: dict[str, Any] = {"request": request_id(request), "worker": name}
        try:
            model = ChurnModel.from_bytes(request)
            if model.settings.kind != self.settings.scorer_model:
                raise CheckpointError(
                    f"a {model.settings.kind} model, and this worker runs "
                    f"CHURNWATCH_SCORER_MODEL={self.settings.scorer_model}"
                )
        except CheckpointError as exc:
            log.error("model load refused", extra={"error": str(exc)})
            answer["error"] = str(exc)
        else:
            async with self.model_lock:
                before = self.core.model.version
                self.core.model.adopt(model)
                # Progressive validation starts over: its figures judge the model in use.
                self.quality.reset()
                metrics.QUALITY.clear()
            await self.checkpoint()
            log.warning("model loaded", extra={"model_version": model.version, "was": before})
            metrics.MODEL_LOADS.inc()
            answer |= {"model_version": model.version, "was": before}
        await self.store.model_request_done(name, request, orjson.dumps(answer))

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

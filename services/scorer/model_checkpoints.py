"""The scorer worker's model kept and replaced: its checkpoints, and the models it is handed.

:class:`ModelCheckpoints`, the base class of :class:`~services.scorer.runtime.Runtime`,
saves the worker's model, rfm quantiles and quality figures under its name;
answers the requests of ``churnwatch scorer model``
(:mod:`~services.scorer.model_command`): checkpoint now, run this model; and,
for a worker with no checkpoint of its own, finds the model another worker
saved last (its own checkpoint, the runtime's bootstrap reads back). Apart
from the runtime's scorer, outbox and sweeps, which call on it at a first
start and every ``scorer_checkpoint_every`` labels learned: this is the
model's way to and from the store and the operators; the rest is how the
worker scores and learns.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson

from services.scorer import metrics
from services.scorer.adapters.redis_worker import request_id
from services.scorer.config import ScorerSettings
from services.scorer.core.checkpoint import CheckpointError
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.pipeline import BatchScorer
from services.scorer.scoring import ScoringCore
from services.scorer.sweeps import quality_figures
from services.scorer.wiring import ScorerStore

log = logging.getLogger("churnwatch.scorer")


class ModelCheckpoints:
    """A worker's model saved, borrowed and loaded (see the module doc).

    Its attributes are set by :class:`~services.scorer.runtime.Runtime`, in
    ``__init__`` and when it builds its scorer.
    """

    settings: ScorerSettings
    store: ScorerStore
    core: ScoringCore
    quality: QualityTracker
    model_lock: asyncio.Lock
    _scorer: BatchScorer | None
    _learned_since_checkpoint: int
    _last_checkpoint: float

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

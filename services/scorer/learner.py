"""Where a live worker's model learns its resolved labels: in a child process.

Learning a label costs the worker's event loop ~50-90 µs (prepare, scale, the
logistic step, calibration, the blend's bookkeeping): a fifth of its CPU when
users are active daily (one label per ten events), time in which no event is
scored. :class:`ProcessLearner` hands each chunk of labels to a child process
that holds a copy of the model, and takes back the model it learned: the labels
are learned in the same order, one chunk after the other, so the model is the
one the worker would have learned itself (the same version, weights and scores),
while the loop goes on scoring events with the model as it was before the chunk.

The child's copy is seeded with the worker's model when they differ (the
first chunk, after a restart or a failure) and otherwise kept: a chunk ships
only its labels (~2 ms for 500) and the learned model back (~45 kB, ~1.5 ms to
load). If the child dies, the chunk is learned on the loop instead, and the
next chunk starts a new child.

:class:`InlineLearner` learns on the loop: a replay uses it (each sweep is
awaited inside its batch, there is nothing to overlap), and so do the fast tests.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from services.scorer import metrics
from services.scorer.core.model import ChurnModel

log = logging.getLogger("churnwatch.scorer")

Labels = list[tuple[dict[str, float], int]]


class Learner(Protocol):
    async def learn(self, model: ChurnModel, labels: Labels) -> None:
        """Learn ``labels`` (features at the snapshot, y) into ``model``, in order."""
        ...

    def close(self) -> None: ...


class InlineLearner:
    """Learns on the caller's thread."""

    async def learn(self, model: ChurnModel, labels: Labels) -> None:
        for i, (x, y) in enumerate(labels, 1):
            model.learn(x, y)
            if i % 500 == 0:
                await asyncio.sleep(0)  # a sweep's labels must not hold up the batches

    def close(self) -> None:
        pass


class ProcessLearner:
    """Learns in one child process; the worker's model takes what it learned."""

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lineage: bytes | None = None  # of the child's model, when it is the worker's

    def start(self) -> None:
        """Start the child now rather than at the first labels (it imports River: ~1 s)."""
        if self._pool is None:
            # Spawned, not forked: the worker runs threads (Faust, the metrics server).
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
            )
            self._pool.submit(_child_ready)

    async def learn(self, model: ChurnModel, labels: Labels) -> None:
        if not labels:
            return
        self.start()
        assert self._pool is not None
        seed = None if self._lineage == model.lineage else model.to_bytes()
        self._lineage = None  # until the child's answer says what it holds
        try:
            learned = await asyncio.get_running_loop().run_in_executor(
                self._pool, _child_learn, seed, labels
            )
        except BrokenProcessPool as exc:
            metrics.LEARNER_FAILURES.inc()
            log.error(
                "learning process died; learning this chunk in the worker, a new process next",
                extra={"error": str(exc), "labels": len(labels)},
            )
            self.close()
            await InlineLearner().learn(model, labels)
            return
        model.adopt(ChurnModel.from_bytes(learned))
        self._lineage = model.lineage

    def close(self) -> None:
        pool, self._pool, self._lineage = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# The child's side. Its model lives in this module's global, for the child's lifetime.
_model: ChurnModel | None = None


def _child_init() -> None:
    # Ctrl-C reaches the whole process group: the worker shuts the child down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def _child_ready() -> None:
    """Nothing: submitted at start so that the child is spawned and has imported the model."""


def _child_learn(seed: bytes | None, labels: Labels) -> bytes:
    global _model
    if seed is not None:
        _model = ChurnModel.from_bytes(seed)
    assert _model is not None, "the worker seeds the child's first chunk"
    for x, y in labels:
        _model.learn(x, y)
    return _model.to_bytes()

"""Where a live worker resolves and learns its labels: in a child process.

Resolving a label (decoding its snapshot, deciding y) and learning it (prepare,
scale, the logistic step, calibration, the blend's bookkeeping) cost the
worker's event loop ~60-100 µs: a fifth of its CPU when users are active daily
(one label per ten events), time in which no event is scored.
:class:`ProcessLearner` hands a sweep's snapshot rows to a child process that
holds a copy of the model, and takes back the labels' outcome and the model it
learned. The labels are learned in the same order, one sweep after the other,
so the model is the one the worker would have learned itself (the same
version, weights and scores), while the loop goes on scoring events with the
model as it was before the sweep.

The child's copy is seeded with the worker's model when they differ (the
first sweep, after a restart or a failure) and otherwise kept: a sweep ships
its rows (~2 ms for 10,000 users) and the logistic model back (~45 kB, ~1.5 ms
to load; a forest is learned inline, its pickle is tens of MB). If the child
dies, the sweep is learned on the loop instead, and the next one starts a new
child; if the worker dies, the kernel stops the child.

:class:`InlineLearner` learns on the loop, yielding between chunks of users: a
replay uses it (each sweep is awaited inside its batch, there is nothing to
overlap), and so does ``CHURNWATCH_SCORER_LEARNER=inline``.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import multiprocessing
import os
import signal
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Protocol

from services.common.errors import ChurnwatchError
from services.scorer import metrics
from services.scorer.core.labels import LabelSettings
from services.scorer.core.model import ChurnModel
from services.scorer.labelling import Resolved, SnapshotRows, learn_chunk, learn_chunks

log = logging.getLogger("churnwatch.scorer")


class Learner(Protocol):
    async def resolve(
        self, model: ChurnModel, chunks: list[SnapshotRows], *, now: float, settings: LabelSettings
    ) -> Resolved:
        """Resolve the chunks' labels at ``now`` and learn them into ``model``, in order."""
        ...

    def close(self) -> None: ...


class InlineLearner:
    """Learns on the caller's loop."""

    def __init__(self) -> None:
        self._closed = False

    async def resolve(
        self, model: ChurnModel, chunks: list[SnapshotRows], *, now: float, settings: LabelSettings
    ) -> Resolved:
        resolved = Resolved()
        for rows in chunks:
            learn_chunk(model, rows, now=now, settings=settings, into=resolved)
            await asyncio.sleep(0)  # a sweep's labels must not hold up the batches
            if self._closed:
                # After the final checkpoint: what was learned would be trimmed but not
                # saved. Untrimmed, the labels are learned again at the next start.
                raise LearnerClosed("the worker is stopping")
        return resolved

    def close(self) -> None:
        """A sweep still learning stops at its next chunk with :class:`LearnerClosed`."""
        self._closed = True


class LearnerClosed(ChurnwatchError):
    """The worker is stopping: labels are left for its next start."""


class ProcessLearner:
    """Learns in one child process; the worker's model takes what it learned.

    For the logistic model only: a forest's pickle grows to tens of MB within
    thousands of labels, too much to ship back every sweep.
    """

    def __init__(self) -> None:
        self._pool: ProcessPoolExecutor | None = None
        self._lineage: bytes | None = None  # of the child's model, when it is the worker's
        self._closed = False

    def start(self) -> None:
        """Start the child (at the first labels; it imports River, ~1 s, while the worker's
        loop goes on)."""
        if self._closed:
            raise LearnerClosed("the worker is stopping")
        if self._pool is None:
            # Spawned, not forked: the worker runs threads (Faust, the metrics server).
            self._pool = ProcessPoolExecutor(
                max_workers=1,
                mp_context=multiprocessing.get_context("spawn"),
                initializer=_child_init,
                initargs=(os.getpid(),),
            )
            self._pool.submit(_child_ready)

    async def resolve(
        self, model: ChurnModel, chunks: list[SnapshotRows], *, now: float, settings: LabelSettings
    ) -> Resolved:
        if not chunks:
            return Resolved()
        self.start()
        assert self._pool is not None
        seed = None if self._lineage == model.lineage else model.to_bytes()
        self._lineage = None  # until the child's answer says what it holds
        try:
            learned, resolved = await asyncio.get_running_loop().run_in_executor(
                self._pool, _child_resolve, seed, chunks, now, settings
            )
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if self._closed and not (task is not None and task.cancelling()):
                # close() cancelled the sweep while it still queued for the child.
                raise LearnerClosed("the worker is stopping") from None
            raise
        except BrokenProcessPool as exc:
            if self._closed:
                raise LearnerClosed("the worker is stopping") from exc
            metrics.LEARNER_FAILURES.inc()
            log.error(
                "learning process died; learning these labels in the worker, a new process next",
                extra={"error": str(exc), "users": sum(map(len, chunks))},
            )
            self._stop_pool()
            return await InlineLearner().resolve(model, chunks, now=now, settings=settings)
        if self._closed:
            # After the final checkpoint: what was learned would be trimmed but not saved.
            raise LearnerClosed("the worker is stopping")
        model.adopt(ChurnModel.from_bytes(learned))
        self._lineage = model.lineage
        return resolved

    def close(self) -> None:
        """Stop the child; a sweep still waiting on it raises :class:`LearnerClosed`."""
        self._closed = True
        self._stop_pool()

    def _stop_pool(self) -> None:
        pool, self._pool, self._lineage = self._pool, None, None
        if pool is not None:
            pool.shutdown(wait=False, cancel_futures=True)


# The child's side. Its model lives in this module's global, for the child's lifetime.
_model: ChurnModel | None = None
_PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _child_init(parent: int) -> None:
    # Ctrl-C reaches the whole process group: the worker shuts the child down itself.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # A worker killed outright (SIGKILL, OOM) cannot: the kernel stops the child then.
    with contextlib.suppress(OSError, AttributeError):  # not Linux: no such guard
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:  # the worker died before the line above
        os._exit(0)


def _child_ready() -> None:
    """Nothing: submitted at start so that the child is spawned and has imported the model."""


def _child_resolve(
    seed: bytes | None, chunks: list[SnapshotRows], now: float, settings: LabelSettings
) -> tuple[bytes, Resolved]:
    global _model
    if seed is not None:
        _model = ChurnModel.from_bytes(seed)
    assert _model is not None, "the worker seeds the child's first sweep"
    resolved = learn_chunks(_model, chunks, now=now, settings=settings)
    return _model.to_bytes(), resolved

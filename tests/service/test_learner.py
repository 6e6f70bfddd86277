"""The learning process: the worker's model ends as if it had learned every label itself."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator

import pytest

from services.scorer import metrics
from services.scorer.core.model import FEATURES, ChurnModel
from services.scorer.learner import InlineLearner, Labels, ProcessLearner

VECTORS = [{k: float(i + j) for j, k in enumerate(FEATURES)} for i in range(5)]


def labels(n: int, seed: int) -> Labels:
    rnd = random.Random(seed)
    return [({k: rnd.uniform(0, 30) for k in FEATURES}, int(rnd.random() < 0.4)) for _ in range(n)]


def same_model(a: ChurnModel, b: ChurnModel) -> None:
    """Same history, weights, calibration, blend and scores (pickles differ in their memo)."""
    assert (a.version, a.learned, a.positives) == (b.version, b.learned, b.positives)
    for step in ("StandardScaler", "LogisticRegression"):
        assert learned_state(a.pipeline[step]) == learned_state(b.pipeline[step])
    assert (a.calibrator.n, a.calibrator.pos) == (b.calibrator.n, b.calibrator.pos)
    assert (list(a.judged), a.prior_share) == (list(b.judged), b.prior_share)
    assert [a.score(x) for x in VECTORS] == [b.score(x) for x in VECTORS]


def learned_state(step: object) -> dict[str, object]:
    return {
        k: dict(v) if isinstance(v, dict) else v
        for k, v in vars(step).items()
        if k in ("counts", "means", "vars", "_weights", "intercept")
    }


@pytest.fixture
def learner() -> Iterator[ProcessLearner]:
    learner = ProcessLearner()
    yield learner
    learner.close()


def test_the_process_learns_what_the_worker_would_have_learned(
    learner: ProcessLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    chunks = [labels(700, seed) for seed in range(3)]
    expected, model = ChurnModel(), ChurnModel()
    seeds: list[int] = []
    to_bytes = ChurnModel.to_bytes

    def counted(self: ChurnModel) -> bytes:
        seeds.append(self.learned)
        return to_bytes(self)

    async def run() -> None:
        for chunk in chunks:
            await InlineLearner().learn(expected, chunk)
            monkeypatch.setattr(ChurnModel, "to_bytes", counted)
            await learner.learn(model, chunk)
            monkeypatch.setattr(ChurnModel, "to_bytes", to_bytes)
            same_model(model, expected)

    asyncio.run(run())
    # Seeded once, with the fresh model: the child kept its copy for the next chunks.
    assert seeds == [0]
    assert model.learned == 2100


def test_a_model_changed_in_the_worker_is_sent_to_the_process_again(
    learner: ProcessLearner,
) -> None:
    expected, model = ChurnModel(), ChurnModel()

    async def run() -> None:
        for seed, where in enumerate(["process", "worker", "process"]):
            chunk = labels(300, seed)
            await InlineLearner().learn(expected, chunk)
            await (learner if where == "process" else InlineLearner()).learn(model, chunk)
        same_model(model, expected)

    asyncio.run(run())


def test_a_dead_process_loses_no_labels_and_is_replaced(learner: ProcessLearner) -> None:
    expected, model = ChurnModel(), ChurnModel()
    failures = metrics.LEARNER_FAILURES._value.get()

    async def run() -> None:
        await learner.learn(model, labels(200, 1))
        assert learner._pool is not None
        for pid in list(learner._pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        await learner.learn(model, labels(200, 2))  # learned in the worker
        await learner.learn(model, labels(200, 3))  # a new process, seeded again
        for seed in (1, 2, 3):
            await InlineLearner().learn(expected, labels(200, seed))
        same_model(model, expected)

    asyncio.run(run())
    assert metrics.LEARNER_FAILURES._value.get() == failures + 1
    assert learner._pool is not None


def test_a_chunk_that_fails_in_the_process_leaves_the_worker_model_as_it_was(
    learner: ProcessLearner,
) -> None:
    """The child learned part of the failed chunk: its copy is not the worker's any more."""
    expected, model = ChurnModel(), ChurnModel()
    broken: Labels = [*labels(50, 1), ({"recency_days": "soon"}, 1)]  # type: ignore[dict-item]

    async def run() -> None:
        await learner.learn(model, labels(100, 0))
        with pytest.raises(TypeError):
            await learner.learn(model, broken)
        await learner.learn(model, labels(100, 2))
        for seed in (0, 2):
            await InlineLearner().learn(expected, labels(100, seed))
        same_model(model, expected)

    asyncio.run(run())

"""The learning process: the worker's model ends as if it had learned every label itself."""

from __future__ import annotations

import asyncio
import os
import random
import signal
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from services.common.events import UserEvent
from services.scorer import metrics
from services.scorer.core.features import FeatureSettings, update_features
from services.scorer.core.labels import LabelSettings, take_snapshot
from services.scorer.core.model import FEATURES, ChurnModel
from services.scorer.core.records import encode_snapshot
from services.scorer.core.state_codec import encode_state
from services.scorer.labelling import Resolved, SnapshotRows
from services.scorer.learner import InlineLearner, ProcessLearner

DAY = 86_400.0
NOW = 1_780_000_000.0
SETTINGS = LabelSettings(horizon_days=14, inactivity_days=30)
VECTORS = [{k: float(i + j) for j, k in enumerate(FEATURES)} for i in range(5)]


def rows(users: int, seed: int) -> SnapshotRows:
    """Users with two snapshots whose horizon has ended: active since (y=0 each) or
    silent past the inactivity window (y=1 each)."""
    rnd = random.Random(seed)
    out: SnapshotRows = {}
    for i in range(users):
        uid = f"u{seed}-{i}"
        churned = rnd.random() < 0.4
        last = NOW - (40 if churned else 1) * DAY
        login = UserEvent(f"e-{uid}", uid, "login", datetime.fromtimestamp(last, UTC))
        state = update_features(None, login, settings=FeatureSettings())
        snaps = [
            take_snapshot(
                uid,
                {k: rnd.uniform(0, 30) for k in FEATURES},
                taken_at=NOW - days * DAY,
                raw=0.5,
                risk=rnd.random(),
            )
            for days in (60, 50)
        ]
        out[uid] = (encode_state(state), [encode_snapshot(s) for s in snaps])
    return out


def sweeps(n: int, seed: int) -> list[SnapshotRows]:
    return [rows(n, seed * 10 + k) for k in range(2)]


async def inline(model: ChurnModel, chunks: list[SnapshotRows]) -> Resolved:
    return await InlineLearner().resolve(model, chunks, now=NOW, settings=SETTINGS)


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
    expected, model = ChurnModel(), ChurnModel()
    seeds: list[int] = []
    to_bytes = ChurnModel.to_bytes

    def counted(self: ChurnModel) -> bytes:
        seeds.append(self.learned)
        return to_bytes(self)

    async def run() -> None:
        for sweep in range(3):
            chunks = sweeps(300, sweep)
            want = await inline(expected, chunks)
            monkeypatch.setattr(ChurnModel, "to_bytes", counted)
            got = await learner.resolve(model, chunks, now=NOW, settings=SETTINGS)
            monkeypatch.setattr(ChurnModel, "to_bytes", to_bytes)
            assert got == want
            same_model(model, expected)

    asyncio.run(run())
    # Seeded once, with the fresh model: the child kept its copy for the next sweeps.
    assert seeds == [0]
    assert model.learned == 3 * 2 * 300 * 2
    assert 0 < model.positives < model.learned


def test_a_model_changed_in_the_worker_is_sent_to_the_process_again(
    learner: ProcessLearner,
) -> None:
    expected, model = ChurnModel(), ChurnModel()

    async def run() -> None:
        for sweep, where in enumerate(["process", "worker", "process"]):
            chunks = sweeps(100, sweep)
            await inline(expected, chunks)
            if where == "process":
                await learner.resolve(model, chunks, now=NOW, settings=SETTINGS)
            else:
                await inline(model, chunks)
        same_model(model, expected)

    asyncio.run(run())


def test_a_dead_process_loses_no_labels_and_is_replaced(learner: ProcessLearner) -> None:
    expected, model = ChurnModel(), ChurnModel()
    failures = metrics.LEARNER_FAILURES._value.get()

    async def run() -> None:
        await learner.resolve(model, sweeps(100, 1), now=NOW, settings=SETTINGS)
        assert learner._pool is not None
        for pid in list(learner._pool._processes):
            os.kill(pid, signal.SIGKILL)
        await asyncio.sleep(0.5)
        # Learned in the worker, then in a new process, seeded again.
        for seed in (2, 3):
            got = await learner.resolve(model, sweeps(100, seed), now=NOW, settings=SETTINGS)
            assert len(got.judged) == 400
        for seed in (1, 2, 3):
            await inline(expected, sweeps(100, seed))
        same_model(model, expected)

    asyncio.run(run())
    assert metrics.LEARNER_FAILURES._value.get() == failures + 1
    assert learner._pool is not None


def test_a_sweep_that_fails_in_the_process_leaves_the_worker_model_as_it_was(
    learner: ProcessLearner,
) -> None:
    """The child learned part of the failed sweep: its copy is not the worker's any more."""
    expected, model = ChurnModel(), ChurnModel()
    broken = sweeps(100, 1)
    uid = list(broken[1])[-1]
    broken[1][uid] = (broken[1][uid][0], [b"not a snapshot"])

    async def run() -> None:
        await learner.resolve(model, sweeps(100, 0), now=NOW, settings=SETTINGS)
        with pytest.raises(ValueError):  # the bad snapshot, in the child
            await learner.resolve(model, broken, now=NOW, settings=SETTINGS)
        await learner.resolve(model, sweeps(100, 2), now=NOW, settings=SETTINGS)
        for seed in (0, 2):
            await inline(expected, sweeps(100, seed))
        same_model(model, expected)

    asyncio.run(run())

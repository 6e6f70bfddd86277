"""The learning process: the worker's model ends as if it had learned every label itself."""

from __future__ import annotations

import asyncio
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime

import pytest

from services.common.errors import StoreUnavailable
from services.common.events import UserEvent
from services.scorer import metrics
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings, update_features
from services.scorer.core.labels import LabelSettings, take_snapshot
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.core.river_pipeline import FEATURES
from services.scorer.core.snapshot_codec import encode_snapshot
from services.scorer.core.state_codec import encode_state
from services.scorer.labelling import Learned, Resolved, SnapshotRows, resolve_labels
from services.scorer.learner import InlineLearner, LearnerClosed, ProcessLearner
from services.scorer.runtime import Runtime

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
    broken[1][uid] = None  # type: ignore[assignment]  # a row that is no row: a bug

    async def run() -> None:
        await learner.resolve(model, sweeps(100, 0), now=NOW, settings=SETTINGS)
        with pytest.raises(TypeError):  # raised in the child, after it learned the rest
            await learner.resolve(model, broken, now=NOW, settings=SETTINGS)
        await learner.resolve(model, sweeps(100, 2), now=NOW, settings=SETTINGS)
        for seed in (0, 2):
            await inline(expected, sweeps(100, seed))
        same_model(model, expected)

    asyncio.run(run())


class FlakyStore:
    """Snapshot rows in memory; the first ``keep_snapshots`` fails like a Redis outage."""

    def __init__(self, rows: SnapshotRows) -> None:
        self.rows = rows
        self.failures = 1

    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]:
        return [uid for uid, (_, snaps) in self.rows.items() if snaps][:limit]

    async def load_snapshots(self, user_ids: list[str]) -> SnapshotRows:
        return {uid: self.rows[uid] for uid in user_ids}

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        if self.failures:
            self.failures -= 1
            raise StoreUnavailable("Redis write failed: connection refused")
        for uid, (dropped, _) in remaining.items():
            features, snaps = self.rows[uid]
            self.rows[uid] = (features, snaps[dropped:])


def test_a_redis_outage_after_learning_waits_instead_of_learning_the_sweep_again(
    learner: ProcessLearner, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(asyncio, "sleep", _no_wait)
    store = FlakyStore({**rows(300, 1), **rows(300, 2)})
    model, quality = ChurnModel(), QualityTracker()

    async def run() -> tuple[Learned, Learned]:
        first = await resolve_labels(
            store, model=model, quality=quality, now=NOW, settings=SETTINGS, learner=learner
        )
        again = await resolve_labels(
            store, model=model, quality=quality, now=NOW, settings=SETTINGS, learner=learner
        )
        return first, again

    first, again = asyncio.run(run())
    assert (first.total, again.total) == (1200, 0)
    assert model.learned == 1200 and sum(quality.counts.values()) == 1200
    assert store.failures == 0 and not any(snaps for _, snaps in store.rows.values())


class KeepingStore(FlakyStore):
    """Snapshot rows in memory that record when each user's remaining snapshots are due."""

    def __init__(self, rows: SnapshotRows) -> None:
        super().__init__(rows)
        self.failures = 0
        self.due: dict[str, float | None] = {}

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        await super().keep_snapshots(remaining)
        self.due.update({uid: due for uid, (_, due) in remaining.items()})


def test_unreadable_snapshots_and_states_are_left_for_later_and_the_rest_learn(
    learner: ProcessLearner,
) -> None:
    """Corrupt, or a newer version's format after a rollback: those users' snapshots stay
    where they are, due again a day later, and every other label is learned."""
    good = rows(200, 3)
    store = KeepingStore(dict(good))
    bad_snapshot, bad_state = list(good)[5], list(good)[150]
    features, snaps = good[bad_snapshot]
    store.rows[bad_snapshot] = (features, [snaps[0], b"\x02 not a snapshot"])
    store.rows[bad_state] = (b"\x95\x05\x01\x02\x03\x04", good[bad_state][1])  # format 5
    model, expected = ChurnModel(), ChurnModel()

    async def run() -> Learned:
        learned = await resolve_labels(
            store,
            model=model,
            quality=QualityTracker(),
            now=NOW,
            settings=SETTINGS,
            learner=learner,
        )
        rest = {uid: row for uid, row in good.items() if uid not in (bad_snapshot, bad_state)}
        await inline(expected, [rest])
        return learned

    learned = asyncio.run(run())
    assert learned.total == 2 * 198
    assert [uid for uid, _ in learned.unreadable] == [bad_snapshot, bad_state]
    assert "label snapshot" in learned.unreadable[0][1]
    assert "unknown format 5" in learned.unreadable[1][1]
    same_model(model, expected)
    for uid in (bad_snapshot, bad_state):
        assert len(store.rows[uid][1]) == 2 and store.due[uid] == NOW + DAY
    set_aside = {uid for uid, _ in learned.unreadable}
    assert not any(snaps for uid, (_, snaps) in store.rows.items() if uid not in set_aside)


_sleep = asyncio.sleep


async def _no_wait(delay: float, *args: object) -> None:
    await _sleep(0)


def test_a_live_worker_learns_in_a_process_a_replay_and_a_forest_inline() -> None:
    def learner(**settings: str) -> type:
        return type(Runtime(ScorerSettings(**settings)).learner)  # type: ignore[arg-type]

    assert learner() is ProcessLearner
    assert learner(scorer_learner="inline") is InlineLearner
    assert learner(scorer_clock="replay") is InlineLearner
    assert learner(scorer_model="forest") is InlineLearner


def test_a_sweep_still_learning_when_the_worker_stops_leaves_its_labels(
    learner: ProcessLearner,
) -> None:
    """After the final checkpoint, what the child learned would be trimmed but never saved."""
    model = ChurnModel()

    async def run() -> None:
        await learner.resolve(model, sweeps(50, 0), now=NOW, settings=SETTINGS)
        before = model.version
        sweep = asyncio.ensure_future(
            learner.resolve(model, sweeps(1000, 1), now=NOW, settings=SETTINGS)
        )
        await asyncio.sleep(0)  # the sweep runs up to its wait on the child: rows sent
        learner.close()
        with pytest.raises(LearnerClosed):
            await sweep
        assert model.version == before
        with pytest.raises(LearnerClosed):  # and no new child
            await learner.resolve(model, sweeps(50, 2), now=NOW, settings=SETTINGS)
        assert learner._pool is None

    asyncio.run(run())


PARENT = """
import asyncio, sys, time
from tests.service.test_learner import NOW, SETTINGS, sweeps
from services.scorer.core.model import ChurnModel
from services.scorer.learner import ProcessLearner

learner = ProcessLearner()
asyncio.run(learner.resolve(ChurnModel(), sweeps(10, 0), now=NOW, settings=SETTINGS))
print(*learner._pool._processes, flush=True)
time.sleep(60)
"""


def test_a_worker_killed_outright_takes_its_learning_process_with_it() -> None:
    parent = subprocess.Popen(
        [sys.executable, "-c", PARENT], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    assert parent.stdout is not None
    child = int(parent.stdout.readline())
    assert _alive(child)
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(child) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(child)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(") ")[1][0] != "Z"  # a zombie is dead, not yet reaped
    except FileNotFoundError:
        return False


def test_the_checkpoint_age_keeps_growing_while_no_checkpoint_is_saved() -> None:
    """The gauge is read at each scrape: during a Redis outage no checkpoint and no
    learn succeeds, and ChurnwatchCheckpointStale must still see the age grow."""
    from prometheus_client import REGISTRY

    from services.scorer.app import create_app

    settings = ScorerSettings(scorer_learner="inline")
    runtime = Runtime(settings)
    create_app(settings, runtime)

    def age() -> float:
        value = REGISTRY.get_sample_value("churnwatch_model_checkpoint_age_seconds")
        assert value is not None
        return value

    assert age() < 60
    runtime._last_checkpoint -= 1000  # as if every checkpoint since had failed
    assert age() >= 1000

"""A replay in one process: the scorer's replay-mode code on an in-memory store.

:func:`replay_in_process` does what ``churnwatch replay`` does between Kafka and
Redis, without them: the events, in event-time order, go in micro-batches of
``scorer_batch_size`` to the scorer's own :class:`~services.scorer.runtime.Runtime`
and :class:`~services.scorer.replay_mode.ReplayScorer` (event-time clock, sweeps
and label learning at event-time ticks), exactly as the worker's batch handler
hands them over, but on a :class:`~services.scorer.adapters.memory_store.MemoryUserStore`.
At each cut it takes the model as a checkpoint (``to_bytes`` round trip) and
scores every user with :func:`services.replay_scores.score_rows`, as the replay does.

Replay mode is independent of batching by design (``replay_mode``), so this
gives the replay's scores; ``tests/e2e/test_replay.py`` checks that on real
Kafka and Redis (the same scores, and the same alerts naming the same model
versions, i.e. the same labels learned in the same order). It is for quality
checks that are run many times (``churnwatch bench cdnow --inner``): one
CPU-bound process, no broker.
What it leaves out is transport: alerts are kept in a list, not published.

The model sees a replay only through ``learn(features, y)``, in the order labels
resolve, and ``score(features)`` at the cuts; neither depends on the model (the
snapshots, their labels and the store's order do not). So with ``record=True``
the replay keeps that label stream and every user's vector at each cut, and
:func:`relearn` gives, for any :class:`ModelSettings`, exactly the scores a
whole replay with that model would give, in seconds instead of minutes
(``tests/service/test_offline_replay.py`` checks it against the replay). A
change of features, labels or snapshots needs a new replay.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from services.common.messages import ChurnAlert, Record
from services.common.settings import load_settings
from services.replay_scores import score_rows
from services.replay_worker import REPLAY_SCORER, say
from services.scorer.adapters.memory_store import MemoryUserStore
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.river_pipeline import ModelSettings
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.scorer.runtime import Runtime
from services.scorer.wiring import policy_settings

REPLAY_OVERRIDES = REPLAY_SCORER | {"scorer_worker_name": "offline-replay"}


@dataclass
class OfflineReplay:
    """What :func:`replay_in_process` returns: score rows per cut, the models, counts."""

    scores: dict[float, list[dict[str, Any]]]
    models: dict[float, ChurnModel]
    events: int
    alerts: list[ChurnAlert]
    dead: int
    # With ``record=True``: every label learned, in order (``models[cut].learned`` of
    # them before a cut); and each user's feature vector at each cut.
    labels: list[tuple[dict[str, float], int]] = field(default_factory=list)
    vectors: dict[float, dict[str, dict[str, float]]] = field(default_factory=dict)


def replay_settings(**overrides: Any) -> ScorerSettings:
    """The scorer's settings from the environment (``CHURNWATCH_SCORER_*``), in replay mode.

    >>> s = replay_settings()
    >>> s.scorer_clock, s.scorer_sweep_interval_s, s.scorer_batch_size
    ('replay', 3600.0, 1000)
    """
    return load_settings(ScorerSettings, **(REPLAY_OVERRIDES | overrides))


def replay_in_process(
    lines: Sequence[tuple[float, bytes]],
    *,
    cuts: Sequence[float],
    settings: ScorerSettings | None = None,
    progress: Callable[[str], None] | None = None,
    record: bool = False,
    model: bytes | None = None,
) -> OfflineReplay:
    """Replay ``lines`` ((event time, JSON line), as ``services.replay.read_sorted`` gives
    them) and score every user at each of ``cuts`` (events before a cut are in its scores).

    ``model``: a checkpoint the scorer starts from, as a worker restores its own
    (``churnwatch scorer model load``); by default a fresh model.
    """
    s = settings or replay_settings()
    if s.scorer_clock != "replay":
        raise ValueError("replay_in_process needs scorer_clock='replay'")
    store = MemoryUserStore(index_shards=s.redis_index_shards)
    if model is not None:
        store.checkpoints[s.scorer_worker_name] = model
    run = _replay(
        lines, cuts=sorted(cuts), settings=s, store=store, say=progress or say, record=record
    )
    return asyncio.run(run)


def relearn(
    labels: Sequence[tuple[dict[str, float], int]],
    vectors: dict[str, dict[str, float]],
    *,
    settings: ModelSettings | None = None,
) -> dict[str, float]:
    """Each user's risk (rounded as published) from a fresh model with ``settings`` that
    learned ``labels`` in order: what a replay with that model scores at the cut of
    ``vectors`` (see the module doc).

    >>> relearn([({"recency_days": 40.0}, 1)], {"u": {"recency_days": 40.0}})
    {'u': 0.970688}
    """
    model = ChurnModel(settings)
    for x, y in labels:
        model.learn(x, y)
    return {uid: round(model.score(v).risk, 6) for uid, v in vectors.items()}


async def _replay(
    lines: Sequence[tuple[float, bytes]],
    *,
    cuts: list[float],
    settings: ScorerSettings,
    store: MemoryUserStore,
    say: Callable[[str], None],
    record: bool,
) -> OfflineReplay:
    runtime = Runtime(settings, store=store)
    scorer = await runtime.scorer()
    out = OfflineReplay({}, {}, 0, [], 0)
    if record:
        model, learn = runtime.core.model, runtime.core.model.learn

        def recording(x: dict[str, float], y: bool | int) -> None:
            out.labels.append((dict(x), int(bool(y))))
            learn(x, y)

        model.learn = recording  # type: ignore[method-assign]  # this instance only
    size, done, shown = settings.scorer_batch_size, 0, 0
    for cut in cuts:
        end = done
        while end < len(lines) and lines[end][0] < cut:
            end += 1
        for start in range(done, end, size):
            batch = lines[start : min(start + size, end)]
            records = [
                Record(None, line, settings.topic_events, 0, offset)
                for offset, (_, line) in enumerate(batch, start=start)
            ]
            async with runtime.state_lock:  # as the worker's batch handler does
                outcome = await scorer.handle(records)
            await runtime.after_batch(outcome)
            out.alerts += outcome.alerts
            out.dead += len(outcome.dead)
            if start + size - shown >= 10_000:
                shown = start + size
                say(f"  scored {min(shown, len(lines)):,} / {len(lines):,} events")
        out.events += end - done
        done = end
        await runtime.checkpoint()
        name = settings.scorer_worker_name
        saved = await store.load_checkpoint(name)
        assert saved is not None
        model = ChurnModel.from_bytes(saved)
        stored = [(uid, u.features, u.record or None) for uid, u in store.users.items()]
        out.scores[cut] = score_rows(
            stored, as_of=cut, model=model, policy=policy_settings(settings)
        )
        out.models[cut] = model
        if record:
            out.vectors[cut] = {
                uid: to_vector(decode_state(u.features), cut) for uid, u in store.users.items()
            }
    return out

"""What the scorer's timer does between batches: re-score silent users, learn due labels.

:class:`~services.scorer.runtime.Runtime` runs both at each sweep (live, every
``scorer_sweep_interval_s`` of wall time; in replay mode, at ticks of event
time) and holds the locks, the checkpoints and the settings they run with.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable

from services.common.errors import UnreadableStored
from services.common.messages import ChurnAlert
from services.scorer import metrics
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.core.state_codec import decode_state
from services.scorer.labelling import Learned, SnapshotStore, resolve_labels
from services.scorer.learner import Learner, LearnerClosed
from services.scorer.outcome import Outcome
from services.scorer.pipeline import BatchScorer
from services.scorer.scoring import ScoringCore, previous_stage, readable
from services.scorer.user_writes import user_write
from services.scorer.wiring import DAY, ScorerStore

log = logging.getLogger("churnwatch.scorer")


class SilentSweep:
    """Re-scores users whose recency crossed a day boundary since the last sweep."""

    def __init__(self) -> None:
        self.last: float | None = None  # the ``now`` of the last sweep that ran to the end
        # Alerts of silent-user re-scores already stored, kept until a sweep returns them:
        # a sweep that fails part-way is run again, and must not drop the earlier ones.
        self.alerts: list[ChurnAlert] = []

    async def run(
        self,
        now: float,
        *,
        settings: ScorerSettings,
        store: ScorerStore,
        scorer: BatchScorer,
        core: ScoringCore,
        chunk: int,
    ) -> Outcome:
        """Re-score the users silent for a mark's days at ``now`` (:func:`silence_marks`),
        ``chunk`` users read and written together.

        For each whole number of days k, the users whose last activity lies in
        [previous sweep - k days, now - k days) just turned k days silent: one
        range query per k on the last-activity index (pipelined), never a scan.
        """
        prev = self.last
        out = Outcome()
        if prev is None or now <= prev:
            self.last = now
            return out
        s = settings
        marks = silence_marks(
            s.scorer_inactivity_days + s.scorer_horizon_days,
            every=s.scorer_long_silent_every_days,
            until=s.scorer_user_ttl_days,
        )
        ranges = [(prev - k * DAY, now - k * DAY) for k in marks]
        users = list(dict.fromkeys(await store.silent_between(ranges)))
        for start in range(0, len(users), chunk):
            part = users[start : start + chunk]
            rows = await store.load(part)
            writes, alerts = [], []
            for uid in part:
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
                result = core.score_user(uid, state, row, now=now, silent=True)
                previous = previous_stage(row.record, dropped)
                writes.append(user_write(uid, state, result, previous=previous))
                if result.alert is not None:
                    alerts.append(result.alert)
            if writes:
                try:
                    await scorer.store.save(writes)
                finally:
                    scorer.epoch += 1  # users scored ahead from rows read before are scored again
            self.alerts += alerts
            out.users += len(writes)
        # Only now: a sweep that failed part-way (Redis) is run again over the same span,
        # rather than skipping its users until their next mark (a day later at best).
        self.last = now
        out.alerts, self.alerts = self.alerts, []
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


async def learn_rounds(
    store: SnapshotStore,
    core: ScoringCore,
    *,
    quality: QualityTracker,
    learner: Learner,
    now: float,
    limit: int,
    each: Callable[[Learned], Awaitable[None]],
    lock: asyncio.Lock | None = None,
) -> Learned:
    """Resolve the labels that are due and learn from them, in rounds; ``each`` takes
    every round's labels as it ends. What all the rounds learned, summed.

    ``lock`` is held through each round (a model load waits for the round in hand,
    not for the whole backlog).

    One round takes at most ``limit`` users (their snapshots are read
    and shipped to the learning process together); while a round finds
    that many due, the next starts at once, so a backlog (a restart, a wave
    of survivals, one label per ten events at full load) drains now rather
    than ``limit`` users per sweep interval. Every round moves its
    users' due time past ``now``, so the rounds end.
    """
    done = Learned()
    more = True
    while more:
        try:
            async with lock or contextlib.nullcontext():
                learned = await resolve_labels(
                    store,
                    model=core.model,
                    quality=quality,
                    now=now,
                    settings=core.labels,
                    limit=limit,
                    learner=learner,
                )
        except LearnerClosed:
            log.info("stopping: the labels due are left for the next start")
            break
        metrics.LABEL_ROUNDS.inc()
        await each(learned)
        done.positives += learned.positives
        done.negatives += learned.negatives
        done.unreadable += learned.unreadable
        more = learned.more
    return done


def count_labels(learned: Learned, quality: QualityTracker, model: ChurnModel) -> None:
    """Count one round's labels and the model's quality in the metrics, log what was
    unreadable."""
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
        for name, value in quality_figures(quality).items():
            if value is not None:
                metrics.QUALITY.labels(name).set(value)
        metrics.QUALITY.labels("prior_weight").set(model.weight_prior)


def quality_figures(quality: QualityTracker) -> dict[str, float | None]:
    return {
        "roc_auc": quality.roc_auc,
        "log_loss": quality.log_loss,
        "precision": quality.precision,
        "recall": quality.recall,
    }

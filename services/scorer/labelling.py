"""Resolve delayed labels and learn from them (the timer's second job).

Users whose snapshots may have an answer are found with one range query on
``P:snapdue``. For each: an explicit churn, or an inactivity churn confirmed by
the clock, labels the pending snapshots (core.labels.resolve_on_churn); the rest
resolve by time (resolve_by_time). Every resolved snapshot is first scored for
progressive validation with the risk it had *when it was taken*, then learned.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

from services.common.errors import UnreadableStored
from services.scorer.core.labels import (
    LabelSettings,
    Snapshot,
    inactivity_churn_ts,
    resolve_by_time,
    resolve_on_churn,
)
from services.scorer.core.model import ChurnModel
from services.scorer.core.quality import QualityTracker
from services.scorer.core.snapshot_codec import decode_snapshot
from services.scorer.core.state_codec import state_times
from services.scorer.store_retry import until_stored

DAY = 86_400.0


class SnapshotStore(Protocol):
    async def users_with_labels_due(self, now: float, *, limit: int) -> list[str]: ...

    async def load_snapshots(
        self, user_ids: list[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]: ...

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None: ...


# Users whose due labels one learning round resolves: their snapshots are read 500 users
# a time and shipped to the learning process together (~2 ms for 10,000 users).
ROUND_USERS = 10_000


@dataclass
class Learned:
    positives: int = 0
    negatives: int = 0
    # Users whose snapshots (or state) could not be read, with the error: left in place.
    unreadable: list[tuple[str, str]] = field(default_factory=list)
    more: bool = False  # the sweep took as many users as its limit: more may be due

    @property
    def total(self) -> int:
        return self.positives + self.negatives


def label_user(
    snaps: list[Snapshot],
    *,
    churn_at: float,
    last_active: float,
    now: float,
    settings: LabelSettings,
) -> tuple[list[tuple[Snapshot, int]], list[Snapshot]]:
    """All labels one user's snapshots can get at ``now``, and the ones still waiting.

    >>> from services.scorer.core.labels import take_snapshot
    >>> s = LabelSettings()
    >>> snap = take_snapshot("u", {}, taken_at=0.0, raw=0.5, risk=0.5)
    >>> label_user([snap], churn_at=5 * DAY, last_active=4 * DAY, now=6 * DAY, settings=s)
    ([(Snapshot(user_id='u', taken_at=0.0, day=0, features={}, raw=0.5, risk=0.5), 1)], [])
    """
    resolved: list[tuple[Snapshot, int]] = []
    pending = snaps
    if churn_at and any(s.taken_at <= churn_at for s in pending):
        resolved += resolve_on_churn(pending, churn_at, settings=settings)
        pending = [s for s in pending if s.taken_at > churn_at]
    confirmed = inactivity_churn_ts(last_active, now, settings=settings) if last_active else None
    if confirmed is not None and pending:
        resolved += resolve_on_churn(pending, confirmed, settings=settings, departed_at=last_active)
        pending = [s for s in pending if s.taken_at > confirmed]
        # Taken after the churn was confirmed, in the same silence: the question is
        # whether the user stays gone through the horizon. Still silent at t + H: y=1.
        # (A return makes last_active newer, so they resolve like any other snapshot.)
        horizon = settings.horizon_days * DAY
        resolved += [(s, 1) for s in pending if now >= s.taken_at + horizon]
        pending = [s for s in pending if now < s.taken_at + horizon]
    by_time, pending = resolve_by_time(pending, now, settings=settings, last_seen=last_active)
    return resolved + by_time, pending


def next_due(
    pending: list[Snapshot], now: float, settings: LabelSettings, *, last_active: float
) -> float | None:
    """When a user's remaining snapshots can next get a label.

    Before the oldest one's horizon ends: at that end. After it, a snapshot
    waits for the user's inactivity churn to be confirmed (``last_active + N``),
    or for the user to come back; a return is seen at that same moment at the
    latest, so nothing is checked daily in between.

    >>> from services.scorer.core.labels import take_snapshot
    >>> s = LabelSettings(horizon_days=14, inactivity_days=30)
    >>> snap = take_snapshot("u", {}, taken_at=0.0, raw=0.5, risk=0.5)
    >>> next_due([snap], 1 * DAY, s, last_active=0.0) / DAY
    14.0
    >>> next_due([snap], 15 * DAY, s, last_active=0.0) / DAY
    30.0
    """
    if not pending:
        return None
    wait = settings.longest_wait_days if settings.equal_delay else settings.horizon_days
    first = min(s.taken_at for s in pending) + wait * DAY
    if first > now:
        return first
    confirm = last_active + (settings.inactivity_days or settings.horizon_days) * DAY
    return confirm if confirm > now else now + DAY


@dataclass
class Resolved:
    """What a sweep's labels gave: ``judged``, (risk when the snapshot was taken, y) in
    the order learned; ``keep``, per chunk of users, how many of each user's oldest
    snapshots resolved and when the rest are next due (``label_chunk``);
    ``unreadable``, the users whose snapshots or state could not be read, and why."""

    judged: list[tuple[float, int]] = field(default_factory=list)
    keep: list[dict[str, tuple[int, float | None]]] = field(default_factory=list)
    unreadable: list[tuple[str, str]] = field(default_factory=list)


SnapshotRows = dict[str, tuple[bytes | None, list[bytes]]]


class ChunkLearner(Protocol):
    async def resolve(
        self, model: ChurnModel, chunks: list[SnapshotRows], *, now: float, settings: LabelSettings
    ) -> Resolved: ...


def learn_chunk(
    model: ChurnModel,
    rows: SnapshotRows,
    *,
    now: float,
    settings: LabelSettings,
    into: Resolved,
) -> None:
    """Label these users' snapshots at ``now`` and learn the labels, each user's oldest
    first (pure: a learning process runs it on its copy of the model)."""
    labels: list[tuple[Snapshot, int]] = []
    into.keep.append(
        label_chunk(rows, now=now, settings=settings, labels=labels, unreadable=into.unreadable)
    )
    for snap, y in labels:
        model.learn(snap.features, y)
        into.judged.append((snap.risk, y))


def learn_chunks(
    model: ChurnModel, chunks: list[SnapshotRows], *, now: float, settings: LabelSettings
) -> Resolved:
    """:func:`learn_chunk` of every chunk, in order."""
    resolved = Resolved()
    for rows in chunks:
        learn_chunk(model, rows, now=now, settings=settings, into=resolved)
    return resolved


async def resolve_labels(
    store: SnapshotStore,
    *,
    model: ChurnModel,
    quality: QualityTracker,
    now: float,
    settings: LabelSettings,
    limit: int = ROUND_USERS,
    learner: ChunkLearner | None = None,
) -> Learned:
    """Resolve up to ``limit`` users' due labels at ``now`` and learn them, each user's in
    snapshot order (``learner``: where; default on this thread, in one go).

    The snapshots are read 500 users at a time and resolved and learned together
    (a learning process takes them in one round trip). Only then are the learned
    ones dropped: a sweep interrupted before (a stop, a failed learn, Redis gone)
    resolves them again at the next one, and one interrupted after waits for
    Redis to drop them, so nothing is learned or counted twice.
    """
    users = await store.users_with_labels_due(now, limit=limit)
    chunks = [await store.load_snapshots(users[i : i + 500]) for i in range(0, len(users), 500)]
    if learner is not None:
        resolved = await learner.resolve(model, chunks, now=now, settings=settings)
    else:
        resolved = learn_chunks(model, chunks, now=now, settings=settings)
    for risk, y in resolved.judged:
        quality.update(risk, y)
    positives = sum(y for _, y in resolved.judged)
    for remaining in resolved.keep:
        # Waited out here rather than failing the sweep: its labels are learned, and a
        # sweep run again would learn them twice.
        await until_stored(store.keep_snapshots, remaining)
    return Learned(
        positives, len(resolved.judged) - positives, resolved.unreadable, len(users) >= limit
    )


def label_chunk(
    rows: SnapshotRows,
    *,
    now: float,
    settings: LabelSettings,
    labels: list[tuple[Snapshot, int]],
    unreadable: list[tuple[str, str]],
) -> dict[str, tuple[int, float | None]]:
    """Append the labels these users' snapshots get at ``now`` to ``labels``; return, by
    user, how many of its oldest snapshots they were and when the rest are next due.

    A user whose snapshots or state cannot be read (corrupt, or a newer version's
    format after a rollback) goes to ``unreadable`` with the error; its snapshots
    stay, due again a day later (a roll forward reads them), and the rest learn.
    """
    remaining: dict[str, tuple[int, float | None]] = {}
    for uid, (features, raw_snaps) in rows.items():
        try:
            snaps = [decode_snapshot(s, uid) for s in raw_snaps]
            times = state_times(features) if features else None
        except UnreadableStored as exc:
            unreadable.append((uid, str(exc)))
            remaining[uid] = (0, now + DAY)
            continue
        if times is None:  # the user's state expired: nothing to learn against
            remaining[uid] = (len(snaps), None)
            continue
        last_seen, active_at, churn_at = times
        last_active = float(active_at or last_seen)
        resolved, pending = label_user(
            snaps,
            churn_at=float(churn_at),
            last_active=last_active,
            now=now,
            settings=settings,
        )
        labels += sorted(resolved, key=lambda pair: pair[0].taken_at)
        # Resolved snapshots are always the oldest ones: drop that many from the
        # head of the list (LTRIM), so a snapshot appended meanwhile survives.
        dropped = len(snaps) - len(pending)
        assert pending == snaps[dropped:], "labels resolve oldest first"
        remaining[uid] = (dropped, next_due(pending, now, settings, last_active=last_active))
    return remaining

"""A micro-batch's users: their events applied to their stored state, scored when due.

The CPU-bound middle of :meth:`BatchScorer.handle
<services.scorer.pipeline.BatchScorer.handle>` (and of its score-ahead), apart
from the reads, writes and scheduling around it: rows and events in, the
writes and the batch's counts out, no I/O.
"""

from __future__ import annotations

from services.common.errors import UnreadableStored
from services.common.events import UserEvent
from services.common.messages import Record, dead_record
from services.scorer.core.features import FeatureSettings, fold_events
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.outcome import Outcome
from services.scorer.rows import StoredUser, UserWrite
from services.scorer.scoring import (
    ScoringCore,
    needs_rescore,
    previous_stage,
    readable,
    rescore_interval,
)
from services.scorer.user_writes import cohort_marks, user_write, utc_day, winback_outcome


def score_users(
    by_user: dict[str, list[tuple[Record, UserEvent]]],
    rows: dict[str, StoredUser],
    now: float,
    out: Outcome,
    *,
    core: ScoringCore,
    features: FeatureSettings,
    rescore_every_s: float,
    rescore_spread: float,
    winback_window_s: float,
) -> list[UserWrite]:
    """Apply each user's events to their stored state and score those that need it:
    the writes, with late events, duplicates, erased users' events, bands, alerts
    and win-backs in ``out``.

    ``core``, ``features`` and the rest are the :class:`~services.scorer.pipeline.BatchScorer`'s.
    """
    writes: list[UserWrite] = []
    for uid, items in by_user.items():
        if rows[uid].erased:
            # Erased lately: a late or redelivered event must not bring the user back.
            out.erased += len(items)
            continue
        row, dropped = readable(rows[uid])
        if dropped:
            out.unreadable.update(dropped)
        try:
            before = decode_state(row.features) if row.features else None
        except UnreadableStored as exc:
            # Corrupt, or a newer version's format: this user's events wait in the
            # dead-letter topic, the state stays as it is, the other users go on.
            out.dead += [dead_record(record, exc, stage="scorer") for record, _ in items]
            out.unreadable["state"] += 1
            continue
        if len(items) > 1:
            items.sort(key=_event_time)
        folded = fold_events(before, [e for _, e in items], settings=features)
        out.duplicates += folded.duplicates
        if folded.late:
            record_of = {id(e): r for r, e in items}
            out.dead += [
                dead_record(record_of[id(e)], exc, stage="scorer") for e, exc in folded.late
            ]
        state = folded.state
        if state is None:
            continue
        if state is before:
            if not dropped:
                continue
            # Nothing new (duplicates, late events), but what readable() dropped is
            # replaced now: left as it is, it would be counted again at every batch.
            items = []
        out.newest_ts = max(out.newest_ts, float(state.last_seen))
        days = tuple(sorted({utc_day(int(e.ts // 86_400)) for _, e in items}))
        types = {e.type for _, e in items}
        outcome, counter = None, ""
        if row.winback is not None:
            outcome, counter = winback_outcome(
                row.winback, [e for _, e in items], now=now, window_s=winback_window_s
            )
            if outcome == "won":
                out.winbacks[counter] += 1
        every_s = rescore_interval(uid, rescore_every_s, rescore_spread)
        # A dropped record or policy is replaced now, not at the next re-score.
        if not dropped and not needs_rescore(row.policy, types, now, every_s=every_s):
            writes.append(
                UserWrite(
                    uid,
                    encode_state(state),
                    None,
                    None,
                    float(state.last_active or state.last_seen),
                    None,
                    active_days=days,
                    winback=outcome,
                    winback_counter=counter,
                    cohort_marks=cohort_marks(state, days),
                )
            )
            continue
        result = core.score_user(uid, state, row, now=now)
        out.bands[result.band] += 1
        write = user_write(
            uid, state, result, active_days=days, previous=previous_stage(row.record, dropped)
        )
        write.winback, write.winback_counter = outcome, counter
        writes.append(write)
        if result.alert is not None:
            out.alerts.append(result.alert)
    return writes


def _event_time(pair: tuple[Record, UserEvent]) -> float:
    return pair[1].ts

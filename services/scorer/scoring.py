"""Score one user: vector → segment → model → policy → alert, snapshot and record.

Pure: it reads the user's stored row and returns what to write. The model and
the RFM quantiles are the worker's own state, checkpointed together.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from services.common.errors import UnreadableStored
from services.common.messages import ChurnAlert, Reason, Segment
from services.scorer.core.features import UserState
from services.scorer.core.labels import LabelSettings, should_snapshot, take_snapshot
from services.scorer.core.model import ChurnModel
from services.scorer.core.policy import (
    PolicySettings,
    band_for,
    decide_alert,
    make_alert_id,
)
from services.scorer.core.policy_codec import decode_policy, encode_policy
from services.scorer.core.records import encode_record, record_stage
from services.scorer.core.segments import RfmQuantiles, SegmentSettings, lifecycle_stage, value_tier
from services.scorer.core.snapshot_codec import encode_snapshot
from services.scorer.core.vector import to_vector
from services.scorer.rows import ANY_STAGE, StoredUser


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every score on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class UserScore:
    risk: float
    policy: bytes
    record: bytes
    alert: ChurnAlert | None
    snapshot: bytes | None
    snapshot_day: int | None
    label_due: float | None = None
    band: str = "low"
    stage: str = ""


# Events that can raise a user's risk: they are always scored at once. Ordinary
# activity can only lower it (recency resets, frequency grows), so re-scoring a
# busy user on every batch buys nothing for alerts.
RISK_EVENTS = frozenset(
    {
        "payment_failed",
        "support_ticket",
        "complaint",
        "plan_downgraded",
        "subscription_cancelled",
        "account_deleted",
        "uninstall",
    }
)


def needs_rescore(policy: bytes | None, types: set[str], now: float, *, every_s: float) -> bool:
    """Whether this batch's events for a user call for a new score now.

    ``every_s`` is this user's own interval (:func:`rescore_interval`).

    >>> from services.scorer.core.policy import AlertState
    >>> state = encode_policy(AlertState("low", True, None, 10.0, 100.0))
    >>> needs_rescore(state, {"login"}, 130.0, every_s=60)
    False
    >>> needs_rescore(state, {"login", "payment_failed"}, 130.0, every_s=60)
    True
    >>> needs_rescore(state, {"login"}, 161.0, every_s=60)
    True
    >>> needs_rescore(None, {"login"}, 0, every_s=60)
    True
    """
    if policy is None or every_s <= 0 or not types.isdisjoint(RISK_EVENTS):
        return True
    last = decode_policy(policy)
    return last is None or now - last.last_score_ts >= every_s


def rescore_interval(user_id: str, every_s: float, spread: float) -> float:
    """``every_s`` stretched by a fixed fraction of ``spread`` that is this user's own.

    Users first scored in the same second (a deployment's first minute, a
    campaign's burst) would otherwise all come due again in the same second,
    and that wave of scores stalls every alert behind it. The fraction comes
    from the id, so a replay re-scores at the same moments.

    >>> rescore_interval("u1", 60.0, 0.0)
    60.0
    >>> [round(rescore_interval(u, 60.0, 0.5), 1) for u in ("u1", "u2", "u3")]
    [67.8, 85.7, 80.2]
    """
    return every_s * (1.0 + spread * zlib.crc32(user_id.encode()) / 2**32)


def previous_stage(record: bytes | None, dropped: list[str] | None = None) -> str | None:
    """The stage the stored record names; :data:`ANY_STAGE` if :func:`readable` dropped it."""
    return ANY_STAGE if dropped and "record" in dropped else record_stage(record)


def readable(row: StoredUser) -> tuple[StoredUser, list[str]]:
    """``row`` without its alert state or score record if either cannot be read, and
    which were dropped (``"policy"``, ``"record"``).

    Both are this scorer's own writes: unreadable means corrupt, or written in a
    newer version's format and read after a rollback. The user is then scored as
    the policy and the segments would score a user first seen by them: the
    hysteresis and cooldown start over (at most one alert more, which the
    notifier's consent and frequency limits still bound) and there is no previous
    stage. The write that follows replaces what could not be read.

    The record is checked as far as its stage (this runs for every user of every
    batch): a newer version's format or a damaged head is caught here; a binary
    record damaged past its head is refused by the API's full decode (a 500 for
    that user, left out of lists) and replaced at the user's next score.

    >>> row = StoredUser(b"state", b"[1]", b'{"stage": "new"}', None)
    >>> fixed, dropped = readable(row)
    >>> fixed.policy, fixed.record, dropped
    (None, b'{"stage": "new"}', ['policy'])
    """
    dropped = []
    try:
        decode_policy(row.policy)
    except UnreadableStored:
        dropped.append("policy")
    try:
        record_stage(row.record)
    except UnreadableStored:
        dropped.append("record")
    if not dropped:
        return row, dropped
    return replace(
        row,
        policy=None if "policy" in dropped else row.policy,
        record=None if "record" in dropped else row.record,
    ), dropped


class ScoringCore:
    def __init__(
        self,
        *,
        model: ChurnModel,
        quantiles: RfmQuantiles,
        policy: PolicySettings,
        segments: SegmentSettings,
        labels: LabelSettings,
        silent_snapshot_days: int = 7,
        snapshot_every_days: int = 1,
    ) -> None:
        self.silent_snapshot_days = silent_snapshot_days
        self.snapshot_every_days = snapshot_every_days
        self.model = model
        self.quantiles = quantiles
        self.policy = policy
        self.segments = segments
        self.labels = labels

    def score_user(
        self, user_id: str, state: UserState, row: StoredUser, *, now: float, silent: bool = False
    ) -> UserScore:
        """Score one user; ``silent`` marks a re-score by the sweep (no new event).

        A silent user's features change only by the passing of time: a label
        snapshot every ``silent_snapshot_days`` is enough to learn from them, and
        far cheaper than one a day.
        """
        vector = to_vector(state, now)
        stage = lifecycle_stage(
            vector, previous_stage=previous_stage(row.record), settings=self.segments
        )
        self.quantiles.update(vector)
        tier = value_tier(*self.quantiles.scores(vector))
        scored, explained = self.model.score_and_explain(vector, top=3)
        score = round(scored.risk * 100)
        prev = decode_policy(row.policy)
        policy_state, trigger = decide_alert(
            prev, score=score, now=now, stage=stage, settings=self.policy
        )
        band = band_for(score, self.policy, stage=stage)
        reasons = [
            Reason(r.feature, r.label, round(r.contribution, 4), round(r.value, 4))
            for r in explained
        ]
        version = self.model.version
        alert = None
        if trigger is not None:
            alert = ChurnAlert(
                alert_id=make_alert_id(user_id, band, trigger, now),
                user_id=user_id,
                risk=round(scored.risk, 6),
                score=score,
                band=band,
                trigger=trigger,
                segment=Segment(stage, tier),
                reasons=tuple(reasons),
                model_version=version,
                horizon_days=int(self.labels.horizon_days),
                occurred_at=datetime.fromtimestamp(now, UTC),
                previous_band=prev.band if prev else None,
                timezone=state.timezone,
            )
        snapshot = snapshot_day = None
        day = int(now // 86_400)
        if should_snapshot(row.snapshot_day, day, every_days=self.snapshot_every_days) and (
            not silent
            or row.snapshot_day is None
            or day - row.snapshot_day >= self.silent_snapshot_days
        ):
            snap = take_snapshot(user_id, vector, taken_at=now, raw=scored.raw, risk=scored.risk)
            snapshot, snapshot_day = encode_snapshot(snap), day
        record = encode_record(
            {
                "risk": round(scored.risk, 6),
                "score": score,
                "band": band,
                "stage": stage,
                "tier": tier,
                "reasons": [[r.feature, r.contribution, r.value] for r in reasons],
                "model_version": version,
                "updated_at": round(now, 3),
            }
        )
        # A churn event lets the user's pending labels resolve at the next sweep; a new
        # snapshot can resolve H days from now at the earliest.
        label_due = None
        if state.churn_at and state.churn_at >= now - self.labels.horizon_days * 86_400:
            label_due = now
        elif snapshot is not None:
            label_due = now + self.labels.horizon_days * 86_400
        return UserScore(
            scored.risk,
            encode_policy(policy_state),
            record,
            alert,
            snapshot,
            snapshot_day,
            label_due,
            band,
            stage,
        )

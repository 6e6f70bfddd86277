"""The score files of a replay: ``scores.csv`` and ``scores-<AS_OF>.csv``.

:func:`score_rows` scores users from their stored state as of a time, the same
way whether the replay went through Kafka and Redis (``services.replay``) or ran
in process (``services.offline_replay``); :func:`write_scores` writes the rows.
They are apart from the replay itself because the in-process replay and the
CDNOW benchmark use them without it.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from services.scorer.core.model import ChurnModel
from services.scorer.core.policy import PolicySettings, band_for
from services.scorer.core.records import decode_record
from services.scorer.core.segments import SegmentSettings, lifecycle_stage
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector

SCORE_COLUMNS = ("user_id", "as_of", "risk", "score", "band", "stage", "tier")


def score_rows(
    stored: Iterable[tuple[str, bytes | None, bytes | None]],
    *,
    as_of: float,
    model: ChurnModel,
    policy: PolicySettings | None = None,
) -> list[dict[str, Any]]:
    """Score rows (``SCORE_COLUMNS``) of users given as (id, feature state, score record).

    The replay's scores at an ``--as-of`` time, through Kafka and Redis or in
    process (``services.offline_replay``): the features as of then, scored by
    the model checkpointed then, banded by ``policy`` (the scorer's settings).
    Users without a feature state are left out.
    """
    policy, segments = policy or PolicySettings(), SegmentSettings()
    rows = []
    for uid, features, record in stored:
        if features is None:
            continue
        before = decode_record(record) if record else {}
        vector = to_vector(decode_state(features), as_of)
        stage = lifecycle_stage(vector, previous_stage=before.get("stage"), settings=segments)
        risk = model.score(vector).risk
        score = round(risk * 100)
        rows.append(
            {
                "user_id": uid,
                "as_of": stamp(as_of),
                "risk": round(risk, 6),
                "score": score,
                "band": band_for(score, policy, stage=stage),
                "stage": stage,
                "tier": before.get("tier", "low"),
            }
        )
    return rows


def stamp(ts: float) -> str:
    """An RFC 3339 UTC stamp, also used in file names.

    >>> stamp(0.0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)

"""One user's answers: risk with reasons and features, history pages, whether known."""

from __future__ import annotations

from functools import partial
from typing import Any

import orjson

from services.scorer.adapters.redis_layout import shard_key, user_fields, user_key
from services.scorer.core.records import decode_record
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.scorer.queries.formats import public_record
from services.scorer.queries.reads import RedisReads, queue_user_reads


async def read_user(reads: RedisReads, user_id: str) -> dict[str, Any] | None:
    """Risk, segment, reasons and features of one user; None when never scored.

    The percentile is the share of users in the same lifecycle stage whose
    risk is at most this user's: ZCARD and ZCOUNT over the shards of the
    stage's risk index (one script on one Redis).
    """
    features, record = user_fields(
        *await reads.run(partial(queue_user_reads, reads.prefix, [user_id]))
    )
    if features is None or record is None:
        return None
    raw = decode_record(record)
    index = f"{reads.prefix}:atrisk:{raw.get('stage', '')}"
    shard = shard_key(index, user_id, reads.shards)

    def read(pipe: Any) -> None:
        pipe.zscore(shard, user_id)
        pipe.zscore(index, user_id)  # the unsharded index of before

    found, old = await reads.run(read)
    risk = found if found is not None else old
    percentile = None
    if risk is not None:
        ((total, at_most),) = await reads.count([index], repr(float(risk)))
        percentile = round(100.0 * at_most / total, 2) if total else None
    out = {"user_id": user_id, **public_record(record), "percentile": percentile}
    out["features"] = to_vector(decode_state(features), float(raw["updated_at"]))
    return out


async def read_history(
    reads: RedisReads, user_id: str, kind: str, *, limit: int, offset: int
) -> dict[str, Any]:
    """A page of a newest-first history list (``alerts`` or ``actions``)."""
    key = user_key(reads.prefix, user_id, kind)

    def read(pipe: Any) -> None:
        pipe.lrange(key, offset, offset + limit - 1)
        pipe.llen(key)

    items, total = await reads.run(read)
    return {
        "user_id": user_id,
        "total": total,
        "limit": limit,
        "offset": offset,
        "items": [orjson.loads(item) for item in items],
    }


async def is_known(reads: RedisReads, user_id: str) -> bool:
    """Whether Redis holds anything of this user (a scored record or a history)."""
    keys = [user_key(reads.prefix, user_id, k) for k in ("s", "u", "alerts", "actions")]
    return bool(await reads.call(reads.r.exists(*keys)))

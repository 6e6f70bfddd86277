"""The at-risk list: users by risk, highest first, filtered on their score records."""

from __future__ import annotations

import logging
import math
from functools import partial
from typing import Any

from services.common.errors import UnreadableStored
from services.scorer.adapters.redis_layout import user_fields, user_key
from services.scorer.core.records import decode_record
from services.scorer.core.segments import STAGES
from services.scorer.queries.formats import decode_cursor, encode_cursor, rfc3339
from services.scorer.queries.merged import MergedIndex
from services.scorer.queries.reads import RedisReads, head_record, queue_gets, queue_user_reads

log = logging.getLogger("churnwatch.api")

MAX_EXAMINED = 5000  # at-risk entries looked at per request, whatever the filters


async def list_at_risk(
    reads: RedisReads,
    *,
    limit: int,
    cursor: str | None = None,
    band: str | None = None,
    stage: str | None = None,
    tier: str | None = None,
) -> dict[str, Any]:
    """Users by risk, highest first, filtered on their score records.

    There is no global at-risk index: the per-stage ones (``P:atrisk:<stage>``)
    are merged, highest risk first (ties in descending user order, as
    ZREVRANGEBYSCORE gives them), read in chunks from the cursor on until
    ``limit`` users pass the filters or :data:`MAX_EXAMINED` entries were
    looked at; ``next_cursor`` then points after the last entry examined,
    so a page may be short and still have a next one. A stage filter reads
    that stage's index only.
    """
    top, after = decode_cursor(cursor) if cursor else (math.inf, None)
    wanted = {"band": band, "stage": stage, "tier": tier}
    chunk = max(100, 2 * limit)
    bases = [f"{reads.prefix}:atrisk:{st}" for st in (STAGES if stage is None else (stage,))]
    merged = MergedIndex(reads, bases, top=top, after=after, chunk=chunk)
    items: list[dict[str, Any]] = []
    last = None if after is None else (top, after)
    examined = 0
    more = True
    while more and len(items) < limit and examined < MAX_EXAMINED:
        entries = await merged.take(chunk, reads.run)
        examined += len(entries)
        more = merged.more
        found = await reads.run(
            partial(queue_user_reads, reads.prefix, [m for m, _ in entries], head=True)
        )
        records = [
            head_record(blob, old) for blob, old in zip(found[::2], found[1::2], strict=True)
        ]
        longer = [i for i, rec in enumerate(records) if rec is False]
        if longer:  # records longer than the head read (old JSON ones): read them whole
            keys = [user_key(reads.prefix, entries[i][0], "s") for i in longer]
            for i, blob in zip(longer, await reads.run(partial(queue_gets, keys)), strict=True):
                try:
                    records[i] = user_fields(blob, (None, None))[1]
                except UnreadableStored as exc:  # a string of another layout
                    _skipped(entries[i][0], exc)
                    records[i] = None
        for i, ((member, risk), record) in enumerate(zip(entries, records, strict=True)):
            last = (risk, member)
            if not record:
                continue  # the user's record expired; its index entry outlived it
            try:
                rec = decode_record(record)
            except UnreadableStored as exc:
                _skipped(member, exc)
                continue
            if all(v is None or rec.get(k) == v for k, v in wanted.items()):
                items.append(_row(member, risk, rec))
                if len(items) == limit:
                    more = more or i < len(entries) - 1
                    break
    next_cursor = encode_cursor(*last) if more and last is not None else None
    return {"items": items, "next_cursor": next_cursor}


def _row(user_id: str, risk: float, rec: dict[str, Any]) -> dict[str, Any]:
    return {
        "user_id": user_id,
        "risk": risk,
        "score": rec.get("score"),
        "band": rec.get("band"),
        "stage": rec.get("stage"),
        "tier": rec.get("tier"),
        "updated_at": rfc3339(float(rec["updated_at"])) if "updated_at" in rec else None,
    }


def _skipped(user_id: str, exc: UnreadableStored) -> None:
    """One unreadable record must not take the list down. A corrupt record is replaced
    at the user's next score (and counted there when the scorer reads it); a string
    of another layout stays until the version that wrote it reads it."""
    log.warning("risk list: user skipped", extra={"user_id": user_id, "error": str(exc)})

"""The risk API's reads: what the scorer and the notifier keep in Redis, as plain dicts.

Every query is one or two pipelined round trips over keys it can name (see
``adapters/redis_layout.py`` and ``notifier/adapters/redis_directory.py`` for the
layout). The one exception is the discovery of two small key families that no
index lists, ``P:model:*:quality`` (one per scorer worker) and ``P:winback:*``
(two counters per playbook and group): :meth:`RiskQueries.family` finds them
with ``SCAN MATCH`` and keeps the names for ``scan_every_s`` seconds, so that
cost is paid at most once a minute, not per request. A set of names written by
the scorer and the notifier would remove the scan; until they keep one, this is
the cheap way.

Every query also works on a Redis Cluster: multi-key commands only name keys
of one slot (a user's ``{uid}`` keys, or the daily HLLs under ``{hll}``), values
of keys in several slots are read with one GET each in a pipeline (redis-py
sends one batch per master), and ``SCAN`` goes to every master.
"""

from __future__ import annotations

import base64
import binascii
import logging
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, Literal

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable, UnreadableStored
from services.common.redis_client import AsyncRedis, is_cluster
from services.scorer.adapters.redis_layout import shard_key
from services.scorer.adapters.redis_scripts import INDEX_READ
from services.scorer.adapters.redis_store import (
    INDEX_SHARDS,
    day_key,
    user_fields,
    user_key,
)
from services.scorer.core.records import decode_record
from services.scorer.core.segments import STAGES
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector

log = logging.getLogger("churnwatch.api")

MAX_EXAMINED = 5000  # at-risk entries looked at per request, whatever the filters


class BadCursor(ValueError):
    """The at-risk cursor is not one this API handed out."""


def encode_cursor(risk: float, user_id: str) -> str:
    """An opaque at-risk cursor: the last risk and user seen.

    >>> decode_cursor(encode_cursor(0.25, "u-1"))
    (0.25, 'u-1')
    """
    return base64.urlsafe_b64encode(orjson.dumps([risk, user_id])).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[float, str]:
    """The (risk, user) of a cursor; :class:`BadCursor` when it is not one of ours.

    >>> decode_cursor("nope")
    Traceback (most recent call last):
    ...
    services.scorer.queries.BadCursor: cursor is not valid: pass next_cursor from the previous page
    """
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        risk, user_id = orjson.loads(raw)
        risk = float(risk)
        if not isinstance(user_id, str) or not math.isfinite(risk):
            raise ValueError
    except (ValueError, TypeError, binascii.Error, orjson.JSONDecodeError):
        raise BadCursor("cursor is not valid: pass next_cursor from the previous page") from None
    return risk, user_id


def rfc3339(ts: float) -> str:
    """
    >>> rfc3339(0)
    '1970-01-01T00:00:00Z'
    """
    return datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z")


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def public_record(record: bytes) -> dict[str, Any]:
    """The score record as the API shows it: reasons as objects, times as RFC 3339.

    >>> public_record(b'{"risk":0.7,"reasons":[["recency_days",0.4,12.0]],"updated_at":0}')
    {'risk': 0.7, 'reasons': [{'feature': 'recency_days', 'contribution': 0.4, 'value': 12.0}], 'updated_at': '1970-01-01T00:00:00Z'}
    """  # noqa: E501
    out = decode_record(record)
    out["reasons"] = [
        {"feature": f, "contribution": c, "value": v} for f, c, v in out.get("reasons", [])
    ]
    if "updated_at" in out:
        out["updated_at"] = rfc3339(float(out["updated_at"]))
    return out


def day_keys(prefix: str, now: float, days: int) -> list[str]:
    """The activity HLL keys of the ``days`` UTC days ending today.

    >>> day_keys("cw", 86400 * 2.5, 2)
    ['cw:{hll}:d:19700103', 'cw:{hll}:d:19700102']
    """
    today = datetime.fromtimestamp(now, UTC)
    return [day_key(prefix, f"{(today - timedelta(days=i)):%Y%m%d}") for i in range(days)]


class RiskQueries:
    def __init__(
        self,
        client: AsyncRedis,
        *,
        prefix: str,
        scan_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        self.r = client
        self.prefix = prefix
        self.shards = index_shards
        self._index_read = None if is_cluster(client) else client.register_script(INDEX_READ)
        self.scan_every_s = scan_every_s
        self.clock = clock
        self._families: dict[str, tuple[float, list[str]]] = {}

    async def _run(self, build: Callable[[Any], object]) -> list[Any]:
        try:
            async with self.r.pipeline(transaction=False) as pipe:
                build(pipe)
                return list(await pipe.execute())
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

    async def _call(self, command: Awaitable[Any]) -> Any:
        try:
            return await command
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc

    def _keys(self, base: str) -> list[str]:
        """A sharded index's keys: the unsharded one of before, then the shards."""
        return [base, *(f"{base}:{s}" for s in range(self.shards))]

    async def _count(self, bases: list[str], at_most: str) -> list[tuple[int, int]]:
        """(members, members scored <= ``at_most``) of each sharded index."""
        try:
            if self._index_read is not None:  # one script per index (each reads ~1,000 keys)
                out = []
                for base in bases:
                    a, b = await self._index_read(args=["count", self.shards, at_most, base])
                    out.append((int(a), int(b)))
                return out
            async with self.r.pipeline(transaction=False) as pipe:
                for base in bases:
                    for key in self._keys(base):
                        pipe.zcard(key)
                        pipe.zcount(key, "-inf", at_most)
                found = await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        per = 2 * (self.shards + 1)
        parts = [found[i * per : (i + 1) * per] for i in range(len(bases))]
        return [(sum(part[::2]), sum(part[1::2])) for part in parts]

    async def _merge(
        self, bases: list[str], *, top: float, after: str | None, limit: int
    ) -> tuple[list[tuple[str, float]], bool]:
        """The next ``limit`` entries after the cursor across sharded indexes (one Redis)."""
        assert self._index_read is not None
        high = "+inf" if math.isinf(top) else repr(top)
        args: list[Any] = ["merge", self.shards, high, after or "", limit, *bases]
        found = await self._call(self._index_read(args=args))
        entries = [(_text(found[i]), float(found[i + 1])) for i in range(0, len(found) - 1, 2)]
        return entries, bool(found[-1])

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except RedisError:
            return False

    async def user(self, user_id: str) -> dict[str, Any] | None:
        """Risk, segment, reasons and features of one user; None when never scored.

        The percentile is the share of users in the same lifecycle stage whose
        risk is at most this user's: ZCARD and ZCOUNT over the shards of the
        stage's risk index (one script on one Redis).
        """
        features, record = user_fields(
            *await self._run(partial(_queue_user_reads, self.prefix, [user_id]))
        )
        if features is None or record is None:
            return None
        raw = decode_record(record)
        index = f"{self.prefix}:atrisk:{raw.get('stage', '')}"
        shard = shard_key(index, user_id, self.shards)

        def read(pipe: Any) -> None:
            pipe.zscore(shard, user_id)
            pipe.zscore(index, user_id)  # the unsharded index of before

        found, old = await self._run(read)
        risk = found if found is not None else old
        percentile = None
        if risk is not None:
            ((total, at_most),) = await self._count([index], repr(float(risk)))
            percentile = round(100.0 * at_most / total, 2) if total else None
        out = {"user_id": user_id, **public_record(record), "percentile": percentile}
        out["features"] = to_vector(decode_state(features), float(raw["updated_at"]))
        return out

    async def history(self, user_id: str, kind: str, *, limit: int, offset: int) -> dict[str, Any]:
        """A page of a newest-first history list (``alerts`` or ``actions``)."""
        key = user_key(self.prefix, user_id, kind)

        def read(pipe: Any) -> None:
            pipe.lrange(key, offset, offset + limit - 1)
            pipe.llen(key)

        items, total = await self._run(read)
        return {
            "user_id": user_id,
            "total": total,
            "limit": limit,
            "offset": offset,
            "items": [orjson.loads(item) for item in items],
        }

    async def known(self, user_id: str) -> bool:
        """Whether Redis holds anything of this user (a scored record or a history)."""
        keys = [user_key(self.prefix, user_id, k) for k in ("s", "u", "alerts", "actions")]
        return bool(await self._call(self.r.exists(*keys)))

    async def at_risk(
        self,
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
        bases = [f"{self.prefix}:atrisk:{st}" for st in (STAGES if stage is None else (stage,))]
        merged = _Merged(self, bases, top=top, after=after, chunk=chunk)
        items: list[dict[str, Any]] = []
        last = None if after is None else (top, after)
        examined = 0
        more = True
        while more and len(items) < limit and examined < MAX_EXAMINED:
            entries = await merged.take(chunk, self._run)
            examined += len(entries)
            more = merged.more
            found = await self._run(
                partial(_queue_user_reads, self.prefix, [m for m, _ in entries], head=True)
            )
            records = [
                _head_record(blob, old) for blob, old in zip(found[::2], found[1::2], strict=True)
            ]
            longer = [i for i, rec in enumerate(records) if rec is False]
            if longer:  # records longer than the head read (old JSON ones): read them whole
                keys = [user_key(self.prefix, entries[i][0], "s") for i in longer]
                for i, blob in zip(
                    longer, await self._run(partial(_queue_gets, keys)), strict=True
                ):
                    records[i] = user_fields(blob, (None, None))[1]
            for i, ((member, risk), record) in enumerate(zip(entries, records, strict=True)):
                last = (risk, member)
                if not record:
                    continue  # the user's record expired; its index entry outlived it
                try:
                    rec = decode_record(record)
                except UnreadableStored as exc:
                    # One corrupt record must not take the list down; the scorer replaces
                    # it at the user's next score (counted there when it reads it).
                    log.warning(
                        "risk list: user skipped", extra={"user_id": member, "error": str(exc)}
                    )
                    continue
                if all(v is None or rec.get(k) == v for k, v in wanted.items()):
                    items.append(_row(member, risk, rec))
                    if len(items) == limit:
                        more = more or i < len(entries) - 1
                        break
        next_cursor = encode_cursor(*last) if more and last is not None else None
        return {"items": items, "next_cursor": next_cursor}

    async def family(self, pattern: str) -> list[str]:
        """Key names matching ``pattern`` (SCAN MATCH), cached for ``scan_every_s``."""
        now = time.monotonic()
        cached = self._families.get(pattern)
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            names = sorted({_text(k) async for k in self.r.scan_iter(match=pattern, count=1000)})
        except RedisError as exc:
            raise StoreUnavailable(f"Redis scan failed: {exc}") from exc
        self._families[pattern] = (now + self.scan_every_s, names)
        return names

    async def stats(self) -> dict[str, Any]:
        """Active users (HyperLogLog estimates), day-1/7/30 retention of the last 35 daily
        signup cohorts (a cohort's day-k share is only final k days after it signed up),
        users per lifecycle stage and the churn rate (share in the churned stage),
        and win-back counters."""
        now = self.clock()
        counters = await self.family(f"{self.prefix}:winback:*")

        cohort_days = [rfc3339(now - d * 86_400)[:10].replace("-", "") for d in range(1, 36)]
        stage_counts = [
            total
            for total, _ in await self._count(
                [f"{self.prefix}:atrisk:{stage}" for stage in STAGES], "+inf"
            )
        ]

        def read(pipe: Any) -> None:
            # PFCOUNT by name: redis-py refuses pipe.pfcount on a cluster, where these
            # are fine (the day HLLs share one hash tag; a cohort count names one key).
            for days in (1, 7, 30):
                pipe.execute_command("PFCOUNT", *day_keys(self.prefix, now, days))
            for day in cohort_days:
                for k in (0, 1, 7, 30):
                    pipe.execute_command("PFCOUNT", f"{self.prefix}:cohort:{day}:d{k}")
            for name in counters:  # one GET each: the counters are in several slots
                pipe.get(name)

        dau, wau, mau, *rest = await self._run(read)
        cohort_counts, rest = rest[: 4 * len(cohort_days)], rest[4 * len(cohort_days) :]
        values = rest
        cohorts = []
        for i, day in enumerate(cohort_days):
            size, d1, d7, d30 = cohort_counts[4 * i : 4 * i + 4]
            if size:
                cohorts.append(
                    {
                        "signup_day": f"{day[:4]}-{day[4:6]}-{day[6:]}",
                        "users": size,
                        "day1": round(d1 / size, 4),
                        "day7": round(d7 / size, 4),
                        "day30": round(d30 / size, 4),
                    }
                )
        by_stage = dict(zip(STAGES, stage_counts, strict=True))
        scored = sum(by_stage.values())
        winback: dict[str, dict[str, dict[str, Any]]] = {}
        for name, value in zip(counters, values, strict=True):
            parts = name[len(self.prefix) + len(":winback:") :].rsplit(":", 2)
            if len(parts) != 3 or value is None:
                continue
            playbook, group, counter = parts
            winback.setdefault(playbook, {}).setdefault(group, {})[counter] = int(value)
        for groups in winback.values():
            for c in groups.values():
                treated, won = c.setdefault("treated", 0), c.setdefault("won", None)
                c["win_rate"] = round(won / treated, 4) if won is not None and treated else None
        return {
            "as_of": rfc3339(now),
            "active_users": {"dau": dau, "wau": wau, "mau": mau},
            "cohorts": cohorts,
            "users_by_stage": by_stage,
            "churn_rate": round(by_stage["churned"] / scored, 4) if scored else None,
            "winback": winback,
        }

    async def model(self) -> dict[str, Any]:
        """Each scorer worker's model version, label counts, quality and checkpoint age."""
        now = self.clock()
        names = await self.family(f"{self.prefix}:model:*:quality")
        values = await self._run(partial(_queue_gets, names)) if names else []
        workers = []
        for name, raw in zip(names, values, strict=True):
            if raw is None:
                continue
            data = orjson.loads(raw)
            saved = data.get("saved_at")
            workers.append(
                {
                    "worker": name[len(self.prefix) + len(":model:") : -len(":quality")],
                    "model_version": data.get("model_version"),
                    "labels": {
                        "positive": data.get("positives", 0),
                        "negative": data.get("negatives", 0),
                    },
                    "quality": data.get("metrics", {}),
                    "threshold": data.get("threshold"),
                    "checkpoint_saved_at": rfc3339(saved) if saved else None,
                    "checkpoint_age_s": round(now - saved, 3) if saved else None,
                }
            )
        return {"as_of": rfc3339(now), "workers": workers}


class _Merged:
    """Sharded sorted sets read as one, highest score first (ties: highest member
    first), from a cursor (``top``, ``after``) on. On one Redis each ``take`` is
    one script (``INDEX_READ``, a k-way merge on the server) from the cursor of
    the last entry taken; on a cluster, a k-way merge here that reads each key in
    small chunks as it runs dry (one pipeline per round)."""

    def __init__(
        self, queries: RiskQueries, bases: list[str], *, top: float, after: str | None, chunk: int
    ) -> None:
        self.queries = queries
        self.bases = bases
        self.keys = [key for base in bases for key in queries._keys(base)]
        self.top, self.after = top, after
        self.chunk = max(2, chunk // len(self.keys))
        self.done = False
        self.high = "+inf" if math.isinf(top) else repr(top)
        self.buffers: list[list[tuple[float, str]]] = [[] for _ in self.keys]  # reversed: pop()
        self.offsets = [0] * len(self.keys)
        self.open = [True] * len(self.keys)

    @property
    def more(self) -> bool:
        if self.queries._index_read is not None:
            return not self.done
        return any(self.open) or any(self.buffers)

    async def _refill(self, run: Callable[[Any], Awaitable[list[Any]]]) -> None:
        dry = [i for i, buf in enumerate(self.buffers) if not buf and self.open[i]]
        if not dry:
            return

        def read(pipe: Any) -> None:
            for i in dry:
                pipe.zrevrangebyscore(
                    self.keys[i],
                    self.high,
                    "-inf",
                    start=self.offsets[i],
                    num=self.chunk,
                    withscores=True,
                )

        for i, found in zip(dry, await run(read), strict=True):
            self.offsets[i] += len(found)
            self.open[i] = len(found) == self.chunk
            entries = [(float(score), _text(m)) for m, score in found]
            if self.after is not None:  # the tie group's part already served
                entries = [(sc, m) for sc, m in entries if sc < self.top or m < self.after]
            self.buffers[i] = entries[::-1]

    async def take(
        self, n: int, run: Callable[[Any], Awaitable[list[Any]]]
    ) -> list[tuple[str, float]]:
        """The next ``n`` (member, score) entries, or fewer at the end."""
        if self.queries._index_read is not None:
            if self.done:
                return []
            entries, more = await self.queries._merge(
                self.bases, top=self.top, after=self.after, limit=n
            )
            if entries:
                self.after, self.top = entries[-1][0], entries[-1][1]
            self.done = not more
            return entries
        out: list[tuple[str, float]] = []
        while len(out) < n:
            while any(not buf and self.open[i] for i, buf in enumerate(self.buffers)):
                await self._refill(run)
            heads = [(buf[-1], i) for i, buf in enumerate(self.buffers) if buf]
            if not heads:
                break
            (score, member), i = max(heads)
            self.buffers[i].pop()
            out.append((member, score))
        return out


def _queue_gets(keys: list[str], pipe: Any) -> None:
    for key in keys:
        pipe.get(key)


# Bytes of a user's string that hold its score record (it comes first); a longer
# record (an old JSON one) is read whole.
_HEAD_BYTES = 160


def _queue_user_reads(prefix: str, user_ids: list[str], pipe: Any, *, head: bool = False) -> None:
    """Per user: its string (or with ``head`` only its first bytes) and its old hash's (f, r)."""
    for uid in user_ids:
        key = user_key(prefix, uid, "s")
        if head:
            pipe.getrange(key, 0, _HEAD_BYTES - 1)
            pipe.hget(user_key(prefix, uid), "r")
        else:
            pipe.get(key)
            pipe.hmget(user_key(prefix, uid), "f", "r")


def _head_record(head: bytes | None, old: bytes | None) -> bytes | Literal[False] | None:
    """The score record at the head of a user's string, else the old hash's; False
    when the record goes on past the head."""
    if not head:
        return old
    n = int.from_bytes(head[1:3], "little")
    return (head[3 : 3 + n] or None) if 3 + n <= len(head) else False


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

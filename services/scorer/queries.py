"""The risk API's reads: what the scorer and the notifier keep in Redis, as plain dicts.

Every query is one or two pipelined round trips over keys it can name (see
``adapters/redis_store.py`` and ``notifier/adapters/redis_directory.py`` for the
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
import math
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson
from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_store import day_key, user_key
from services.scorer.core.features import decode_state, to_vector
from services.scorer.core.segments import STAGES

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
    out: dict[str, Any] = orjson.loads(record)
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
    ) -> None:
        self.r = client
        self.prefix = prefix
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

    async def ping(self) -> bool:
        try:
            return bool(await self.r.ping())
        except RedisError:
            return False

    async def user(self, user_id: str) -> dict[str, Any] | None:
        """Risk, segment, reasons and features of one user; None when never scored.

        The percentile is the share of users in the same lifecycle stage whose
        risk is at most this user's: one ZCOUNT on the stage's risk index.
        """
        features, record = await self._call(self.r.hmget(user_key(self.prefix, user_id), "f", "r"))
        if features is None or record is None:
            return None
        raw = orjson.loads(record)
        index = f"{self.prefix}:atrisk:{raw.get('stage', '')}"

        def read(pipe: Any) -> None:
            pipe.zscore(index, user_id)
            pipe.zcard(index)

        risk, total = await self._run(read)
        percentile = None
        if risk is not None and total:
            at_most = await self._call(self.r.zcount(index, "-inf", float(risk)))
            percentile = round(100.0 * at_most / total, 2)
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
        keys = [user_key(self.prefix, user_id, k) for k in ("u", "alerts", "actions")]
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

        Entries are read from the at-risk index in chunks from the cursor on
        (ties in risk go in descending user order, as ZREVRANGEBYSCORE gives
        them) until ``limit`` users pass the filters or :data:`MAX_EXAMINED`
        entries were looked at; ``next_cursor`` then points after the last
        entry examined, so a page may be short and still have a next one.
        """
        index = f"{self.prefix}:atrisk"
        top, after = decode_cursor(cursor) if cursor else (math.inf, None)
        wanted = {"band": band, "stage": stage, "tier": tier}
        high = "+inf" if math.isinf(top) else repr(top)
        chunk = max(100, 2 * limit)
        items: list[dict[str, Any]] = []
        last = None if after is None else (top, after)
        examined = 0
        more = True
        while more and len(items) < limit and examined < MAX_EXAMINED:
            found = await self._call(
                self.r.zrevrangebyscore(
                    index, high, "-inf", start=examined, num=chunk, withscores=True
                )
            )
            examined += len(found)
            more = len(found) == chunk
            entries = [(_text(m), float(score)) for m, score in found]
            if after is not None:  # the tie group's part already served (ZREVRANGE order)
                entries = [(m, s) for m, s in entries if s < top or m < after]
            records = await self._run(
                partial(_queue_hgets, [user_key(self.prefix, m) for m, _ in entries], "r")
            )
            for i, ((member, risk), record) in enumerate(zip(entries, records, strict=True)):
                last = (risk, member)
                if record is None:
                    continue  # the user's hash expired; its index entry outlived it
                rec = orjson.loads(record)
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
        stage_keys = [f"{self.prefix}:atrisk:{stage}" for stage in STAGES]

        def read(pipe: Any) -> None:
            # PFCOUNT by name: redis-py refuses pipe.pfcount on a cluster, where these
            # are fine (the day HLLs share one hash tag; a cohort count names one key).
            for days in (1, 7, 30):
                pipe.execute_command("PFCOUNT", *day_keys(self.prefix, now, days))
            for day in cohort_days:
                for k in (0, 1, 7, 30):
                    pipe.execute_command("PFCOUNT", f"{self.prefix}:cohort:{day}:d{k}")
            for key in stage_keys:
                pipe.zcard(key)
            for name in counters:  # one GET each: the counters are in several slots
                pipe.get(name)

        dau, wau, mau, *rest = await self._run(read)
        cohort_counts, rest = rest[: 4 * len(cohort_days)], rest[4 * len(cohort_days) :]
        stage_counts, values = rest[: len(stage_keys)], rest[len(stage_keys) :]
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


def _queue_gets(keys: list[str], pipe: Any) -> None:
    for key in keys:
        pipe.get(key)


def _queue_hgets(keys: list[str], field: str, pipe: Any) -> None:
    for key in keys:
        pipe.hget(key, field)


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

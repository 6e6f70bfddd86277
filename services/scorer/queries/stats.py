"""Figures over every user: activity, signup cohorts, stages, win-backs, the models."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any

import orjson

from services.scorer.adapters.redis_layout import day_key
from services.scorer.core.segments import STAGES
from services.scorer.queries.formats import rfc3339
from services.scorer.queries.reads import RedisReads, queue_gets


def day_keys(prefix: str, now: float, days: int) -> list[str]:
    """The activity HLL keys of the ``days`` UTC days ending today.

    >>> day_keys("cw", 86400 * 2.5, 2)
    ['cw:{hll}:d:19700103', 'cw:{hll}:d:19700102']
    """
    today = datetime.fromtimestamp(now, UTC)
    return [day_key(prefix, f"{(today - timedelta(days=i)):%Y%m%d}") for i in range(days)]


async def read_stats(reads: RedisReads) -> dict[str, Any]:
    """Active users (HyperLogLog estimates), day-1/7/30 retention of the last 35 daily
    signup cohorts (a cohort's day-k share is only final k days after it signed up),
    users per lifecycle stage and the churn rate (share in the churned stage),
    and win-back counters."""
    prefix = reads.prefix
    now = reads.clock()
    counters = await reads.family(f"{prefix}:winback:*")

    cohort_days = [rfc3339(now - d * 86_400)[:10].replace("-", "") for d in range(1, 36)]
    stage_counts = [
        total
        for total, _ in await reads.count([f"{prefix}:atrisk:{stage}" for stage in STAGES], "+inf")
    ]

    def read(pipe: Any) -> None:
        # PFCOUNT by name: redis-py refuses pipe.pfcount on a cluster, where these
        # are fine (the day HLLs share one hash tag; a cohort count names one key).
        for days in (1, 7, 30):
            pipe.execute_command("PFCOUNT", *day_keys(prefix, now, days))
        for day in cohort_days:
            for k in (0, 1, 7, 30):
                pipe.execute_command("PFCOUNT", f"{prefix}:cohort:{day}:d{k}")
        for name in counters:  # one GET each: the counters are in several slots
            pipe.get(name)

    dau, wau, mau, *rest = await reads.run(read)
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
        parts = name[len(prefix) + len(":winback:") :].rsplit(":", 2)
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


async def read_model(reads: RedisReads) -> dict[str, Any]:
    """Each scorer worker's model version, label counts, quality and checkpoint age."""
    now = reads.clock()
    names = await reads.family(f"{reads.prefix}:model:*:quality")
    values = await reads.run(partial(queue_gets, names)) if names else []
    workers = []
    for name, raw in zip(names, values, strict=True):
        if raw is None:
            continue
        data = orjson.loads(raw)
        saved = data.get("saved_at")
        workers.append(
            {
                "worker": name[len(reads.prefix) + len(":model:") : -len(":quality")],
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

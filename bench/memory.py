"""``churnwatch bench memory``: Redis bytes per user after ``--size`` users (default 100,000).

Each user gets about 20 events over 30 days: a signup, then sessions (start, a
feature used, a page view, the odd purchase, end) on about five days. They go
through the real ``BatchScorer`` and ``RedisUserStore`` in this process, one
event-time day at a time (a manual clock), so every user is scored on each of
its active days and keeps the label snapshots, alerts and index entries the
live service would keep; the label resolution runs after each day, as the
worker's timer would.

The figure is the exact ``MEMORY USAGE`` of every key of the run's prefix
(per-user keys, the shared sorted sets and their shards, HyperLogLogs) divided
by the users. The prefix is six characters (``m`` and five hex digits), about
as long as a deployment's (``cw``): key names are part of the bytes. The
baseline is the bytes of the feature state itself (its part of the user's
string ``P:{uid}:s``), the least any layout could keep. The keys are removed at
the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import re
import uuid
from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from typing import Any

import orjson
import redis.asyncio as aioredis

from bench.registry import emit
from services.common.clock import ManualClock
from services.common.settings import CommonSettings, load_settings
from services.scorer.adapters.redis_store import RedisUserStore, split_user, user_key
from services.scorer.config import ScorerSettings
from services.scorer.core.features import FeatureSettings
from services.scorer.core.quality import QualityTracker
from services.scorer.labelling import resolve_labels
from services.scorer.pipeline import BatchScorer, Record
from services.scorer.wiring import make_core
from services.sim.generator import DAY, FEATURES, ZONES, SimUser, event

START = 1_790_000_000.0  # 2026-09-21: a fixed start so runs compare
DAYS = 30
EVENTS_PER_USER = 20


def user_events(i: int, rng: random.Random) -> list[dict[str, Any]]:
    """A signup, then sessions of four or five events on about five of the 30 days."""
    user = SimUser(f"mem-{i:06d}", "casual", rng.choice(ZONES), "basic", 1.0)
    out = [event(user, "signup", START + rng.uniform(0, DAY), 0, plan=user.plan)]
    seq = 0
    while seq < EVENTS_PER_USER - 1:
        ts = START + rng.uniform(DAY, DAYS * DAY)
        sid = f"s{seq}"
        steps: list[tuple[str, dict[str, Any]]] = [("session_start", {"session_id": sid})]
        steps += [("feature_used", {"feature": rng.choice(FEATURES)}), ("page_view", {})]
        if rng.random() < 0.1:
            steps.append(("purchase", {"amount": round(rng.uniform(5, 60), 2)}))
        steps.append(("session_end", {"session_id": sid, "duration_s": rng.randrange(60, 1800)}))
        for kind, props in steps:
            seq += 1
            ts += rng.uniform(5, 300)
            out.append(event(user, kind, ts, seq, **props))
    return out


async def fill(store: RedisUserStore, *, users: int, seed: int) -> None:
    """Every user's events, fed one event-time day at a time, 2,000 events per batch."""
    rng = random.Random(seed)
    by_day: dict[int, list[bytes]] = defaultdict(list)
    for i in range(users):
        for e in user_events(i, rng):
            day = int((datetime.fromisoformat(e["occurred_at"]).timestamp() - START) // DAY)
            by_day[day].append(orjson.dumps(e))
    clock = ManualClock(START)
    # The same as ScorerSettings() (from the environment), typed for mypy, which takes the
    # fields whose default is Field's positional argument for required ones.
    core = make_core(load_settings(ScorerSettings))
    quality = QualityTracker(threshold=0.65)
    scorer = BatchScorer(store=store, core=core, clock=clock, features=FeatureSettings())
    offset = 0
    for day in sorted(by_day):
        clock.set(START + (day + 1) * DAY - 1)  # the end of that day
        values = by_day.pop(day)
        for start in range(0, len(values), 2000):
            chunk = values[start : start + 2000]
            records = [Record(None, v, "bench", 0, offset + k) for k, v in enumerate(chunk)]
            offset += len(chunk)
            await scorer.handle(records)
        # As the worker's timer does: labels that are due resolve, their snapshots go.
        await resolve_labels(
            store, model=core.model, quality=quality, now=clock.now(), settings=core.labels
        )
        print(f"day {day + 1:2}/{DAYS}: {offset:,} events", flush=True)


async def measure(client: aioredis.Redis, prefix: str, users: int) -> tuple[float, float]:
    """(bytes of every key of the prefix, bytes of the feature states), both summed."""
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=10_000)]
    by_kind: dict[str, int] = defaultdict(int)
    for start in range(0, len(keys), 5000):
        chunk = keys[start : start + 5000]
        async with client.pipeline(transaction=False) as pipe:
            for key in chunk:
                pipe.memory_usage(key, samples=0)
            for key, n in zip(chunk, await pipe.execute(), strict=True):
                kind = key.decode().rsplit("}", 1)[-1] if b"{" in key else key.decode()
                kind = kind.removeprefix(prefix + ":").split(":d:")[0]
                # an index's shards, a day's cohort marks: one line each
                kind = re.sub(r"^(cohort):.*|:\d+$", r"\1", kind)
                by_kind[kind] += n or 0
    total = sum(by_kind.values())
    print(
        "bytes per user by key: "
        + ", ".join(
            f"{kind} {n / users:,.0f}" for kind, n in sorted(by_kind.items(), key=lambda kv: -kv[1])
        )
    )
    features = 0
    for start in range(0, users, 5000):
        async with client.pipeline(transaction=False) as pipe:
            for i in range(start, min(users, start + 5000)):
                pipe.get(user_key(prefix, f"mem-{i:06d}", "s"))
            features += sum(len(split_user(b).features) for b in await pipe.execute() if b)
    return float(total), float(features)


async def run(settings: CommonSettings, *, users: int) -> tuple[float, float]:
    prefix = f"m{uuid.uuid4().hex[:5]}"
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=30)
    store = RedisUserStore(client, prefix=prefix, user_ttl_s=400 * 86400)
    try:
        await fill(store, users=users, seed=11)
        total, features = await measure(client, prefix, users)
    finally:
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*", count=10_000)]
        for start in range(0, len(keys), 10_000):
            await client.unlink(*keys[start : start + 10_000])
        await client.aclose()
    return total / users, features / users


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench memory")
    parser.add_argument("--size", type=int, default=100_000, help="users")
    args = parser.parse_args(argv)
    per_user, feature_bytes = asyncio.run(run(load_settings(CommonSettings), users=args.size))
    print(f"{per_user:,.0f} bytes per user in Redis; the feature state alone: {feature_bytes:,.0f}")
    emit("redis_bytes_per_user", per_user, "bytes", feature_bytes, ratio=per_user / feature_bytes)
    return 0

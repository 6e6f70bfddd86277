"""``churnwatch bench sweep``: seconds to find and hand over the silent users among 1,000,000.

``--size`` users (default 1,000,000) go into a fresh last-activity index
(``P:lastseen:<shard>``, ``CHURNWATCH_REDIS_INDEX_SHARDS`` small sorted sets;
ZADD in pipelines), their last activity spread evenly over the last 50 days.
The sweep is the worst case: the previous one was a whole day ago, so every
user whose recency crossed a day boundary since then, all of them within the
horizon, is due. The timed part is what ``Runtime.sweep`` does to find them:
``RedisUserStore.silent_between`` with one range per whole day k of the
horizon (inactivity + label horizon days), [previous - k days, now - k days):
one script that reads every shard. (Re-scoring them is the scorer's per-user
work, measured by ``bench scorer``.)

Baseline: one bare ``ZRANGEBYSCORE`` over the union of those ranges on one
unsharded sorted set of the same users, the same members as raw bytes. The
keys are removed at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import random
import time
import uuid
from collections.abc import Sequence

import redis.asyncio as aioredis

from bench.registry import emit
from services.common.settings import load_settings
from services.scorer.adapters.redis_store import RedisUserStore, shard_of
from services.scorer.config import ScorerSettings

DAY = 86_400.0


async def fill(
    client: aioredis.Redis, key: str, *, users: int, now: float, shards: int = 0
) -> None:
    """The users' last activity into ``key``, or with ``shards`` into its shards."""
    rng = random.Random(5)
    chunk = 10_000
    for start in range(0, users, chunk * 10):
        async with client.pipeline(transaction=False) as pipe:
            for first in range(start, min(users, start + chunk * 10), chunk):
                members = {
                    f"user-{i:07d}": now - rng.uniform(0, 50 * DAY)
                    for i in range(first, min(users, first + chunk))
                }
                if not shards:
                    pipe.zadd(key, members)
                    continue
                by_shard: dict[int, dict[str, float]] = {}
                for member, score in members.items():
                    by_shard.setdefault(shard_of(member, shards), {})[member] = score
                for shard, part in by_shard.items():
                    pipe.zadd(f"{key}:{shard}", part)
            await pipe.execute()


async def sweep_users(store: RedisUserStore, prev: float, now: float, *, horizon: int) -> list[str]:
    """The users ``Runtime.sweep`` hands to re-scoring for a sweep from ``prev`` to ``now``."""
    ranges = [(prev - k * DAY, now - k * DAY) for k in range(1, horizon + 1)]
    return list(dict.fromkeys(await store.silent_between(ranges)))


async def run(settings: ScorerSettings, *, users: int) -> tuple[float, float, int]:
    prefix = f"benchsweep{uuid.uuid4().hex[:8]}"
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=60)
    store = RedisUserStore(
        client,
        prefix=prefix,
        user_ttl_s=86400,
        index_shards=settings.redis_index_shards,
    )
    bare_key = f"{prefix}:bare"
    now = time.time()
    prev = now - DAY
    horizon = settings.scorer_inactivity_days + settings.scorer_horizon_days
    try:
        started = time.perf_counter()
        await fill(client, store.keys.lastseen, users=users, now=now, shards=store.shards)
        print(
            f"{users:,} users in {store.shards:,} shards of {store.keys.lastseen} "
            f"in {time.perf_counter() - started:.1f} s"
        )
        await fill(client, bare_key, users=users, now=now)

        started = time.perf_counter()
        found = await sweep_users(store, prev, now, horizon=horizon)
        swept = time.perf_counter() - started

        started = time.perf_counter()
        bare = await client.zrangebyscore(bare_key, prev - horizon * DAY, f"({now - DAY}")
        baseline = time.perf_counter() - started
        if len(bare) != len(found):
            print(f"warning: the sweep found {len(found):,} users, the bare query {len(bare):,}")
        return swept, baseline, len(found)
    finally:
        shard_keys = [f"{store.keys.lastseen}:{s}" for s in range(store.shards)]
        for start in range(0, len(shard_keys), 1000):
            await client.unlink(*shard_keys[start : start + 1000])
        await client.unlink(bare_key)
        await client.aclose()


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench sweep")
    parser.add_argument("--size", type=int, default=1_000_000, help="users in the index")
    args = parser.parse_args(argv)
    swept, baseline, found = asyncio.run(run(load_settings(ScorerSettings), users=args.size))
    print(
        f"sweep handed over {found:,} silent users in {swept:.2f} s (bare query {baseline:.2f} s)"
    )
    emit("sweep_seconds", swept, "s", baseline, ratio=swept / baseline)
    return 0

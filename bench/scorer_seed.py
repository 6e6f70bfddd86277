"""What ``churnwatch bench scorer`` puts on the stack before its worker starts.

:func:`make_events` simulates the events (10 per user, in time order) and
:func:`produce` writes them to the run's topic; :func:`seed_snapshots` gives
each user one label snapshot in Redis, and :func:`make_due` lets them fall due.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis
from aiokafka import AIOKafkaProducer

from services.common.kafka_security import aiokafka_options
from services.common.settings import CommonSettings, load_settings
from services.sim.generator import DAY, history, make_users

EVENTS_PER_USER = 10


def make_events(n: int, *, seed: int = 7, end: float | None = None) -> list[dict[str, Any]]:
    """``n`` simulated events of ``n // 10`` users over the last nine days, in time order."""
    end = end or time.time()
    out: list[dict[str, Any]] = []
    for user in make_users(max(1, n // EVENTS_PER_USER), seed=seed, prefix="bench"):
        for i, event in enumerate(history(user, start=end - 9 * DAY, days=9, seed=seed)):
            if i == EVENTS_PER_USER:
                break
            out.append(event)
    out.sort(key=lambda e: e["occurred_at"])
    return out[:n]


async def produce(settings: CommonSettings, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=10,
        max_batch_size=512 * 1024,
        **aiokafka_options(settings),
    )
    await producer.start()
    try:
        for start in range(0, len(events), 20_000):
            futures = [
                await producer.send(topic, orjson.dumps(e), key=e["user_id"].encode())
                for e in events[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


def seed_snapshots(settings: CommonSettings, events: list[dict[str, Any]], now: float) -> list[str]:
    """One label snapshot per user, not due before an hour (:func:`make_due` moves that);
    returns the users."""
    from services.common.events import parse_event
    from services.scorer.adapters.redis_store import join_user, user_key
    from services.scorer.config import ScorerSettings
    from services.scorer.core.features import FeatureSettings, apply_batch
    from services.scorer.core.labels import take_snapshot
    from services.scorer.core.snapshot_codec import encode_snapshot
    from services.scorer.core.vector import to_vector

    horizon = load_settings(ScorerSettings).scorer_horizon_days
    # Before the users' nine days of history: their first event already tells that
    # they were there after the horizon, so each label resolves (y=0) at once.
    taken_at = now - (horizon + 10) * DAY
    firsts: dict[str, list[Any]] = {}
    for e in events:
        got = firsts.setdefault(e["user_id"], [])
        if len(got) < 5:
            got.append(parse_event(e))
    r = redis.Redis.from_url(settings.redis_url)
    with r.pipeline(transaction=False) as pipe:
        for n, (uid, first) in enumerate(firsts.items(), start=1):
            state, _ = apply_batch(None, first, settings=FeatureSettings())
            assert state is not None
            snap = take_snapshot(
                uid, to_vector(state, taken_at), taken_at=taken_at, raw=0.0, risk=0.5
            )
            # The user's string as the worker keeps it, holding only the snapshot: the
            # worker's first write of the user adds the features and keeps the snapshot.
            key = user_key(settings.key_prefix, uid, "s")
            pipe.set(key, join_user(features=b"", snapshots=[encode_snapshot(snap)]))
            pipe.zadd(due_key(settings, uid), {uid: now + 3600})
            if n % 5000 == 0:
                pipe.execute()
        pipe.execute()
    return list(firsts)


def due_key(settings: CommonSettings, uid: str) -> str:
    """The shard of the label-due index that holds ``uid`` (see ``redis_layout``)."""
    from services.scorer.adapters.redis_layout import shard_key

    return shard_key(f"{settings.key_prefix}:snapdue", uid, settings.redis_index_shards)


def make_due(settings: CommonSettings, users: list[str], at: float) -> None:
    """Let the seeded snapshots of ``users`` fall due at ``at`` (one ZADD per shard)."""
    by_shard: dict[str, dict[str, float]] = {}
    for uid in users:
        by_shard.setdefault(due_key(settings, uid), {})[uid] = at
    r = redis.Redis.from_url(settings.redis_url)
    with r.pipeline(transaction=False) as pipe:
        for key, members in by_shard.items():
            pipe.zadd(key, members)
        pipe.execute()

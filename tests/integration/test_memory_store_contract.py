"""The in-memory store answers like Redis: the same writes, the same answers, in order.

``services.offline_replay`` (and ``bench cdnow --in-process``) run the scorer's
replay code on ``MemoryUserStore``; the order of silent users and of labels due
decides what is re-scored and learned when, so it must be Redis's order, not the
memory store's idea of it. Each scenario runs on both and the answers must match.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import pytest

from services.common.redis_client import async_redis
from services.notifier.adapters.redis_layout import erased_key
from services.scorer.adapters.memory_store import MemoryUserStore
from services.scorer.adapters.redis_store import RedisUserStore
from services.scorer.rows import UserWrite
from tests.conftest import Isolated

pytestmark = pytest.mark.integration

SHARDS = 8
USERS = [f"u{i}" for i in range(40)]


def write(uid: str, **changes: Any) -> UserWrite:
    base: dict[str, Any] = {"user_id": uid, "features": f"F{uid}".encode(), "policy": None}
    base |= {"record": None, "last_active": 100.0, "risk": None}
    return UserWrite(**(base | changes))


async def exercise(store: Any, erase: Callable[[str], Awaitable[None]]) -> list[Any]:
    """Writes and reads a worker makes, and every answer the store gave; ``erase`` raises
    a user's erase guard as the risk API's erase does."""
    answers: list[Any] = []
    # Erased before its first event: read as erased, and not written.
    await erase("gone")
    await store.save([write("gone")])
    answers.append({u: r.erased for u, r in (await store.load(["gone", USERS[0]])).items()})
    await store.save(
        [
            write(
                uid,
                policy=b"P" if i % 2 else None,
                record=b"R" if i % 2 else None,
                last_active=100.0 + i % 5,
                snapshot=f"s{i}a".encode(),
                snapshot_day=3,
                label_due=50.0 + i % 5,
            )
            for i, uid in enumerate(USERS)
        ]
    )
    # Not re-scored: features change, the score stays; a second snapshot for some.
    await store.save(
        [
            write(
                uid,
                features=b"G",
                last_active=110.0 + i % 3,
                snapshot=f"s{i}b".encode() if i % 3 == 0 else None,
                snapshot_day=4 if i % 3 == 0 else None,
                label_due=70.0 + i % 4 if i % 3 == 0 else None,
            )
            for i, uid in enumerate(USERS[:20])
        ]
    )
    answers.append(await store.silent_between([(100.0, 102.0), (104.0, 111.0)]))
    answers.append(await store.users_with_labels_due(52.0, limit=7))
    answers.append(await store.users_with_labels_due(60.0, limit=100))
    rows = await store.load(USERS)
    answers.append({u: (r.features, r.policy, r.record, r.snapshot_day) for u, r in rows.items()})
    answers.append(await store.load(["gone"]))
    answers.append(await store.load_snapshots(USERS))
    await store.keep_snapshots({u: (1, 90.0 if n % 2 else None) for n, u in enumerate(USERS[:12])})
    answers.append(await store.load_snapshots(USERS[:15]))
    answers.append(await store.users_with_labels_due(1e9, limit=100))
    return answers


def test_memory_store_answers_as_redis_does(isolated: Isolated) -> None:
    async def on_redis() -> list[Any]:
        client = async_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
        store = RedisUserStore(
            client,
            prefix=isolated.settings.key_prefix,
            user_ttl_s=3600,
            index_shards=SHARDS,
        )
        prefix = isolated.settings.key_prefix

        async def erase(uid: str) -> None:
            await client.set(erased_key(prefix, uid), "1", ex=3600)

        try:
            return await exercise(store, erase)
        finally:
            await client.aclose()

    in_redis = asyncio.run(on_redis())
    memory = MemoryUserStore(index_shards=SHARDS)

    async def erase(uid: str) -> None:
        memory.erased.add(uid)

    in_memory = asyncio.run(exercise(memory, erase))
    assert in_redis[0] == {"gone": True, USERS[0]: False}
    assert in_redis[0] and in_redis[1] and in_redis[-1]  # the scenario reaches every query
    for n, (real, memory) in enumerate(zip(in_redis, in_memory, strict=True)):
        assert memory == real, f"answer {n}"

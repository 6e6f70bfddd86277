"""The one place Redis clients are made: a plain client, or a Redis Cluster client.

``CHURNWATCH_REDIS_CLUSTER=true`` says that ``CHURNWATCH_REDIS_URL`` names one
node of a Redis Cluster (any node: the client discovers the others and follows
slot moves). Code that needs to know, because a command or a transaction would
span slots, asks :func:`is_cluster`. Nothing connects until the first command.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import redis
import redis.asyncio as aioredis

AsyncRedis: TypeAlias = aioredis.Redis | aioredis.RedisCluster
SyncRedis: TypeAlias = redis.Redis | redis.RedisCluster


def async_redis(url: str, *, cluster: bool = False, **options: Any) -> AsyncRedis:
    """An asyncio client for ``url``; ``options`` go to redis-py (timeouts ...).

    >>> type(async_redis("redis://127.0.0.1:1/0")).__name__
    'Redis'
    """
    if cluster:
        return aioredis.RedisCluster.from_url(url, **options)
    return aioredis.Redis.from_url(url, **options)


def sync_redis(url: str, *, cluster: bool = False, **options: Any) -> SyncRedis:
    """A blocking client for ``url`` (CLI commands, tests, benchmarks)."""
    if cluster:
        return redis.RedisCluster.from_url(url, **options)
    return redis.Redis.from_url(url, **options)


def is_cluster(client: object) -> bool:
    """Whether ``client`` talks to a Redis Cluster (multi-slot commands are refused).

    >>> is_cluster(async_redis("redis://127.0.0.1:1/0"))
    False
    """
    return isinstance(client, aioredis.RedisCluster | redis.RedisCluster)

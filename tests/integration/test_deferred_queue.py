"""The notifier's deferred queue on real Redis and on a Redis Cluster: a claimed job is
leased, never lost."""

from __future__ import annotations

import asyncio

import pytest

from services.common.redis_client import async_redis
from services.notifier.adapters.redis_directory import RedisDirectory
from tests.conftest import Isolated

pytestmark = pytest.mark.integration


def test_a_claimed_job_comes_back_if_its_notifier_dies(isolated_each: Isolated) -> None:
    settings = isolated_each.settings

    async def scenario() -> list[int]:
        client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
        queue = RedisDirectory(client, prefix=settings.key_prefix, lease_s=60)
        job = {"alert": {"user_id": "u1", "alert_id": "a1"}, "playbook": "p", "decision": {}}
        await queue.defer(job, 1000.0)
        seen = [len(await queue.due(999.0))]  # not due yet
        [claimed] = await queue.due(1000.0)
        seen.append(1)
        seen.append(len(await queue.due(1000.0)))  # claimed: nobody else gets it
        seen.append(len(await queue.due(1059.0)))  # still leased
        [again] = await queue.due(1060.0)  # the claimer died: the lease ended
        seen.append(int(again["alert"] == claimed["alert"]))
        await queue.finish(again)
        seen.append(len(await queue.due(10_000.0)))  # finished: gone for good
        seen.append(await queue.deferred_depth())
        await client.aclose()
        return seen

    assert asyncio.run(scenario()) == [0, 1, 0, 0, 1, 0, 0]

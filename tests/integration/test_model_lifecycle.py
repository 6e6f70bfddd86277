"""The scorer's model life cycle on real Redis, driven by a manual clock.

No Faust here: the runtime's batch handler and timer work are called directly,
so days of event time pass in milliseconds. Redis is the real local one.
"""

from __future__ import annotations

import asyncio
import time

import orjson
import pytest

from services.common.clock import ManualClock
from services.scorer.config import ScorerSettings
from services.scorer.pipeline import Outcome, Record
from services.scorer.runtime import Runtime
from services.sim.generator import DAY, SimUser, event
from tests.conftest import Isolated

pytestmark = pytest.mark.integration
T0 = 1_780_000_000.0  # 2026-05-28, a fixed start so runs are reproducible


def runtime_for(isolated: Isolated, clock: ManualClock) -> Runtime:
    settings = ScorerSettings(
        redis_url=isolated.settings.redis_url,
        key_prefix=isolated.settings.key_prefix,
        scorer_worker_name=f"{isolated.run}-w",
        scorer_checkpoint_every=10_000,
    )
    runtime = Runtime(settings)
    runtime.clock = clock
    return runtime


def records(events: list[dict]) -> list[Record]:
    return [
        Record(e["user_id"].encode(), orjson.dumps(e), "user-events", 0, i)
        for i, e in enumerate(events)
    ]


async def feed(runtime: Runtime, events: list[dict]) -> Outcome:
    scorer = await runtime.scorer()
    return await scorer.handle(records(events))


def test_decaying_user_alerts_before_the_inactivity_horizon(isolated: Isolated) -> None:
    async def scenario() -> list[dict]:
        clock = ManualClock(T0)
        runtime = runtime_for(isolated, clock)
        user = SimUser("decay-1", "fading", "UTC", "premium", 2.0)
        alerts = []
        seq = 0
        # Three weeks of daily use, one more week at every other day, then silence.
        for day in range(60):
            clock.set(T0 + day * DAY + 3600)
            if day < 21 or (day < 28 and day % 2 == 0):
                seq += 1
                out = await feed(runtime, [event(user, "session_start", clock.now(), seq)])
            else:
                out = await runtime.sweep()
            alerts += [a.to_dict() for a in out.alerts]
            if alerts:
                return [{"day": day, **alerts[0]}]
        return alerts

    alerts = asyncio.run(scenario())
    assert alerts, "no alert although the user went silent"
    first = alerts[0]
    silent_days = first["day"] - 26
    assert 0 < silent_days < 30, f"alert after {silent_days} silent days"
    assert first["band"] in ("high", "critical")
    named = {r["feature"] for r in first["reasons"]}
    assert named & {"recency_days", "trend_7d_vs_30d", "active_days_30d"}, named


def test_labels_resolve_learn_and_survive_a_restart(isolated: Isolated) -> None:
    async def scenario() -> tuple[int, str, str, float, float]:
        clock = ManualClock(T0)
        runtime = runtime_for(isolated, clock)
        users = [SimUser(f"lab-{i}", "casual", "UTC", "basic", 1.0) for i in range(40)]
        seq = 0
        for day in range(40):
            clock.set(T0 + day * DAY + 600)
            batch = []
            for i, user in enumerate(users):
                churner = i % 4 == 0
                if churner and day == 10:
                    seq += 1
                    batch.append(event(user, "subscription_cancelled", clock.now(), seq))
                elif not churner or day < 10:
                    seq += 1
                    batch.append(event(user, "login", clock.now(), seq))
            await feed(runtime, batch)
            await runtime.sweep()
        learned = runtime.quality.counts
        await runtime.checkpoint()
        probe = {"recency_days": 3.0, "events_30d": 4.0, "active_days_30d": 4.0}
        before = runtime.core.model.score(probe).risk
        tiers = runtime.core.quantiles.to_dict()

        restarted = runtime_for(isolated, clock)
        await restarted.scorer()
        after = restarted.core.model.score(probe).risk
        # The value tiers' quantiles come back too, not an empty sample.
        assert restarted.core.quantiles.to_dict() == tiers and tiers["n"] > 0
        runtime.close()  # its learning process
        return (
            sum(learned.values()),
            runtime.core.model.version,
            restarted.core.model.version,
            before,
            after,
        )

    total, version, restored_version, before, after = asyncio.run(scenario())
    assert total > 0, "no label was resolved"
    assert version == restored_version
    assert before == after


def test_a_user_active_again_after_a_winback_counts_as_won(isolated: Isolated) -> None:
    import redis.asyncio as aioredis

    from services.notifier.adapters.redis_directory import RedisDirectory

    async def scenario() -> tuple[bytes | None, bytes | None, bytes | None]:
        clock = ManualClock(T0)
        runtime = runtime_for(isolated, clock)
        user = SimUser("wb-1", "fading", "UTC", "basic", 1.0)
        await feed(runtime, [event(user, "login", T0 - 20 * DAY, 1)])
        client = aioredis.Redis.from_url(isolated.settings.redis_url)
        directory = RedisDirectory(client, prefix=isolated.settings.key_prefix)
        action = {"action_id": "x1", "alert_id": "a1", "user_id": "wb-1", "status": "sent"}
        winback = {"alert_id": "a1", "playbook": "dormant", "group": "treated", "at": T0}
        for _ in range(2):  # a second action of the same alert does not count again
            await directory.record("wb-1", action, contacted=True, winback=winback)
        clock.set(T0 + 3 * DAY)
        await feed(runtime, [event(user, "login", T0 + 3 * DAY, 2)])
        prefix = isolated.settings.key_prefix
        # P:winback:<playbook>:<group>:{treated,won}: decisions counted, and users won back
        treated = await client.get(f"{prefix}:winback:dormant:treated:treated")
        won = await client.get(f"{prefix}:winback:dormant:treated:won")
        pending = await client.hget(f"{prefix}:{{wb-1}}:u", "wb")
        await client.aclose()
        return treated, won, pending

    treated, won, pending = asyncio.run(scenario())
    assert (treated, won, pending) == (b"1", b"1", None)


def test_an_alert_stored_but_not_published_is_republished_after_a_crash(
    isolated: Isolated,
) -> None:
    async def scenario() -> tuple[list[str], list[str], list[str]]:
        clock = ManualClock(T0)
        runtime = runtime_for(isolated, clock)
        user = SimUser("outbox-1", "fading", "UTC", "basic", 1.0)
        history = [event(user, "session_start", T0 - (40 - d) * DAY, d) for d in range(20)]
        out = await feed(runtime, history)  # silent for 20 days: alerts at once
        raised = [a.alert_id for a in out.alerts]
        # The worker "dies" here: the state says alerted, Kafka never acknowledged.
        restarted = runtime_for(isolated, clock)
        pending = [a.alert_id for a in (await restarted.unpublished()).alerts]
        await restarted.after_batch(await restarted.unpublished())  # now published
        left = [a.alert_id for a in (await runtime_for(isolated, clock).unpublished()).alerts]
        return raised, pending, left

    raised, pending, left = asyncio.run(scenario())
    assert raised and pending == raised and left == []


def test_signup_cohorts_count_day_1_and_day_7_retention(isolated: Isolated) -> None:
    import redis.asyncio as aioredis

    async def scenario() -> list[int]:
        clock = ManualClock(T0)
        runtime = runtime_for(isolated, clock)
        users = [SimUser(f"co-{i}", "casual", "UTC", "basic", 1.0) for i in range(4)]
        for day in (0, 1, 7):
            clock.set(T0 + day * DAY + 60)
            # All four sign up on day 0; two come back on day 1, one on day 7.
            active = {0: users, 1: users[:2], 7: users[:1]}[day]
            kind = "signup" if day == 0 else "login"
            await feed(runtime, [event(u, kind, clock.now(), day) for u in active])
        client = aioredis.Redis.from_url(isolated.settings.redis_url)
        cohort = time.strftime("%Y%m%d", time.gmtime(T0))
        counts = [
            await client.pfcount(f"{isolated.settings.key_prefix}:cohort:{cohort}:d{k}")
            for k in (0, 1, 7, 30)
        ]
        await client.aclose()
        return counts

    assert asyncio.run(scenario()) == [4, 2, 1, 0]

"""The notifier's Redis directory on one Redis and on a three-master Redis Cluster.

What the notifier and ``churnwatch notifier redrive`` ask of Redis, through
:class:`RedisDirectory`, once on each kind of Redis (``isolated_each``):
decisions recorded with their done marks, frequency-cap window and history, a
win-back decision counted once per alert, published marks, and the
failed-delivery store with a re-drive's lease (the deferred queue's lease is
tests/integration/test_deferred_queue.py). On the cluster the count is a step
of its own: a crash before it, or between it and removing the pending mark, is
finished by the user's next write, once.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
from redis.crc import key_slot
from redis.exceptions import ConnectionError as RedisConnectionError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis, async_redis, is_cluster
from services.common.settings import CommonSettings
from services.demo_users import noon_zone
from services.notifier.adapters.redis_directory import (
    COUNT_ONCE,
    COUNTED_S,
    RedisDirectory,
    counted_key,
    erased_key,
    treated_key,
    ukey,
)
from services.notifier.channels.base import Message, RetryPolicy
from services.notifier.config import NotifierSettings
from services.notifier.core.playbooks import load_playbooks
from services.notifier.core.templates import Brand, Renderer
from services.notifier.runtime import NotifierRuntime
from services.notifier.service import Notifier
from services.scorer.api.commands import AdminCommands
from tests.conftest import Isolated
from tests.notifier_data import sample_alert
from tests.service.test_notifier_service import treated_user

pytestmark = pytest.mark.integration


def action(alert_id: str, channel: str, status: str = "sent") -> dict[str, Any]:
    return {"action_id": f"{alert_id}-{channel}", "alert_id": alert_id, "status": status}


def winback(alert_id: str, group: str = "treated") -> dict[str, Any]:
    return {"alert_id": alert_id, "playbook": "vip", "at": 1.0, "group": group}


def run(
    settings: CommonSettings, scenario: Callable[[AsyncRedis, RedisDirectory], Awaitable[None]]
) -> None:
    """``scenario`` with a directory of its own, then every key of the test removed."""

    async def main() -> None:
        client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
        try:
            await scenario(client, RedisDirectory(client, prefix=settings.key_prefix, history=3))
        finally:
            async for key in client.scan_iter(match=f"{settings.key_prefix}:*", count=1000):
                await client.delete(key)
            await client.aclose()

    asyncio.run(main())


async def counter(client: AsyncRedis, prefix: str, name: str) -> int:
    return int(await client.get(treated_key(prefix, name)) or 0)


def test_decisions_are_recorded_and_counted_once_per_alert(isolated_each: Isolated) -> None:
    prefix = isolated_each.settings.key_prefix

    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        assert is_cluster(client) == isolated_each.settings.redis_cluster
        # Two actions of one alert: both done, one contact (the webhook is not one), one count.
        await d.record("u1", action("a1", "webhook"), contacted=False, winback=winback("a1"))
        await d.record("u1", action("a1", "email"), contacted=True, winback=winback("a1"))
        assert await counter(client, prefix, "vip:treated") == 1
        assert await d.already_done("u1", "a1-email") == "sent"
        assert await d.already_done("u1", "a1-webhook") == "sent"
        _, _, sends = await d.profile("u1")
        assert len(sends) == 1
        # The alert redelivered: its action recorded again counts nothing.
        await d.record("u1", action("a1", "email"), contacted=True, winback=winback("a1"))
        assert await counter(client, prefix, "vip:treated") == 1
        # The next alert is the latest decision and counts once more.
        await d.record("u1", action("a2", "email"), contacted=True, winback=winback("a2"))
        assert await counter(client, prefix, "vip:treated") == 2
        assert await client.hget(ukey(prefix, "u1", "u"), "wbid") == b"a2"
        # A control-group decision counts in its own group; a failure leaves no done mark.
        await d.record(
            "u2",
            action("b1", "email", "control"),
            contacted=False,
            winback=winback("b1", "control"),
        )
        await d.record("u2", action("b2", "sms", "failed"), contacted=False, winback=None)
        assert await counter(client, prefix, "vip:control") == 1
        assert await d.already_done("u2", "b1-email") == "control"
        assert await d.already_done("u2", "b2-sms") is None
        # History is capped (history=3 here), nothing is left pending.
        assert await client.llen(ukey(prefix, "u1", "actions")) == 3
        assert [k async for k in client.scan_iter(match=f"{prefix}:*:wbc", count=1000)] == []

        assert not await d.is_published("u1", "a1-email")
        await d.mark_published("u1", ["a1-email", "a1-webhook"])
        await d.mark_published("u1", [])
        assert await d.is_published("u1", "a1-email") and await d.is_published("u1", "a1-webhook")
        assert not await d.is_published("u1", "a2-email")

    run(isolated_each.settings, scenario)


def test_a_deferred_contact_holds_its_place_in_the_cap_window(isolated_each: Isolated) -> None:
    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        soon = time.time() + 3600  # quiet hours end in an hour
        await d.schedule_contact("u1", "a1-email", soon)
        await d.schedule_contact("u1", "a1-sms", soon)
        _, _, sends = await d.profile("u1")
        assert sends == {"a1-email": soon, "a1-sms": soon}
        # Sent when due: its place moves to the send; suppressed: it leaves the window.
        await d.record("u1", action("a1", "email"), contacted=True, winback=None)
        await d.record("u1", action("a1", "sms", "suppressed"), contacted=False, winback=None)
        _, _, sends = await d.profile("u1")
        assert list(sends) == ["a1-email"] and sends["a1-email"] < soon
        # A deferral recorded as such keeps the scheduled place.
        await d.schedule_contact("u1", "a2-email", soon)
        await d.record("u1", action("a2", "email", "deferred"), contacted=False, winback=None)
        _, _, sends = await d.profile("u1")
        assert sends["a2-email"] == soon

    run(isolated_each.settings, scenario)


def test_failed_deliveries_and_the_redrive_lease(isolated_each: Isolated) -> None:
    prefix = isolated_each.settings.key_prefix

    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        for n, failed_at in (("x2", 20.0), ("x1", 10.0)):
            await d.remember_failed({"action_id": n, "user_id": "u1", "failed_at": failed_at})
        assert [j["action_id"] for j in await d.failed_jobs()] == ["x1", "x2"]
        assert await d.failed_depth() == 2

        claimed = await d.claim_failed("x1", lease_s=60)
        assert claimed is not None and claimed["action_id"] == "x1"
        assert await d.claim_failed("x1", lease_s=60) is None  # another re-drive holds it
        await d.release_failed("x1", settled=False)  # failed again: stays, free to claim
        assert await d.claim_failed("x1", lease_s=60) is not None
        await d.release_failed("x1", settled=True)
        assert await d.claim_failed("x1", lease_s=60) is None  # settled: gone
        assert await client.exists(f"{prefix}:failed:lease:x1") == 0
        assert await d.failed_depth() == 1

        assert await d.claim_failed("x2", lease_s=0.2) is not None
        await asyncio.sleep(0.3)  # the re-drive died: its lease ends
        assert await d.claim_failed("x2", lease_s=60) is not None

    run(isolated_each.settings, scenario)


def test_the_runtime_builds_the_configured_client(isolated_each: Isolated) -> None:
    s = isolated_each.settings
    runtime = NotifierRuntime(NotifierSettings.model_validate(s.model_dump()))

    async def main() -> tuple[bool, int]:
        await runtime.notifier()
        try:
            return is_cluster(runtime.directory.r), await runtime.directory.deferred_depth()
        finally:
            await runtime.directory.r.aclose()

    assert asyncio.run(main()) == (s.redis_cluster, 0)


class DiesBeforeTheCount(RedisDirectory):
    """A notifier killed right after the user's step of a record (cluster)."""

    async def _count(self, user_id: str, pending: list[Any]) -> None:
        if pending:
            raise RedisConnectionError("killed before the count")


def test_an_interrupted_count_is_finished_once(isolated_cluster: Isolated) -> None:
    prefix = isolated_cluster.settings.key_prefix
    name = treated_key(prefix, "vip:treated")
    assert key_slot(name.encode()) != key_slot(ukey(prefix, "u1", "u").encode())

    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        dying = DiesBeforeTheCount(client, prefix=prefix)

        # 1. Killed between the decision and the count: the mark waits for the
        #    redelivered alert, whose mark_published counts it.
        with pytest.raises(StoreUnavailable):
            await dying.record("u1", action("a1", "email"), contacted=True, winback=winback("a1"))
        assert await counter(client, prefix, "vip:treated") == 0
        assert await client.hgetall(ukey(prefix, "u1", "wbc")) == {b"a1": b"vip:treated"}
        assert await d.already_done("u1", "a1-email") == "sent"  # the retry sends nothing
        await d.mark_published("u1", ["a1-email"])
        assert await counter(client, prefix, "vip:treated") == 1
        assert await client.exists(ukey(prefix, "u1", "wbc")) == 0

        # 2. Killed between the count and removing the mark: the next write removes it
        #    without counting again.
        with pytest.raises(StoreUnavailable):
            await dying.record("u1", action("a2", "email"), contacted=True, winback=winback("a2"))
        await client.eval(COUNT_ONCE, 2, name, counted_key(prefix, name, "a2"), COUNTED_S)
        assert await counter(client, prefix, "vip:treated") == 2
        await d.record("u1", action("a2", "email"), contacted=True, winback=winback("a2"))
        assert await counter(client, prefix, "vip:treated") == 2
        assert await client.exists(ukey(prefix, "u1", "wbc")) == 0

        # 3. Several writers finish one pending mark at once: one count.
        with pytest.raises(StoreUnavailable):
            await dying.record("u1", action("a3", "email"), contacted=True, winback=winback("a3"))
        others = [RedisDirectory(client, prefix=prefix) for _ in range(4)]
        await asyncio.gather(*(o.mark_published("u1", ["a3-email"]) for o in others))
        assert await counter(client, prefix, "vip:treated") == 3
        assert await client.exists(ukey(prefix, "u1", "wbc")) == 0

    run(isolated_cluster.settings, scenario)


def test_an_erased_users_keys_are_not_written_back(isolated_each: Isolated) -> None:
    """A delivery under way when the erase came records nothing; saving consent lifts it."""
    prefix = isolated_each.settings.key_prefix

    async def user_keys(client: AsyncRedis) -> list[str]:
        found = client.scan_iter(match=f"{prefix}:{{u1}}:*", count=1000)
        return sorted([k.decode() async for k in found])

    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        admin = AdminCommands(client, prefix=prefix)
        await d.record("u1", action("a1", "email"), contacted=True, winback=winback("a1"))
        await admin.erase("u1")
        assert await d.is_erased("u1")
        assert await user_keys(client) == [erased_key(prefix, "u1")]

        # What an alert, a deferred job or a re-drive already under way writes next.
        await d.record("u1", action("a2", "email"), contacted=True, winback=winback("a2"))
        await d.schedule_contact("u1", "a3-email", time.time() + 60)
        await d.mark_published("u1", ["a2-email"])
        assert await user_keys(client) == [erased_key(prefix, "u1")]
        if not is_cluster(client):  # one Redis counts with the decision: not this one
            assert await counter(client, prefix, "vip:treated") == 1

        await admin.save_consent("u1", {"email": False}, None)  # a bulk import, a refusal
        assert await d.is_erased("u1")
        await admin.save_consent("u1", {"email": True}, None, lift_erase=True)  # the API
        assert not await d.is_erased("u1")
        await d.record("u1", action("a4", "email"), contacted=True, winback=None)
        assert await d.already_done("u1", "a4-email") == "sent"

    run(isolated_each.settings, scenario)


class ErasesWhileSending:
    """An e-mail provider that takes the message, and the user is erased meanwhile."""

    name = "email"

    def __init__(self, admin: AdminCommands, user_id: str) -> None:
        self.admin = admin
        self.user_id = user_id
        self.sent: list[Message] = []

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        await self.admin.erase(self.user_id)


def test_an_erase_during_a_send_leaves_only_its_guard(isolated_each: Isolated) -> None:
    """The message already handed over is gone; nothing of the user comes back after it."""
    prefix = isolated_each.settings.key_prefix
    uid = treated_user(f"erased-{isolated_each.run}")

    async def scenario(client: AsyncRedis, d: RedisDirectory) -> None:
        admin = AdminCommands(client, prefix=prefix)
        zone = noon_zone(time.time())  # daytime: no quiet hours
        await admin.save_contact(uid, {"email": f"{uid}@example.test", "timezone": zone})
        await admin.save_consent(uid, {"email": True}, None)
        provider = ErasesWhileSending(admin, uid)
        notifier = Notifier(
            book=load_playbooks(),
            directory=d,
            channels={"email": provider},
            renderer=Renderer(),
            brand=Brand(name="Acme", url="https://acme.example"),
            retry=RetryPolicy(attempts=1, base_s=0.01, cap_s=0.01),
        )
        # Sent (that message is gone), then nothing published and nothing recorded.
        assert await notifier.handle_alert(sample_alert(uid)) == []
        assert len(provider.sent) == 1
        await d.mark_published(uid, ["anything"])  # a late mark writes nothing either
        keys = sorted([k.decode() async for k in client.scan_iter(match=f"{prefix}:{{{uid}}}:*")])
        assert keys == [erased_key(prefix, uid)]

    run(isolated_each.settings, scenario)

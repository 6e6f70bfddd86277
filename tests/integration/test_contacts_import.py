"""``churnwatch contacts import`` into the real Redis (and a Redis Cluster), read back by the
notifier's directory."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from services.common.redis_client import async_redis
from services.common.settings import CommonSettings
from services.notifier.adapters.redis_directory import RedisDirectory
from services.notifier.contacts_import import run_import
from services.scorer.api.commands import AdminCommands
from tests.conftest import Isolated

pytestmark = pytest.mark.integration

CSV = """user_id,email,phone,timezone,locale,consent_email,consent_sms,preferred
u1,ada@example.com,+4915112345678,Europe/Berlin,de-DE,yes,no,email
u2,not-an-email,,,,yes,,
,someone@example.com,,,,,,
u3,,+14155550100,America/New_York,,,maybe,
"""


def test_import_validates_rows_and_feeds_the_directory(
    isolated_each: Isolated, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    settings = isolated_each.settings
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    counts = run_import(path, settings)
    assert counts == {"imported": 1, "skipped": 3, "erased": 0}
    err = capsys.readouterr().err
    assert "contacts.csv:3: skipped: invalid email" in err
    assert "contacts.csv:4: skipped: user_id is missing" in err
    assert "contacts.csv:5: skipped: consent_sms must be true or false" in err
    assert "not-an-email" not in err and "someone@" not in err  # values are never echoed

    async def profile() -> tuple:
        client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
        try:
            return await RedisDirectory(client, prefix=settings.key_prefix).profile("u1")
        finally:
            await client.aclose()

    contact, consent, _ = asyncio.run(profile())
    assert contact["email"] == "ada@example.com" and contact["timezone"] == "Europe/Berlin"
    assert consent.allows("email") and not consent.allows("sms")
    assert consent.preferred == "email"


def test_import_skips_users_erased_lately(isolated_each: Isolated, tmp_path: Path) -> None:
    """A nightly export that still lists an erased user does not bring them back."""
    settings = isolated_each.settings
    path = tmp_path / "contacts.csv"
    path.write_text(CSV)
    run_import(path, settings)

    async def erase_then_read() -> tuple:
        client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
        try:
            await AdminCommands(client, prefix=settings.key_prefix).erase("u1")
            counts = run_import_in_thread(path, settings)
            directory = RedisDirectory(client, prefix=settings.key_prefix)
            return await counts, await directory.profile("u1"), await directory.is_erased("u1")
        finally:
            await client.aclose()

    counts, (contact, consent, _), erased = asyncio.run(erase_then_read())
    assert counts == {"imported": 0, "skipped": 3, "erased": 1}
    assert contact == {} and not consent.allows("email") and erased


def run_import_in_thread(path: Path, settings: CommonSettings) -> asyncio.Future:
    return asyncio.get_running_loop().run_in_executor(None, run_import, path, settings)

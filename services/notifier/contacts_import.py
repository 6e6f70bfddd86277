"""``churnwatch contacts import FILE``: load the contact directory in bulk.

FILE is CSV with a header or JSON lines. Columns / keys: ``user_id`` (required),
``email``, ``phone``, ``push_token``, ``locale``, ``timezone``, and consent as
``consent_email``, ``consent_sms``, ``consent_push`` (true/false/1/0/yes/no)
plus ``preferred``. Every row is validated exactly as PUT /v1/users/{id}/contact
and /consent validate it; bad rows are reported with their line number and
skipped, and nothing about them (no address, no number) is printed. Users
erased in the last 14 days (the erase's guard) are skipped and counted as
``erased``: a stale export must not bring their details back.
"""

from __future__ import annotations

import asyncio
import csv
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
from pydantic import ValidationError

from services.common.redis_client import async_redis
from services.common.settings import CommonSettings
from services.notifier.adapters.redis_directory import RedisDirectory
from services.scorer.api.commands import AdminCommands
from services.scorer.api.models import ConsentIn, ContactIn

CONTACT_KEYS = ("email", "phone", "push_token", "locale", "timezone")
TRUE, FALSE = {"1", "true", "yes", "y"}, {"0", "false", "no", "n", ""}


def read_rows(path: Path) -> Iterator[tuple[int, dict[str, Any]]]:
    with path.open(newline="", encoding="utf-8") as fh:
        if path.suffix in (".jsonl", ".ndjson", ".json"):
            for n, line in enumerate(fh, start=1):
                if line.strip():
                    yield n, orjson.loads(line)
        else:
            yield from enumerate(csv.DictReader(fh), start=2)


def parse_row(row: dict[str, Any]) -> tuple[str, ContactIn, ConsentIn | None]:
    """Validate one row; ValueError with a message that names fields, never values.

    >>> uid, contact, consent = parse_row({"user_id": "u1", "email": "ada@example.com",
    ...                                    "consent_email": "yes"})
    >>> uid, contact.email, consent.channels if consent else None
    ('u1', 'ada@example.com', {'email': True})
    """
    uid = str(row.get("user_id") or "").strip()
    if not uid:
        raise ValueError("user_id is missing")
    fields = {k: (str(row[k]).strip() or None) for k in CONTACT_KEYS if row.get(k) is not None}
    channels: dict[str, bool] = {}
    for channel in ("email", "sms", "push"):
        raw = row.get(f"consent_{channel}")
        if raw is None:
            continue
        text = str(raw).strip().lower()
        if text not in TRUE | FALSE:
            raise ValueError(f"consent_{channel} must be true or false")
        channels[channel] = text in TRUE
    try:
        contact = ContactIn(**fields)
        consent = (
            ConsentIn.model_validate(
                {"channels": channels, "preferred": row.get("preferred") or None}
            )
            if channels
            else None
        )
    except ValidationError as exc:
        names = sorted({".".join(map(str, e["loc"])) or "row" for e in exc.errors()})
        raise ValueError(f"invalid {', '.join(names)}") from None
    return uid, contact, consent


async def import_contacts(path: Path, settings: CommonSettings) -> dict[str, int]:
    client = async_redis(settings.redis_url, cluster=settings.redis_cluster)
    commands = AdminCommands(client, prefix=settings.key_prefix)
    directory = RedisDirectory(client, prefix=settings.key_prefix)
    counts = {"imported": 0, "skipped": 0, "erased": 0}
    try:
        for line, row in read_rows(path):
            try:
                uid, contact, consent = parse_row(row)
            except ValueError as exc:
                counts["skipped"] += 1
                print(f"{path}:{line}: skipped: {exc}", file=sys.stderr)
                continue
            if await directory.is_erased(uid):  # a stale export must not bring them back
                counts["erased"] += 1
                continue
            await commands.save_contact(uid, contact.model_dump())
            if consent is not None:
                channels = {str(k): v for k, v in consent.channels.items()}
                await commands.save_consent(uid, channels, consent.preferred)
            counts["imported"] += 1
            if counts["imported"] % 10_000 == 0:
                print(f"  {counts['imported']:,} imported", file=sys.stderr)
    finally:
        await client.aclose()
    return counts


def run_import(path: Path, settings: CommonSettings) -> dict[str, int]:
    return asyncio.run(import_contacts(path, settings))

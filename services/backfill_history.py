"""What of a history ``churnwatch backfill`` applies: not erased users', not what is stored.

Read from the deployment's Redis before the replay starts: each user's erase
guard and the time of its last stored event. Apart from :mod:`services.backfill`
(which runs the replay and hands its model over) because it is the one part
that decides, line by line, what reaches the scorer.
"""

from __future__ import annotations

import math
from typing import Any

import orjson

from services.common.errors import BROKEN_VALUE
from services.notifier.adapters.redis_layout import erased_key
from services.replay_worker import say
from services.scorer.adapters.redis_layout import user_fields, user_key
from services.scorer.core.state_codec import decode_state


def to_apply(
    lines: list[tuple[float, bytes]], redis: Any, prefix: str
) -> tuple[list[tuple[float, bytes]], int, int]:
    """The history without what must not be applied, and how many events each left out:

    - the events of users erased lately (the erase's guard is there): a backfill
      must not bring them back;
    - the events of a user already stored that came before its last event: a
      backfill that stopped, run again with ``--force``, stored each user's events
      in time order up to the one it stopped at, and the scorer recognises a
      repeat by id only among the user's last 512. Over a live deployment's
      user, they are older than what its rolling state holds.

    A line the scorer cannot read is kept (it dead-letters it with the reason),
    unless it names an erased user: the dead letters keep whole lines.
    """
    users: dict[str, list[int]] = {}
    for n, (_, line) in enumerate(lines):
        try:
            uid = orjson.loads(line).get("user_id")
        except (orjson.JSONDecodeError, AttributeError):
            continue
        if isinstance(uid, str):
            users.setdefault(uid, []).append(n)
    keep = bytearray(b"\x01") * len(lines)
    erased = applied = 0
    names = list(users)
    for start in range(0, len(names), 10_000):
        part = names[start : start + 10_000]
        pipe = redis.pipeline(transaction=False)
        for uid in part:
            pipe.exists(erased_key(prefix, uid))
            pipe.get(user_key(prefix, uid, "s"))
            pipe.hmget(user_key(prefix, uid), "f", "r")
        found = pipe.execute()
        for i, uid in enumerate(part):
            hit, blob, legacy = found[3 * i : 3 * i + 3]
            if hit:
                older = users[uid]
                erased += len(older)
            elif (last := last_seen(blob, legacy)) is not None:
                # A time that could not be read is -inf: kept, for its dead letter.
                older = [n for n in users[uid] if -math.inf < lines[n][0] < last]
                applied += len(older)
            else:
                continue
            for n in older:
                keep[n] = 0
    if erased:
        say(f"left out: {erased:,} events of users erased in the last 14 days")
    if applied:
        say(f"left out: {applied:,} events older than their user's last stored event")
    return [pair for pair, kept in zip(lines, keep, strict=True) if kept], erased, applied


def last_seen(blob: bytes | None, legacy: list[Any]) -> int | None:
    """The time of the user's last stored event (None: nothing stored, or unreadable:
    the scorer then sets the user's events aside, as it does live)."""
    try:
        features, _ = user_fields(blob, legacy)
        return decode_state(features).last_seen if features else None
    except BROKEN_VALUE:  # UnreadableStored is a ValueError
        return None

"""A seeded generator of user activity (schema v1) with known churners.

Users follow one of four archetypes: ``loyal`` keep a daily habit, ``casual``
come a few times a week, ``fading`` let their habit decay and stop, and
``frustrated`` hit friction (payment failures, tickets, complaints) and cancel.
The same seed gives the same events.

>>> users = make_users(4, seed=1)
>>> [u.user_id for u in users]
['user-00000', 'user-00001', 'user-00002', 'user-00003']
>>> evs = list(history(users[0], start=0.0, days=3, seed=1))
>>> all(a["occurred_at"] <= b["occurred_at"] for a, b in zip(evs, evs[1:]))
True
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

DAY = 86_400.0
ARCHETYPES = ("loyal", "casual", "fading", "frustrated")
WEIGHTS = (0.35, 0.35, 0.15, 0.15)
ZONES = ("UTC", "Europe/Berlin", "America/New_York", "Asia/Shanghai", "Asia/Tokyo")
FEATURES = ("search", "playlist", "share", "export", "offline", "profile")


@dataclass(frozen=True)
class SimUser:
    user_id: str
    archetype: str
    timezone: str
    plan: str
    daily_rate: float  # expected sessions per day at the start

    @property
    def churner(self) -> bool:
        return self.archetype in ("fading", "frustrated")


def make_users(n: int, *, seed: int, prefix: str = "user") -> list[SimUser]:
    rng = random.Random(seed)
    users = []
    for i in range(n):
        kind = rng.choices(ARCHETYPES, WEIGHTS)[0]
        rate = {"loyal": 2.0, "casual": 0.6, "fading": 1.2, "frustrated": 0.9}[kind]
        users.append(
            SimUser(
                f"{prefix}-{i:05d}",
                kind,
                rng.choice(ZONES),
                rng.choice(("free", "basic", "premium")),
                rate,
            )
        )
    return users


def rfc3339(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def event(user: SimUser, kind: str, ts: float, seq: int, **props: Any) -> dict[str, Any]:
    return {
        "event_id": f"{user.user_id}-{seq:06d}",
        "user_id": user.user_id,
        "type": kind,
        "occurred_at": rfc3339(ts),
        "properties": props,
        "context": {"platform": "web", "app_version": "5.2.0", "timezone": user.timezone},
    }


def _rate(user: SimUser, day: int, days: int) -> float:
    """Sessions per day on ``day`` of ``days``: fading users decay to nothing."""
    if user.archetype == "fading":
        stop = days * 0.6
        return 0.0 if day >= stop else user.daily_rate * (1 - day / stop)
    if user.archetype == "frustrated":
        return user.daily_rate * (0.5 if day > days * 0.5 else 1.0)
    return user.daily_rate


def history(user: SimUser, *, start: float, days: int, seed: int) -> Iterator[dict[str, Any]]:
    """The user's events from ``start`` for ``days`` days, in event-time order."""
    rng = random.Random(f"{seed}:{user.user_id}")
    seq = 0
    yield event(user, "signup", start, seq, plan=user.plan)
    for day in range(days):
        day_start = start + day * DAY
        sessions = _poisson(rng, _rate(user, day, days))
        for t in sorted(rng.uniform(0, DAY * 0.9) for _ in range(sessions)):
            ts = day_start + t
            seq += 1
            sid = f"s{seq}"
            yield event(user, "session_start", ts, seq, session_id=sid)
            for _ in range(rng.randint(1, 4)):
                ts += rng.uniform(10, 300)
                seq += 1
                yield event(user, "feature_used", ts, seq, feature=rng.choice(FEATURES))
            ts += rng.uniform(30, 600)
            seq += 1
            yield event(
                user,
                "session_end",
                ts,
                seq,
                session_id=sid,
                duration_s=round(rng.uniform(60, 1800), 1),
            )
            if user.plan != "free" and rng.random() < 0.03:
                seq += 1
                yield event(
                    user,
                    "purchase",
                    ts + 5,
                    seq,
                    amount=round(rng.uniform(5, 60), 2),
                    currency="USD",
                )
        if user.archetype == "frustrated" and day > days * 0.5:
            for kind in ("payment_failed", "support_ticket", "complaint"):
                if rng.random() < 0.25:
                    seq += 1
                    yield event(user, kind, day_start + DAY * 0.95, seq)
    if user.archetype == "frustrated":
        yield event(user, "subscription_cancelled", start + days * DAY - 60, seq + 1)


def _poisson(rng: random.Random, lam: float) -> int:
    """Knuth's method; small rates only."""
    if lam <= 0:
        return 0
    limit, k, p = pow(2.718281828459045, -lam), 0, 1.0
    while True:
        p *= rng.random()
        if p <= limit:
            return k
        k += 1

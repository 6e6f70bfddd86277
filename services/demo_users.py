"""What the demo's simulated users send: their contacts to Redis, their events to ingest.

:func:`register_contacts` gives each user an e-mail address, consent, and a
time zone where it is about noon (:func:`noon_zone`) so quiet hours never hold
the demo's mail; :func:`send_history` and :func:`live_traffic` post their events
to ingest's ``/v1/events`` through :func:`post`, which waits out a 503.
"""

from __future__ import annotations

import random
import time
from typing import Any

import httpx
import orjson

from services.common.redis_client import sync_redis
from services.common.settings import CommonSettings
from services.launcher import Services
from services.sim.generator import SimUser, event, history


def noon_zone(now: float) -> str:
    """A fixed-offset zone where it is about noon now, so quiet hours never hold the demo's mail.

    >>> noon_zone(0.0)  # 00:00 UTC is noon at UTC+12
    'Etc/GMT-12'
    """
    offset = 12 - time.gmtime(now).tm_hour
    offset = offset if offset <= 12 else offset - 24
    return "UTC" if offset == 0 else f"Etc/GMT{-offset:+d}"


def register_contacts(settings: CommonSettings, users: list[SimUser]) -> None:
    r = sync_redis(settings.redis_url, cluster=settings.redis_cluster)
    zone = noon_zone(time.time())
    pipe = r.pipeline(transaction=False)
    for u in users:
        pipe.hset(
            f"{settings.key_prefix}:{{{u.user_id}}}:contact",
            mapping={
                "email": f"{u.user_id}@example.test",
                "timezone": zone,
                "locale": "zh-CN" if u.timezone == "Asia/Shanghai" else "en",
            },
        )
        pipe.hset(f"{settings.key_prefix}:{{{u.user_id}}}:consent", mapping={"email": 1})
    pipe.execute()


def post(client: httpx.Client, url: str, events: list[dict[str, Any]]) -> int:
    body = b"\n".join(orjson.dumps(e) for e in events)
    for _ in range(20):
        try:
            r = client.post(
                url,
                content=body,
                headers={
                    "Content-Type": "application/x-ndjson",
                    "Authorization": "Bearer dev-key",  # development mode's key
                },
            )
        except httpx.TransportError:
            time.sleep(0.5)
            continue
        if r.status_code == 503:
            time.sleep(float(r.headers.get("Retry-After", "1")))
            continue
        return int(r.json().get("accepted", 0))
    raise RuntimeError("ingest did not take the events")


def send_history(
    client: httpx.Client,
    url: str,
    population: list[SimUser],
    *,
    start: float,
    days: int,
    seed: int,
) -> int:
    """Every user's ``days`` of history from ``start``, in batches of at least 2000 events."""
    sent = 0
    batch: list[dict[str, Any]] = []
    for user in population:
        batch += history(user, start=start, days=days, seed=seed)
        if len(batch) >= 2000:
            sent += post(client, url, batch)
            batch = []
    if batch:
        sent += post(client, url, batch)
    return sent


def live_traffic(
    client: httpx.Client,
    url: str,
    population: list[SimUser],
    *,
    duration: float,
    rate: float,
    services: Services,
) -> int:
    """Active users keep using the product; frustrated ones pile up friction."""
    rng = random.Random(11)
    end = time.monotonic() + duration
    sent, seq, last_report = 0, 900_000, time.monotonic()
    active = [u for u in population if not u.churner]
    friction = [u for u in population if u.archetype == "frustrated"]
    while time.monotonic() < end:
        tick = time.monotonic()
        batch = []
        for _ in range(max(1, int(rate / 4))):
            seq += 1
            if friction and rng.random() < 0.1:
                user = rng.choice(friction)
                kind = rng.choice(
                    (
                        "payment_failed",
                        "complaint",
                        "support_ticket",
                        "plan_downgraded",
                        "uninstall",
                    )
                )
            else:
                user, kind = rng.choice(active), rng.choice(("login", "page_view", "feature_used"))
            batch.append(event(user, kind, time.time(), seq))
        sent += post(client, url, batch)
        if time.monotonic() - last_report > 10:
            services.check()
            print(f"  ... {sent} live events sent", flush=True)
            last_report = time.monotonic()
        time.sleep(max(0.0, 0.25 - (time.monotonic() - tick)))
    return sent

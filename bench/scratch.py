"""What a benchmark run borrows from the stack and gives back.

:func:`free_port` finds a loopback port for a service's HTTP or metrics
listener; :func:`cleanup` removes the run's topics and Redis keys.
``churnwatch bench scorer``, ``e2e-latency`` and ``soak`` use both; ``ingest`` the
first.
"""

from __future__ import annotations

import socket

import redis

from services.common.kafka import make_admin
from services.common.settings import CommonSettings


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cleanup(settings: CommonSettings, topics: list[str], *, prefix: str = "") -> None:
    """Remove the run's topics (and with ``prefix`` every topic named so, such as the
    Faust workers' leader topics of the run's groups) and its Redis keys."""
    admin = make_admin(settings)
    try:
        if prefix:
            topics = sorted({*topics, *(t for t in admin.list_topics() if t.startswith(prefix))})
        admin.delete_topics(topics)
    except Exception as exc:  # a leftover topic is harmless; say so and go on
        print(f"could not delete topics: {exc}")
    finally:
        admin.close()
    r = redis.Redis.from_url(settings.redis_url)
    batch = []
    for key in r.scan_iter(match=f"{settings.key_prefix}:*", count=10_000):
        batch.append(key)
        if len(batch) >= 10_000:
            r.unlink(*batch)
            batch = []
    if batch:
        r.unlink(*batch)

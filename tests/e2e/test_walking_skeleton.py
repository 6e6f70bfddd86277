"""One user's events travel ingest → Kafka → scorer → Redis → alert → notifier → SMTP.

Everything is real: Kafka and Redis from the local stack, the four services as
processes, and an SMTP server on loopback. Take any stage out and the e-mail
never arrives.
"""

from __future__ import annotations

import time

import httpx
import orjson
import pytest
from kafka import KafkaConsumer

from services.demo_users import noon_zone
from services.launcher import Services, wait_http
from services.notifier.core.guardrails import in_control_group
from services.notifier.mailcatcher import MailCatcher
from services.sim.generator import DAY, SimUser, event
from tests.conftest import Isolated

pytestmark = pytest.mark.e2e


def fading_user() -> SimUser:
    """A user outside the control group (who would get no e-mail by design)."""
    n = 0
    while in_control_group(f"e2e-user-{n}", 0.1):
        n += 1
    return SimUser(f"e2e-user-{n}", "fading", "Europe/Berlin", "premium", 1.0)


def history_then_silence(user: SimUser, now: float) -> list[dict]:
    """Daily use for three weeks, a failed payment, then 20 days of silence."""
    start = now - 41 * DAY
    events = [event(user, "signup", start, 0)]
    for day in range(21):
        events.append(event(user, "session_start", start + day * DAY + 3600, 2 * day + 1))
        events.append(
            event(user, "feature_used", start + day * DAY + 3700, 2 * day + 2, feature="search")
        )
    events.append(event(user, "payment_failed", start + 20.5 * DAY, 100))
    return events


def test_event_to_email(isolated: Isolated) -> None:
    user = fading_user()
    address = f"{user.user_id}@example.test"
    catcher = MailCatcher("127.0.0.1", isolated.ports["smtp"]).start()
    services = Services(
        isolated.settings,
        isolated.env,
        logs=isolated.out / "logs",
        names=("ingest", "scorer", "notifier"),
    )
    import redis

    r = redis.Redis.from_url(isolated.settings.redis_url)
    prefix = isolated.settings.key_prefix
    r.hset(
        f"{prefix}:{{{user.user_id}}}:contact",
        mapping={"email": address, "timezone": noon_zone(time.time()), "locale": "en"},
    )
    r.hset(f"{prefix}:{{{user.user_id}}}:consent", mapping={"email": 1})
    try:
        services.start()
        wait_http(f"{isolated.url('ingest')}/healthz", 60, services)
        reply = httpx.post(
            f"{isolated.url('ingest')}/v1/events",
            content=orjson.dumps(history_then_silence(user, time.time())),
            headers={"Content-Type": "application/json", "Authorization": "Bearer dev-key"},
            timeout=30,
        )
        assert reply.status_code == 200, reply.text
        assert reply.json()["accepted"] == 44

        deadline = time.monotonic() + 90
        while time.monotonic() < deadline and not catcher.inbox.to(address):
            services.check()
            time.sleep(0.5)
        mails = catcher.inbox.to(address)
        assert len(mails) == 1, f"expected one e-mail to {address}, got {len(mails)}"
        assert mails[0]["To"] == address

        actions = read_topic(isolated, isolated.settings.topic_actions, expect=1)
        assert [(a["user_id"], a["channel"], a["status"]) for a in actions] == [
            (user.user_id, "email", "sent")
        ]
        alerts = read_topic(isolated, isolated.settings.topic_alerts, expect=1)
        assert alerts[0]["alert_id"] == actions[0]["alert_id"]
        assert alerts[0]["band"] in ("high", "critical")
    finally:
        services.stop()
        catcher.stop()


def read_topic(isolated: Isolated, topic: str, *, expect: int) -> list[dict]:
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=isolated.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=10_000,
        enable_auto_commit=False,
    )
    out = []
    for msg in consumer:
        out.append(orjson.loads(msg.value))
        if len(out) >= expect:
            break
    consumer.close()
    return out

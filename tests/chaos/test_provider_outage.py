"""The e-mail provider goes down mid-stream; a re-drive afterwards loses nothing, repeats nothing.

Alerts of distinct users stream to the notifier at a steady rate. A while in,
the SMTP provider starts answering ``421 service not available`` to every
message (the issue's "provider down for a minute", shortened: it stays down
until several deliveries have failed after their retries), then recovers while
alerts keep coming. Some of the failed alerts are then delivered again (a
producer replaying them), so their sends succeed through the worker and their
failed records go stale. Then ``churnwatch notifier redrive`` runs twice:

- every alert's e-mail arrived exactly once (``X-Churnwatch-Action``);
- the first re-drive sent the ones still failed and skipped the stale ones;
  the second found nothing;
- nothing is left in the failed-delivery record, every action is done as sent.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from email import message_from_bytes
from typing import Any

import orjson
import pytest
import redis
from aiosmtpd.controller import Controller
from kafka import KafkaProducer

from services.common.messages import make_action_id
from services.launcher import Services
from services.notifier.core.guardrails import in_control_group
from services.notifier.core.playbooks import load_playbooks
from tests.chaos.conftest import read_topic, wait_caught_up
from tests.conftest import Isolated
from tests.notifier_data import give_email_contacts, sample_alert

pytestmark = pytest.mark.chaos

ALERTS = 60
RATE = 10.0  # alerts per second


class FlakyProvider:
    """An SMTP server that refuses every message with 421 while ``down`` is set."""

    def __init__(self) -> None:
        self.down = threading.Event()
        self.lock = threading.Lock()
        self.delivered: list[str] = []  # X-Churnwatch-Action of each accepted message
        self.refused = 0

    async def handle_MAIL(
        self, server: Any, session: Any, envelope: Any, address: str, *a: Any
    ) -> str:
        if self.down.is_set():
            with self.lock:
                self.refused += 1
            return "421 4.3.2 Service not available"
        envelope.mail_from = address
        return "250 OK"

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        mail = message_from_bytes(envelope.original_content or envelope.content)
        with self.lock:
            self.delivered.append(str(mail["X-Churnwatch-Action"]))
        return "250 Message accepted for delivery"


def users(run: str, n: int) -> list[str]:
    defaults = load_playbooks().defaults
    out, i = [], 0
    while len(out) < n:
        uid = f"po-{run}-{i}"
        if not in_control_group(uid, defaults.control_share, salt=defaults.control_salt):
            out.append(uid)
        i += 1
    return out


def failed_on_topic(chaos: Isolated) -> set[str]:
    return {
        a["action_id"]
        for m in read_topic(chaos.settings, chaos.settings.topic_actions, idle_ms=500)
        if (a := orjson.loads(m.value))["status"] == "failed"
    }


def redrive(env: dict[str, str]) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "notifier", "redrive"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    return done.returncode, orjson.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def test_provider_outage_then_redrive_sends_each_message_once(chaos: Isolated) -> None:
    prefix = chaos.settings.key_prefix
    uids = users(chaos.run, ALERTS)
    r = redis.Redis.from_url(chaos.settings.redis_url)
    give_email_contacts(r, prefix, uids)
    alerts = [sample_alert(uid, model_version="chaos@1") for uid in uids]
    action_ids = {make_action_id(a["alert_id"], "email") for a in alerts}
    env = chaos.env | {
        "CHURNWATCH_NOTIFIER_ATTEMPTS": "3",
        "CHURNWATCH_NOTIFIER_BACKOFF_S": "0.05",
        "CHURNWATCH_NOTIFIER_BACKOFF_CAP_S": "0.2",
    }
    provider = FlakyProvider()
    smtp = Controller(provider, hostname="127.0.0.1", port=chaos.ports["smtp"])
    smtp.start()
    notifier = Services(chaos.settings, env, names=("notifier",), logs=chaos.out / "logs")
    producer = KafkaProducer(bootstrap_servers=chaos.settings.kafka_bootstrap, acks="all")

    def send(alert: dict[str, Any]) -> None:
        producer.send(
            chaos.settings.topic_alerts,
            key=alert["user_id"].encode(),
            value=orjson.dumps(alert),
        ).get(timeout=30)

    try:
        notifier.start()
        started = time.monotonic()
        for i, alert in enumerate(alerts):
            if i == ALERTS // 4:
                provider.down.set()  # the outage starts mid-stream
            if provider.down.is_set() and i >= ALERTS // 2:
                # Down until deliveries failed after every retry, then back mid-stream.
                deadline = time.monotonic() + 120
                while len(failed_on_topic(chaos)) < 3:
                    notifier.check()
                    assert time.monotonic() < deadline, "no delivery failed during the outage"
                provider.down.clear()
            send(alert)
            time.sleep(max(0.0, (i + 1) / RATE - (time.monotonic() - started)))
        group = env["CHURNWATCH_NOTIFIER_GROUP"]
        topic = chaos.settings.topic_alerts
        wait_caught_up(chaos.settings, group, topic, timeout=180, check=notifier.check)

        failed = failed_on_topic(chaos)
        assert failed and failed <= action_ids
        assert provider.refused >= 3 * len(failed)  # every attempt of each failed delivery
        # Replay some of the failed alerts: the worker sends them now, their records go stale.
        replayed = [a for a in alerts if make_action_id(a["alert_id"], "email") in failed][:3]
        for alert in replayed:
            send(alert)
        wait_caught_up(chaos.settings, group, topic, timeout=180, check=notifier.check)

        code, first, progress = redrive(env)
        assert code == 0, progress
        assert first["found"] == len(failed)
        assert (first["sent"], first["skipped"]) == (len(failed) - len(replayed), len(replayed))
        assert first["failed_again"] == 0
        code, second, _ = redrive(env)
        assert (code, second["found"], second["sent"]) == (0, 0, 0)
        time.sleep(1)  # anything stray would arrive now
    finally:
        notifier.stop()
        producer.close()
        smtp.stop()

    with provider.lock:
        mails = Counter(provider.delivered)
    assert set(mails) == action_ids, "an alert's e-mail never arrived"
    twice = {a: n for a, n in mails.items() if n > 1}
    assert not twice, f"e-mails delivered more than once: {twice}"
    assert r.hlen(f"{prefix}:failed") == 0
    done = [
        r.hget(f"{prefix}:{{{a['user_id']}}}:done", make_action_id(a["alert_id"], "email"))
        for a in alerts
    ]
    assert set(done) == {b"sent"}
    print(f"{len(failed)} of {ALERTS} deliveries failed in the outage, {provider.refused} refusals")
    r.close()

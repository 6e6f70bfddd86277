"""The notifier process on the real stack: alert on Kafka → CRM webhook, then e-mail.

Real Kafka and Redis (the local stack), the notifier as a child process, a mail
catcher on loopback SMTP and a loopback CRM webhook. Both servers write to one
arrival log, so "the hand-off before the e-mail" is read from the order in
which the servers received them. The crash case kills the notifier with
SIGKILL right after the e-mail is delivered and marked done, restarts it, and
checks that the redelivered alert sends nothing a second time and that each
alert's win-back decision counts once. It runs on the single Redis and again on
a Redis Cluster (``isolated_each``).
"""

from __future__ import annotations

import hashlib
import hmac
import threading
import time
from collections.abc import Callable, Iterator
from email.message import Message as Email
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import orjson
import pytest
from aiosmtpd.controller import Controller
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.messages import make_action_id
from services.common.redis_client import sync_redis
from services.launcher import Services
from services.notifier.core.guardrails import in_control_group
from services.notifier.core.playbooks import load_playbooks
from services.notifier.mailcatcher import Inbox
from tests.conftest import Isolated, wait_for
from tests.notifier_data import give_email_contacts, sample_alert

pytestmark = pytest.mark.e2e

SECRET = "e2e-webhook-secret"
OFFER = "EXCLUSIVE30"  # the high-value-critical playbook's offer


class Arrivals:
    """What the loopback servers received, in the order they received it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.log: list[tuple[str, str]] = []  # (kind, action id)
        self.mails: list[Email] = []
        self.hooks: list[dict[str, Any]] = []

    def add(self, kind: str, action_id: str) -> None:
        with self.lock:
            self.log.append((kind, action_id))

    def order(self) -> list[tuple[str, str]]:
        with self.lock:
            return list(self.log)

    def count(self, kind: str, action_id: str) -> int:
        return self.order().count((kind, action_id))


class RecordingInbox(Inbox):
    def __init__(self, arrivals: Arrivals) -> None:
        super().__init__()
        self.arrivals = arrivals

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        reply = await super().handle_DATA(server, session, envelope)
        with self.lock:
            mail = self.messages[-1]
        self.arrivals.mails.append(mail)
        self.arrivals.add("email", str(mail["X-Churnwatch-Action"]))
        return reply


@pytest.fixture
def arrivals() -> Arrivals:
    return Arrivals()


@pytest.fixture
def mail_server(isolated_each: Isolated, arrivals: Arrivals) -> Iterator[RecordingInbox]:
    inbox = RecordingInbox(arrivals)
    controller = Controller(inbox, hostname="127.0.0.1", port=isolated_each.ports["smtp"])
    controller.start()
    yield inbox
    controller.stop()


@pytest.fixture
def crm_webhook(arrivals: Arrivals) -> Iterator[str]:
    """A CRM endpoint that checks the signature and records each hand-off."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            good = hmac.new(SECRET.encode(), body, hashlib.sha256).hexdigest()
            if self.headers.get("X-Churnwatch-Signature") != f"sha256={good}":
                self.send_response(401)
                self.end_headers()
                return
            arrivals.hooks.append(orjson.loads(body))
            arrivals.add("webhook", self.headers.get("Idempotency-Key", ""))
            self.send_response(201)
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, args=(0.05,), daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/crm/handoff"
    server.shutdown()
    server.server_close()


class ActionsTopic:
    """Reads winback-actions from the beginning, keeping everything seen so far."""

    def __init__(self, isolated: Isolated) -> None:
        self.consumer = KafkaConsumer(
            bootstrap_servers=isolated.settings.kafka_bootstrap, enable_auto_commit=False
        )
        topic = isolated.settings.topic_actions
        parts = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic) or ()]
        assert parts, f"topic {topic} has no partitions"
        self.consumer.assign(parts)
        self.consumer.seek_to_beginning(*parts)
        self.seen: list[dict[str, Any]] = []

    def until(
        self, done: Callable[[list[dict[str, Any]]], bool], *, timeout: float, services: Services
    ) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while not done(self.seen) and time.monotonic() < deadline:
            services.check()
            for records in self.consumer.poll(timeout_ms=300).values():
                self.seen += [orjson.loads(r.value) for r in records]
        return self.seen

    def close(self) -> None:
        self.consumer.close()


def vip_user(run: str) -> str:
    defaults = load_playbooks().defaults
    n = 0
    while in_control_group(f"vip-{run}-{n}", defaults.control_share, salt=defaults.control_salt):
        n += 1
    return f"vip-{run}-{n}"


def committed_offset(group: str, where: TopicPartition, isolated: Isolated) -> int:
    """The group's committed offset (the next to read), -1 if none; does not join the group."""
    consumer = KafkaConsumer(
        bootstrap_servers=isolated.settings.kafka_bootstrap,
        group_id=group,
        enable_auto_commit=False,
    )
    try:
        found = consumer.committed(where)
    finally:
        consumer.close()
    return int(found) if found is not None else -1


def body_text(mail: Email) -> str:
    out = []
    for part in mail.walk():
        payload = part.get_payload(decode=True)
        if isinstance(payload, bytes):
            out.append(payload.decode(part.get_content_charset() or "utf-8"))
    return "\n".join(out)


def test_handoff_then_email_and_no_resend_after_a_crash(
    isolated_each: Isolated, arrivals: Arrivals, mail_server: RecordingInbox, crm_webhook: str
) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    uid = vip_user(isolated.run)
    address = f"{uid}@example.test"
    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    give_email_contacts(r, prefix, [uid])
    env = isolated.env | {
        "CHURNWATCH_WEBHOOK_URL": crm_webhook,
        "CHURNWATCH_WEBHOOK_SECRET": SECRET,
        "CHURNWATCH_NOTIFIER_BACKOFF_S": "0.1",
    }

    def start() -> Services:
        services = Services(isolated.settings, env, names=("notifier",), logs=isolated.out / "logs")
        services.start()
        return services

    producer = KafkaProducer(bootstrap_servers=isolated.settings.kafka_bootstrap, acks="all")

    def produce(alert: dict[str, Any]) -> tuple[TopicPartition, int]:
        sent = producer.send(
            isolated.settings.topic_alerts, key=uid.encode(), value=orjson.dumps(alert)
        )
        meta = sent.get(timeout=30)
        return TopicPartition(meta.topic, meta.partition), int(meta.offset)

    services = start()
    actions = ActionsTopic(isolated)
    try:
        # 1. A high-value user at critical risk: CRM hand-off first, then the personal e-mail.
        first = sample_alert(uid, band="critical", tier="high", bucket=1, model_version="e2e@1")
        hook_id = make_action_id(first["alert_id"], "webhook")
        mail_id = make_action_id(first["alert_id"], "email")
        produce(first)
        wait_for(
            lambda: arrivals.count("email", mail_id) == 1, timeout=120, services=services, pause=0.2
        )

        order = [entry for entry in arrivals.order() if entry[1] in (hook_id, mail_id)]
        assert order == [("webhook", hook_id), ("email", mail_id)]
        [mail] = mail_server.to(address)
        assert mail["X-Churnwatch-Action"] == mail_id
        assert OFFER in body_text(mail)
        [hook] = arrivals.hooks
        assert hook["data"]["alert_id"] == first["alert_id"] and OFFER in hook["text"]
        assert address not in orjson.dumps(hook).decode()  # contact data stays out of the CRM

        def statuses(alert_id: str) -> Callable[[list[dict[str, Any]]], bool]:
            return lambda seen: (
                {(a["channel"], a["status"]) for a in seen if a["alert_id"] == alert_id}
                >= {("webhook", "sent"), ("email", "sent")}
            )

        seen = actions.until(statuses(first["alert_id"]), timeout=30, services=services)
        mine = [(a["channel"], a["status"]) for a in seen if a["alert_id"] == first["alert_id"]]
        assert mine == [("webhook", "sent"), ("email", "sent"), ("sms", "suppressed")]

        # 2. The crash: kill -9 as soon as the e-mail is delivered and marked done, which is
        #    before the offset of the alert can be committed (Faust commits every second).
        second = sample_alert(uid, band="critical", tier="high", bucket=2, model_version="e2e@1")
        mail_id2 = make_action_id(second["alert_id"], "email")
        hook_id2 = make_action_id(second["alert_id"], "webhook")
        where, offset = produce(second)
        done_key = f"{prefix}:{{{uid}}}:done"
        wait_for(
            lambda: arrivals.count("email", mail_id2) == 1 and r.hexists(done_key, mail_id2),
            timeout=60,
            services=services,
            pause=0.005,
        )
        services.procs["notifier"].kill()
        services.procs["notifier"].wait(timeout=10)
        # The committed offset is the next one to read: at or below ours means redelivery.
        redelivered = committed_offset(env["CHURNWATCH_NOTIFIER_GROUP"], where, isolated) <= offset

        services = start()
        if not redelivered:
            # The commit won the race: replay the alert so the restart still meets it again.
            where, offset = produce(second)
        # The restarted notifier has handled the redelivered alert once its group commits
        # past it; the done marks (and published marks) make that a no-op.
        wait_for(
            lambda: committed_offset(env["CHURNWATCH_NOTIFIER_GROUP"], where, isolated) > offset,
            timeout=150,
            services=services,
            pause=0.5,
        )
        time.sleep(3)  # anything still in flight would arrive now
        seen = actions.until(statuses(second["alert_id"]), timeout=30, services=services)
        per_action = [a["action_id"] for a in seen if a["alert_id"] == second["alert_id"]]
        # Each action at most twice: once, or once more if the kill came before it was
        # marked published; never a second e-mail or hand-off.
        assert all(per_action.count(x) <= 2 for x in per_action), seen
        assert arrivals.count("email", mail_id2) == 1
        assert arrivals.count("webhook", hook_id2) == 1
        assert arrivals.count("email", mail_id) == 1
        assert len(mail_server.to(address)) == 2
        # Two alerts, two win-back decisions counted, whatever the kill interrupted.
        assert r.get(f"{prefix}:winback:high-value-critical:treated:treated") == b"2"
    finally:
        services.stop()
        actions.close()
        producer.close()
        r.close()

"""The notifier's own consumer lag on the real stack, read from its /metrics.

Alerts wait on churn-alerts before the notifier starts; its mail server holds
the first e-mail until the test lets it go, so the notifier is stuck on the
first alert with the others behind it. /metrics then reports them all as
backlog, and 0 once they are handled. Real Kafka and Redis (the local stack),
the notifier as a child process, a mail catcher on loopback SMTP.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from aiosmtpd.controller import Controller
from kafka import KafkaProducer
from prometheus_client.parser import text_string_to_metric_families

from services.common.redis_client import sync_redis
from services.launcher import Services
from services.notifier.mailcatcher import Inbox
from tests.conftest import Isolated, wait_for
from tests.integration.test_notifier_flow import vip_user
from tests.notifier_data import give_email_contacts, sample_alert

pytestmark = pytest.mark.integration

ALERTS = 5


class HeldInbox(Inbox):
    """Keeps each e-mail's DATA unanswered until ``release`` is set."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.release = threading.Event()

    async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:
        self.entered.set()
        while not self.release.is_set():
            await asyncio.sleep(0.01)
        return await super().handle_DATA(server, session, envelope)


@pytest.fixture
def held_inbox(isolated: Isolated) -> Iterator[HeldInbox]:
    inbox = HeldInbox()
    controller = Controller(inbox, hostname="127.0.0.1", port=isolated.ports["smtp"])
    controller.start()
    yield inbox
    inbox.release.set()
    controller.stop()


def scrape(isolated: Isolated) -> dict[str, float]:
    """The notifier's samples by name (none of the ones read here has labels)."""
    try:
        text = httpx.get(isolated.url("notifier") + "/metrics", timeout=2.0).text
    except httpx.TransportError:
        return {}  # not listening yet
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if not sample.labels
    }


def test_the_backlog_shows_on_metrics_and_drains_to_zero(
    isolated: Isolated, held_inbox: HeldInbox
) -> None:
    prefix = isolated.settings.key_prefix
    uid = vip_user(isolated.run)  # not in the control group: the first alert sends an e-mail
    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    give_email_contacts(r, prefix, [uid])
    # One user, one key: all alerts on one partition, offsets 0 to ALERTS - 1.
    producer = KafkaProducer(bootstrap_servers=isolated.settings.kafka_bootstrap, acks="all")
    for bucket in range(1, ALERTS + 1):
        alert = sample_alert(uid, bucket=bucket, model_version="lag@1")
        producer.send(isolated.settings.topic_alerts, key=uid.encode(), value=orjson.dumps(alert))
    producer.flush(timeout=30)
    producer.close()

    # The held e-mail must not time out and be retried while the test looks.
    env = isolated.env | {"CHURNWATCH_SMTP_TIMEOUT_S": "120"}
    services = Services(isolated.settings, env, names=("notifier",), logs=isolated.out / "logs")
    try:
        services.start()
        # Stuck on the first alert's e-mail: that alert and all after it are backlog.
        wait_for(held_inbox.entered.is_set, services=services, timeout=120)
        wait_for(lambda: bool(scrape(isolated)), services=services, timeout=30)
        stuck = scrape(isolated)
        assert stuck["churnwatch_notifier_consumer_lag"] == ALERTS
        assert stuck["churnwatch_notifier_alerts_total"] == 1

        held_inbox.release.set()
        wait_for(
            lambda: scrape(isolated).get("churnwatch_notifier_consumer_lag") == 0,
            services=services,
            timeout=60,
        )
        assert scrape(isolated)["churnwatch_notifier_alerts_total"] == ALERTS
        assert held_inbox.received >= 1
    finally:
        services.stop()
        r.close()

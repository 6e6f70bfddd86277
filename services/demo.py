"""``churnwatch demo``: the whole pipeline on the real local stack, with simulated users.

1. brings up Kafka and Redis (``churnwatch stack up``) and a mail catcher;
2. starts ingest, scorer, notifier and the risk API as child processes
   (``launcher.py``);
3. registers each simulated user's e-mail address and consent;
4. sends the users' last 45 days of history through POST /v1/events, then
   live traffic for ``--duration`` seconds (``demo_users.py``), printing alerts
   and actions as they appear on their topics (:class:`Watcher`);
5. stops the services and prints one JSON summary as its last line.
"""

from __future__ import annotations

import os
import threading
import time
from collections import Counter
from typing import Any

import httpx
import orjson
from kafka import TopicPartition

from services.common.kafka import make_consumer
from services.common.settings import CommonSettings, env_for, load_settings
from services.demo_users import live_traffic, register_contacts, send_history
from services.launcher import Services, wait_http
from services.notifier.mailcatcher import MailCatcher
from services.sim.generator import DAY, make_users
from services.stack.local import LocalStack


class Watcher(threading.Thread):
    """Follows churn-alerts and winback-actions from their current end, printing each."""

    def __init__(self, settings: CommonSettings) -> None:
        super().__init__(daemon=True)
        self.settings = settings
        self.alerts = 0
        self.actions: Counter[str] = Counter()
        self.stopping = threading.Event()
        self.consumer = make_consumer(
            settings,
            enable_auto_commit=False,
            consumer_timeout_ms=500,
        )
        parts = [
            TopicPartition(t, p)
            for t in (settings.topic_alerts, settings.topic_actions)
            for p in self.consumer.partitions_for_topic(t) or ()
        ]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)

    def run(self) -> None:
        while not self.stopping.is_set():
            for msg in self.consumer:
                self.show(msg.topic, orjson.loads(msg.value))
            if self.stopping.is_set():
                break

    def show(self, topic: str, value: dict[str, Any]) -> None:
        if topic == self.settings.topic_alerts:
            self.alerts += 1
            reasons = ", ".join(r["label"] for r in value["reasons"][:2])
            print(
                f"  ALERT  {value['user_id']}  {value['band']:8} score {value['score']:3}"
                f"  {value['segment']['stage']}/{value['segment']['tier']}  ({reasons})",
                flush=True,
            )
        else:
            self.actions[value["status"]] += 1
            why = f" ({value['reason']})" if value.get("reason") else ""
            print(
                f"  ACTION {value['user_id']}  {value['channel']:7} {value['status']}"
                f"  {value['playbook']}{why}",
                flush=True,
            )


def run_demo(*, duration: float, users: int, rate: float) -> int:
    settings = load_settings(CommonSettings)
    LocalStack(settings).up()
    smtp_port = int(os.environ.get("CHURNWATCH_SMTP_PORT", "2525"))
    catcher = MailCatcher("127.0.0.1", smtp_port).start()
    env = env_for(settings) | {
        "CHURNWATCH_SMTP_PORT": str(smtp_port),
        "CHURNWATCH_LOG_LEVEL": "warning",
    }
    services = Services(settings, env)
    watcher = Watcher(settings)
    watcher.start()
    ingest = f"http://127.0.0.1:{os.environ.get('CHURNWATCH_INGEST_PORT', '8000')}"
    sent = 0
    try:
        services.start()
        wait_http(f"{ingest}/healthz", 60, services)
        time.sleep(8)  # let both Faust workers join their groups
        population = make_users(users, seed=7)
        register_contacts(settings, population)
        start = time.time() - 45 * DAY
        print(f"backfilling 45 days of history for {users} users ...", flush=True)
        with httpx.Client(timeout=30) as client:
            url = f"{ingest}/v1/events"
            sent += send_history(client, url, population, start=start, days=45, seed=7)
            print(f"backfill done: {sent} events; live traffic for {duration:.0f} s ...")
            sent += live_traffic(
                client, url, population, duration=duration, rate=rate, services=services
            )
        time.sleep(5)  # let the last alerts reach the notifier
    finally:
        watcher.stopping.set()
        services.stop()
        watcher.join(timeout=5)
        catcher.stop()
    summary = {
        "events": sent,
        "alerts": watcher.alerts,
        "actions": dict(watcher.actions),
        "emails_received": catcher.inbox.received,
        "logs": str(services.logs),
    }
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def main() -> int:  # pragma: no cover - the CLI calls run_demo
    return run_demo(duration=60, users=200, rate=200)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

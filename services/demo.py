"""``churnwatch demo``: the whole pipeline on the real local stack, with simulated users.

1. brings up Kafka and Redis (``churnwatch stack up``) and a mail catcher;
2. starts ingest, scorer, notifier and the risk API as child processes;
3. registers each simulated user's e-mail address and consent;
4. sends the users' last 45 days of history through POST /v1/events, then
   live traffic for ``--duration`` seconds, printing alerts and actions as they
   appear on their topics;
5. stops the services and prints one JSON summary as its last line.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import TopicPartition

from services.common.kafka import make_consumer
from services.common.redis_client import sync_redis
from services.common.settings import CommonSettings, env_for, load_settings
from services.notifier.mailcatcher import MailCatcher
from services.sim.generator import DAY, SimUser, event, history, make_users
from services.stack.local import LocalStack

SERVICES = ("ingest", "scorer", "notifier", "api")


class Services:
    """The four services as child processes, logs under $CHURNWATCH_HOME/logs."""

    def __init__(
        self,
        settings: CommonSettings,
        env: dict[str, str],
        *,
        names: tuple[str, ...] = SERVICES,
        logs: Path | None = None,
    ) -> None:
        self.logs = logs or settings.home.resolve() / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.env = env
        self.names = names
        self.procs: dict[str, subprocess.Popen[bytes]] = {}

    def start(self) -> None:
        for name in self.names:
            log = (self.logs / f"{name}.log").open("ab")
            self.procs[name] = subprocess.Popen(
                [sys.executable, "-m", "services.cli", name],
                stdout=log,
                stderr=subprocess.STDOUT,
                env=self.env,
                start_new_session=True,
            )
            print(f"started {name:8} pid {self.procs[name].pid}  log {self.logs / name}.log")

    def check(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                tail = (self.logs / f"{name}.log").read_text()[-2000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{tail}")

    def stop(self) -> None:
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.send_signal(signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()


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


def wait_http(url: str, timeout: float, services: Services) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        services.check()
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


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
            batch: list[dict[str, Any]] = []
            for user in population:
                batch += history(user, start=start, days=45, seed=7)
                if len(batch) >= 2000:
                    sent += post(client, f"{ingest}/v1/events", batch)
                    batch = []
            if batch:
                sent += post(client, f"{ingest}/v1/events", batch)
            print(f"backfill done: {sent} events; live traffic for {duration:.0f} s ...")
            sent += live_traffic(
                client,
                f"{ingest}/v1/events",
                population,
                duration=duration,
                rate=rate,
                services=services,
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


def main() -> int:  # pragma: no cover - the CLI calls run_demo
    return run_demo(duration=60, users=200, rate=200)


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())

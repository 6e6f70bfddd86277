"""``churnwatch bench e2e-latency``: HTTP accepted → alert on its topic, under load.

Runs ingest and one scorer worker (processes, real Kafka and Redis, fresh
topics and key prefix) and sends background traffic at ``--rate`` events/s
(ordinary activity of many users) through POST /v1/events. Every 100 ms one
*probe* is sent among it: a new user's whole history in one request (three
weeks of use that stopped 20 days ago), which the scorer must turn into an
alert at once. Latency = the alert's arrival on ``churn-alerts`` (seen by a
consumer) minus the moment the probe's request was sent (ingest answers only
after Kafka acknowledged it, so this includes the HTTP path).

Baseline, same run and broker: the same clock to the probe's *event* arriving
on ``user-events`` (what HTTP and Kafka transport alone cost).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
from kafka import TopicPartition

from bench.registry import emit, fresh_deployment
from bench.scorer import cleanup, free_port
from services.common.kafka import all_topics, make_consumer
from services.common.settings import CommonSettings, env_for
from services.demo import Services, wait_http
from services.sim.generator import DAY, SimUser, event

HEADERS = {"Content-Type": "application/x-ndjson", "Authorization": "Bearer dev-key"}


def probe_events(user_id: str, now: float) -> list[dict[str, Any]]:
    user = SimUser(user_id, "fading", "UTC", "premium", 1.0)
    start = now - 41 * DAY
    events = [event(user, "signup", start, 0)]
    events += [event(user, "session_start", start + d * DAY, d + 1) for d in range(21)]
    return events


class Follower(threading.Thread):
    """Records when each key first shows up on a topic."""

    def __init__(self, settings: CommonSettings, topic: str) -> None:
        super().__init__(daemon=True)
        self.seen: dict[str, float] = {}
        self.stop = threading.Event()
        self.consumer = make_consumer(
            settings,
            enable_auto_commit=False,
            fetch_max_wait_ms=5,
            consumer_timeout_ms=200,
        )
        # ensure_topics returned once the topic's partitions had leaders.
        parts = [TopicPartition(topic, p) for p in self.consumer.partitions_for_topic(topic) or ()]
        self.consumer.assign(parts)
        self.consumer.seek_to_end(*parts)
        for tp in parts:
            self.consumer.position(tp)

    def run(self) -> None:
        while not self.stop.is_set():
            for msg in self.consumer:
                now = time.time()
                if msg.key and msg.key.startswith(b"probe-"):
                    self.seen.setdefault(msg.key.decode(), now)


def load(url: str, *, rate: float, duration: float, run: str) -> tuple[dict[str, float], float]:
    """Background traffic plus a probe every 100 ms.

    Open loop: a request is sent every 10 ms whether or not the earlier ones
    were answered (up to ``MAX_IN_FLIGHT`` at once), so a slow answer shows up
    as latency, not as a lower rate. Returns probe user -> time it was sent, and
    the background rate achieved (events acknowledged per second).
    """
    return asyncio.run(_load(url, rate=rate, duration=duration, run=run))


MAX_IN_FLIGHT = 64


async def _load(
    url: str, *, rate: float, duration: float, run: str
) -> tuple[dict[str, float], float]:
    accepted: dict[str, float] = {}
    background = [SimUser(f"bg-{run}-{i}", "loyal", "UTC", "basic", 2.0) for i in range(5000)]
    tick, per_tick = 0.01, max(1, int(rate * 0.01))
    done = {"events": 0}
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    limits = httpx.Limits(max_connections=MAX_IN_FLIGHT, max_keepalive_connections=MAX_IN_FLIGHT)
    async with httpx.AsyncClient(timeout=10, limits=limits, headers=HEADERS) as client:

        async def post(body: bytes, count: int, probe: str | None) -> None:
            async with slots:
                sent = time.time()
                try:
                    reply = await client.post(url, content=body)
                except httpx.HTTPError:
                    return
                if reply.status_code != 200:
                    return
                done["events"] += count
                if probe is not None:
                    accepted[probe] = sent

        tasks: set[asyncio.Task[None]] = set()
        seq = n = ticks = 0
        start = time.monotonic()
        while time.monotonic() - start < duration:
            now = time.time()
            batch = []
            for _ in range(per_tick):
                seq += 1
                batch.append(event(background[seq % len(background)], "page_view", now, seq))
            bodies: list[tuple[bytes, int, str | None]] = [
                (b"\n".join(map(orjson.dumps, batch)), len(batch), None)
            ]
            ticks += 1
            if ticks % 10 == 0:
                n += 1
                uid = f"probe-{run}-{n}"
                probe = probe_events(uid, now)
                bodies.append((b"\n".join(map(orjson.dumps, probe)), 0, uid))
            for body, count, probe_id in bodies:
                task = asyncio.create_task(post(body, count, probe_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + ticks * tick - time.monotonic()))
        await asyncio.gather(*tasks)
    return accepted, done["events"] / duration


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench e2e-latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=5000.0, help="background events/s")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of load")
    parser.add_argument(
        "--workers", type=int, default=1, help="scorer workers (the topic has 4 partitions)"
    )
    args = parser.parse_args(list(argv))
    run, settings = fresh_deployment("lat")
    port = free_port()
    env = env_for(settings) | {
        "CHURNWATCH_INGEST_PORT": str(port),
        "CHURNWATCH_SCORER_GROUP": run,
        "CHURNWATCH_SCORER_METRICS_PORT": str(free_port()),
        "CHURNWATCH_LOG_LEVEL": "warning",
    }
    logs = Path(f"/tmp/churnwatch-bench-{run}")
    services = [Services(settings, env, names=("ingest", "scorer"), logs=logs)]
    for n in range(2, args.workers + 1):  # each its own checkpoint name and metrics port
        extra = {
            "CHURNWATCH_SCORER_WORKER_NAME": f"{run}-w{n}",
            "CHURNWATCH_SCORER_METRICS_PORT": str(free_port()),
        }
        services.append(Services(settings, env | extra, names=("scorer",), logs=logs / f"w{n}"))
    events = Follower(settings, settings.topic_events)
    alerts = Follower(settings, settings.topic_alerts)
    try:
        for group in services:
            group.start()
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, services[0])
        time.sleep(8 + 4 * (args.workers - 1))  # the scorers join their group
        events.start()
        alerts.start()
        accepted, achieved = load(
            f"http://127.0.0.1:{port}/v1/events", rate=args.rate, duration=args.duration, run=run
        )
        time.sleep(3)
    finally:
        events.stop.set()
        alerts.stop.set()
        for group in services:
            group.stop()
        cleanup(settings, all_topics(settings))
    latency = [alerts.seen[u] - t for u, t in accepted.items() if u in alerts.seen]
    transport = [events.seen[u] - t for u, t in accepted.items() if u in events.seen]
    if not latency:
        print("no probe produced an alert", flush=True)
        return 1
    p50, p99 = percentile(latency, 0.5) * 1000, percentile(latency, 0.99) * 1000
    base99 = percentile(transport, 0.99) * 1000 if transport else 0.0
    print(
        f"probes: {len(accepted)} sent, {len(latency)} alerted; alert latency p50 "
        f"{p50:.1f} ms, p99 {p99:.1f} ms (mean {statistics.mean(latency) * 1000:.1f}); "
        f"transport p99 {base99:.1f} ms; background {achieved:.0f} events/s "
        f"(asked {args.rate:.0f}); {args.workers} scorer worker(s)",
        flush=True,
    )
    emit("e2e-latency", p99, "ms (p99)", base99, ratio=p99 / base99 if base99 else 0.0)
    return 0

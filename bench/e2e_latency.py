"""``churnwatch bench e2e-latency``: HTTP accepted → alert on its topic, under load.

Runs ingest and one scorer worker (processes, real Kafka and Redis, fresh
topics and key prefix) and sends background traffic at ``--rate`` events/s
(ordinary activity of 5,000 users) through POST /v1/events. After a warm-up
(``--warmup``, 5 s: the scorer has seen every background user once, as a
running service has; the first second scores 5,000 users it never saw and
queues), one *probe* is sent among it every 100 ms: a new user's whole
history in one request (three weeks of use that stopped 20 days ago), which
the scorer must turn into an alert at once. Latency = the alert's append to
``churn-alerts`` minus the moment the probe's request was sent (ingest answers
only after Kafka acknowledged it, so this includes the HTTP path).

The bench's topics stamp records with the broker's append time, so "on its
topic" is read off the record, to the millisecond, not off the moment a
consumer happened to fetch it (that polling added up to ~50 ms of its own).

Baseline, same run and broker: the same clock to the probe's *event* appended
to ``user-events`` (what HTTP and Kafka transport alone cost).
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson

from bench.lean_http import HttpError, LoadClient
from bench.registry import emit, fresh_deployment
from bench.scorer import cleanup, free_port
from services.common.kafka import all_topics, make_admin
from services.common.kafka_security import librdkafka_options
from services.common.settings import CommonSettings, env_for
from services.launcher import Services, wait_http
from services.sim.generator import DAY, SimUser, event

HEADERS = {"Content-Type": "application/x-ndjson", "Authorization": "Bearer dev-key"}


def probe_events(user_id: str, now: float) -> list[dict[str, Any]]:
    user = SimUser(user_id, "fading", "UTC", "premium", 1.0)
    start = now - 41 * DAY
    events = [event(user, "signup", start, 0)]
    events += [event(user, "session_start", start + d * DAY, d + 1) for d in range(21)]
    return events


class Follower:
    """Records when each probe key first shows up on some topics, in a process of its own.

    A separate process with librdkafka's consumer (C), so that reading every
    background event (to find the probes among them) neither shares the load
    generator's GIL nor lags behind it: in a thread with kafka-python it did,
    and its lag was most of the "transport" figure.
    """

    def __init__(self, settings: CommonSettings, topics: list[str]) -> None:
        options = {"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_options(settings)}
        self._ready, self._stop = multiprocessing.Event(), multiprocessing.Event()
        self._results, child = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_follow, args=(options, topics, self._ready, self._stop, child), daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the probe follower did not get its partitions in time")

    def stop(self) -> dict[str, dict[str, float]]:
        """Topic -> probe key -> when it was first seen."""
        self._stop.set()
        seen: dict[str, dict[str, float]] = self._results.recv() if self._results.poll(30) else {}
        self._process.join(10)
        return seen


def _follow(options: dict[str, Any], topics: list[str], ready: Any, stop: Any, out: Any) -> None:
    from confluent_kafka import OFFSET_END, TIMESTAMP_LOG_APPEND_TIME, Consumer
    from confluent_kafka import TopicPartition as Partition

    consumer = Consumer(
        options
        | {"group.id": f"bench-follow-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        | {"fetch.wait.max.ms": 5}
    )
    listed = consumer.list_topics(timeout=10).topics
    consumer.assign([Partition(t, p, OFFSET_END) for t in topics for p in listed[t].partitions])
    consumer.consume(num_messages=1, timeout=1.0)  # the end offsets are resolved now
    ready.set()
    seen: dict[str, dict[str, float]] = {t: {} for t in topics}
    while not stop.is_set():
        for msg in consumer.consume(num_messages=1000, timeout=0.05):
            key = msg.key()
            if msg.error() is None and key and key.startswith(b"probe-"):
                # The broker's append time (the topics are LogAppendTime, see
                # append_time_topics): when the record was on its topic, to the
                # millisecond, however late this loop reads it.
                kind, millis = msg.timestamp()
                at = millis / 1000 if kind == TIMESTAMP_LOG_APPEND_TIME else time.time()
                seen[msg.topic()].setdefault(key.decode(), at)
    consumer.close()
    out.send(seen)


def append_time_topics(settings: CommonSettings, topics: list[str]) -> None:
    """Make the broker stamp each record of ``topics`` with its own append time."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = make_admin(settings)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    configs={"message.timestamp.type": "LogAppendTime"},
                )
                for topic in topics
            ]
        )
    finally:
        admin.close()


Sent = dict[str, tuple[float, float]]  # probe user -> (request sent, answer received)


def load(
    url: str,
    *,
    rate: float,
    duration: float,
    run: str,
    warmup: float = 0.0,
    httpx_client: bool = False,
) -> tuple[Sent, float]:
    """Background traffic, and a probe every 100 ms once ``warmup`` seconds have passed.

    Open loop: a request is sent every 10 ms whether or not the earlier ones
    were answered (up to ``MAX_IN_FLIGHT`` at once), so a slow answer shows up
    as latency, not as a lower rate. Returns probe user -> when its request was
    sent and answered, and the background rate achieved (events acknowledged
    per second).
    """
    return asyncio.run(
        _load(url, rate=rate, duration=duration, run=run, warmup=warmup, httpx_client=httpx_client)
    )


MAX_IN_FLIGHT = 64


async def _load(
    url: str, *, rate: float, duration: float, run: str, warmup: float, httpx_client: bool
) -> tuple[Sent, float]:
    accepted: Sent = {}
    background = [SimUser(f"bg-{run}-{i}", "loyal", "UTC", "basic", 2.0) for i in range(5000)]
    tick, per_tick = 0.01, max(1, int(rate * 0.01))
    done = {"events": 0}
    answers: list[float] = []
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    client = LoadClient(
        url, size=MAX_IN_FLIGHT, headers=HEADERS, timeout=10, use_httpx=httpx_client
    )
    try:

        async def post(body: bytes, count: int, probe: str | None) -> None:
            async with slots:
                sent = time.time()
                try:
                    status, _ = await client.post(body)
                except HttpError:
                    return
                if status != 200:
                    return
                answered = time.time()
                answers.append(answered - sent)
                done["events"] += count
                if probe is not None:
                    accepted[probe] = (sent, answered)

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
            if ticks % 10 == 0 and ticks * tick > warmup:
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
    finally:
        await client.close()
    if answers:
        print(
            f"ingest answered {len(answers)} requests: p50 {percentile(answers, 0.5) * 1000:.1f} "
            f"ms, p99 {percentile(answers, 0.99) * 1000:.1f} ms; the load fell "
            f"{max(0.0, time.monotonic() - start - duration):.1f} s behind its schedule",
            flush=True,
        )
    return accepted, done["events"] / duration


def spread(values: list[float]) -> str:
    """p50, p99 and max of latencies in seconds, in milliseconds.

    >>> spread([0.010, 0.020, 0.030])
    'p50 20.0 ms, p99 30.0 ms, max 30.0 ms'
    """
    if not values:
        return "none seen"
    p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(values) * 1000:.1f} ms"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench e2e-latency", description=__doc__)
    parser.add_argument("--rate", type=float, default=5000.0, help="background events/s")
    parser.add_argument(
        "--duration",
        type=float,
        default=60.0,
        help="seconds of probes (60: a sweep, a checkpoint and a re-score cycle fall inside)",
    )
    parser.add_argument(
        "--warmup", type=float, default=5.0, help="seconds of background load before probes"
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="scorer workers (the topic has 4 partitions)"
    )
    parser.add_argument(
        "--httpx",
        action="store_true",
        help="send the load with httpx, as before 2026-12-06 (for comparison: it costs the "
        "machine under test about a third of a core more)",
    )
    args = parser.parse_args(list(argv))
    run, settings = fresh_deployment("lat")
    append_time_topics(settings, [settings.topic_events, settings.topic_alerts])
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
    follower = Follower(settings, [settings.topic_events, settings.topic_alerts])
    seen: dict[str, dict[str, float]] = {}
    try:
        for group in services:
            group.start()
        wait_http(f"http://127.0.0.1:{port}/healthz", 60, services[0])
        time.sleep(8 + 4 * (args.workers - 1))  # the scorers join their group
        follower.start()
        accepted, achieved = load(
            f"http://127.0.0.1:{port}/v1/events",
            rate=args.rate,
            duration=args.warmup + args.duration,
            run=run,
            warmup=args.warmup,
            httpx_client=args.httpx,
        )
        time.sleep(3)
        seen = follower.stop()
    finally:
        for group in services:
            group.stop()
        cleanup(settings, all_topics(settings), prefix=run)
    alerts, events = seen.get(settings.topic_alerts, {}), seen.get(settings.topic_events, {})
    latency = [alerts[u] - sent for u, (sent, _) in accepted.items() if u in alerts]
    if not latency:
        print("no probe produced an alert", flush=True)
        return 1
    transport = [events[u] - sent for u, (sent, _) in accepted.items() if u in events]
    answered = [alerts[u] - done for u, (_, done) in accepted.items() if u in alerts]
    # The scorer's share: the probe's events on user-events -> its alert on churn-alerts.
    share = [alerts[u] - events[u] for u in accepted if u in alerts and u in events]
    print(
        f"probes: {len(accepted)} sent, {len(latency)} alerted; background {achieved:.0f} "
        f"events/s (asked {args.rate:.0f}); {args.workers} scorer worker(s)\n"
        f"  request sent     -> alert on its topic: {spread(latency)}\n"
        f"  request sent     -> event on its topic: {spread(transport)}\n"
        f"  event on its topic -> alert on its topic: {spread(share)}\n"
        f"  request answered -> alert on its topic: {spread(answered)}",
        flush=True,
    )
    p99 = percentile(latency, 0.99) * 1000
    base99 = percentile(transport, 0.99) * 1000 if transport else 0.0
    emit("e2e-latency", p99, "ms (p99)", base99, ratio=p99 / base99 if base99 else 0.0)
    return 0

"""``churnwatch bench scorer``: events/s through one scorer worker on the real stack.

1. pre-produces ``--size`` simulated events (10 per user, time-ordered, keyed by
   user) to a fresh topic on the local Kafka;
2. baseline: a bare aiokafka loop, fresh consumer group, that consumes the
   topic and produces every value to another topic (acks from all in-sync
   replicas), committing per batch;
3. starts one scorer worker process (``churnwatch scorer``) with a fresh group,
   key prefix and metrics port, and reads its
   ``churnwatch_scorer_events_total`` counter until every event is counted;
4. removes its topics and Redis keys.

So that the figure includes learning as well as features, scoring and
snapshots, every user starts with one label snapshot whose horizon ended
(taken H days before the user's history starts; its features: the user's
vector after its first five events), and the worker's timer sweeps every
second: it labels and learns them while the events stream in, about one label
per ten events, the ratio of a live service whose users are active daily (one
snapshot per user and day). The snapshots fall due 2 s after the worker's
first event (by then it holds most users' state; a snapshot of a user without
state is dropped unlearned, as for an expired one), so a faster worker learns
as many of them as a slower one. The learned labels are printed with the rate.

Both rates run from the first event processed, so neither start-up (group
join, topic metadata) counts; the baseline's to the last event, the worker's to
the last event or the last of its labels learned, whichever comes later (a
worker that learns in a child process may still be learning when the events are
done: that time counts). The worker's CPU time per event is printed too: the
rate moves with what else runs on the machine (Kafka, Redis, the learning
process, neighbours), CPU per event much less. The last line is the result JSON.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from bench.registry import emit
from services.common.kafka import ensure_topics, make_admin
from services.common.kafka_security import aiokafka_options
from services.common.settings import CommonSettings, env_for, load_settings
from services.launcher import Services
from services.sim.generator import DAY, history, make_users

EVENTS_PER_USER = 10


def make_events(n: int, *, seed: int = 7, end: float | None = None) -> list[dict[str, Any]]:
    """``n`` simulated events of ``n // 10`` users over the last nine days, in time order."""
    end = end or time.time()
    out: list[dict[str, Any]] = []
    for user in make_users(max(1, n // EVENTS_PER_USER), seed=seed, prefix="bench"):
        for i, event in enumerate(history(user, start=end - 9 * DAY, days=9, seed=seed)):
            if i == EVENTS_PER_USER:
                break
            out.append(event)
    out.sort(key=lambda e: e["occurred_at"])
    return out[:n]


async def produce(settings: CommonSettings, topic: str, events: list[dict[str, Any]]) -> None:
    producer = AIOKafkaProducer(
        bootstrap_servers=settings.kafka_bootstrap,
        acks="all",
        linger_ms=10,
        max_batch_size=512 * 1024,
        **aiokafka_options(settings),
    )
    await producer.start()
    try:
        for start in range(0, len(events), 20_000):
            futures = [
                await producer.send(topic, orjson.dumps(e), key=e["user_id"].encode())
                for e in events[start : start + 20_000]
            ]
            await asyncio.gather(*futures)
    finally:
        await producer.stop()


async def bare_loop(settings: CommonSettings, source: str, sink: str, *, total: int) -> float:
    """Events/s of consume → produce each value → commit, first to last record."""
    bootstrap, security = settings.kafka_bootstrap, aiokafka_options(settings)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        **security,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security)
    await consumer.start()
    await producer.start()
    seen, started = 0, 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not batches:
                continue
            if not started:
                started = time.perf_counter()
            pending = []
            for records in batches.values():
                for rec in records:
                    pending.append(await producer.send(sink, rec.value, key=rec.key))
                seen += len(records)
            await asyncio.gather(*pending)
            await consumer.commit()
        return total / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


def faust_ceiling(env: dict[str, str], topic: str, *, total: int, group: str) -> float:
    """Events/s of a Faust agent that does nothing (:mod:`bench.faust_ceiling`), or NaN."""
    command = [sys.executable, "-m", "bench.faust_ceiling", "--topic", topic]
    try:
        done = subprocess.run(
            [*command, "--total", str(total), "--group", group],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        print("faust alone: did not finish in 300 s")
        return float("nan")
    rate = ceiling_from(done.stdout)
    if rate != rate:  # NaN
        print(f"faust alone: no figure (exit {done.returncode}): {done.stderr[-500:]}")
    return rate


def ceiling_from(stdout: str) -> float:
    """The figure :mod:`bench.faust_ceiling` printed, after whatever terminal codes Faust wrote.

    >>> ceiling_from("\\x1b[?25l\\x1b[?25hfaust-ceiling 14335\\n")
    14335.0
    >>> ceiling_from("nothing")
    nan
    """
    for line in stdout.splitlines():
        if "faust-ceiling " in line:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")


def counter(url: str, name: str) -> float | None:
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def measure_scorer(
    settings: CommonSettings,
    env: dict[str, str],
    *,
    port: int,
    total: int,
    logs: Path,
    on_first_event: Callable[[], None] = lambda: None,
) -> float:
    services = Services(settings, env, names=("scorer",), logs=logs)
    services.start()
    url = f"http://127.0.0.1:{port}/metrics"
    pid = services.procs["scorer"].pid
    try:
        first: tuple[float, float] | None = None
        cpu_first = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            services.check()
            count = counter(url, "churnwatch_scorer_events_total") or 0.0
            now = time.perf_counter()
            if count and first is None:
                first, cpu_first = (now, count), cpu_seconds(pid)
                on_first_event()
            if count >= total and first is not None:
                print(batch_summary(url))
                cpu = cpu_seconds(pid) - cpu_first
                print(
                    f"worker CPU: {cpu * 1e6 / (count - first[1]):.1f} µs an event, "
                    f"{cpu / (now - first[0]):.0%} of a core (all its threads; not the "
                    "learning process)"
                )
                learned, end = labels_settled(url, since=now)
                late = end - now
                print(f"labels learned: {learned:,.0f}, the last {late:.1f} s after the last event")
                end = max(end, now)
                return (total - first[1]) / (end - first[0]) if end > first[0] else float("nan")
            time.sleep(0.2)  # scraping /metrics costs the worker CPU: not too often
        raise RuntimeError(f"the scorer did not process {total} events in time; see {logs}")
    finally:
        services.stop()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def labels_settled(url: str, *, since: float, quiet_s: float = 3.0) -> tuple[float, float]:
    """The worker's learned labels once no more come for ``quiet_s`` (three of its
    sweeps), and the ``perf_counter`` time the count last grew (``since`` at the latest)."""
    learned, changed = labels_learned(url), since
    while time.perf_counter() - changed < quiet_s:
        time.sleep(0.2)
        now_learned = labels_learned(url)
        if now_learned != learned:
            learned, changed = now_learned, time.perf_counter()
    return learned, changed


def labels_learned(url: str) -> float:
    return sum(
        counter(url, f'churnwatch_scorer_labels_total{{label="{y}"}}') or 0.0 for y in ("0", "1")
    )


def batch_summary(url: str) -> str:
    """Mean micro-batch size and time, from the worker's histograms."""
    n = counter(url, "churnwatch_scorer_batch_events_count") or 0.0
    size = counter(url, "churnwatch_scorer_batch_events_sum") or 0.0
    secs = counter(url, "churnwatch_scorer_batch_seconds_sum") or 0.0
    if not n:
        return "no batches"
    redis_ms = {
        op: (counter(url, f'churnwatch_scorer_redis_seconds_sum{{op="{op}"}}') or 0.0) / n * 1000
        for op in ("load", "save")
    }
    return (
        f"{n:.0f} batches, {size / n:.0f} events and {secs / n * 1000:.1f} ms each on average "
        f"(waiting on Redis: load {redis_ms['load']:.1f} ms, save {redis_ms['save']:.1f} ms, "
        "during which the next batch's users are scored)"
    )


DUE_AFTER_FIRST_EVENT_S = 2.0


def seed_snapshots(settings: CommonSettings, events: list[dict[str, Any]], now: float) -> list[str]:
    """One label snapshot per user, not due before an hour (:func:`make_due` moves that);
    returns the users."""
    from services.common.events import parse_event
    from services.scorer.adapters.redis_store import join_user, user_key
    from services.scorer.config import ScorerSettings
    from services.scorer.core.features import FeatureSettings, apply_batch
    from services.scorer.core.labels import take_snapshot
    from services.scorer.core.snapshot_codec import encode_snapshot
    from services.scorer.core.vector import to_vector

    horizon = load_settings(ScorerSettings).scorer_horizon_days
    # Before the users' nine days of history: their first event already tells that
    # they were there after the horizon, so each label resolves (y=0) at once.
    taken_at = now - (horizon + 10) * DAY
    firsts: dict[str, list[Any]] = {}
    for e in events:
        got = firsts.setdefault(e["user_id"], [])
        if len(got) < 5:
            got.append(parse_event(e))
    r = redis.Redis.from_url(settings.redis_url)
    with r.pipeline(transaction=False) as pipe:
        for n, (uid, first) in enumerate(firsts.items(), start=1):
            state, _ = apply_batch(None, first, settings=FeatureSettings())
            assert state is not None
            snap = take_snapshot(
                uid, to_vector(state, taken_at), taken_at=taken_at, raw=0.0, risk=0.5
            )
            # The user's string as the worker keeps it, holding only the snapshot: the
            # worker's first write of the user adds the features and keeps the snapshot.
            key = user_key(settings.key_prefix, uid, "s")
            pipe.set(key, join_user(features=b"", snapshots=[encode_snapshot(snap)]))
            pipe.zadd(due_key(settings, uid), {uid: now + 3600})
            if n % 5000 == 0:
                pipe.execute()
        pipe.execute()
    return list(firsts)


def due_key(settings: CommonSettings, uid: str) -> str:
    """The shard of the label-due index that holds ``uid`` (see ``redis_layout``)."""
    from services.scorer.adapters.redis_layout import shard_key

    return shard_key(f"{settings.key_prefix}:snapdue", uid, settings.redis_index_shards)


def make_due(settings: CommonSettings, users: list[str], at: float) -> None:
    """Let the seeded snapshots of ``users`` fall due at ``at`` (one ZADD per shard)."""
    by_shard: dict[str, dict[str, float]] = {}
    for uid in users:
        by_shard.setdefault(due_key(settings, uid), {})[uid] = at
    r = redis.Redis.from_url(settings.redis_url)
    with r.pipeline(transaction=False) as pipe:
        for key, members in by_shard.items():
            pipe.zadd(key, members)
        pipe.execute()


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


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench scorer")
    parser.add_argument("--size", type=int, default=300_000, help="events (10 per user)")
    args = parser.parse_args(argv)
    run = uuid.uuid4().hex[:8]
    base = load_settings(CommonSettings)
    settings = base.model_copy(
        update={
            "topic_events": f"bench{run}.user-events",
            "topic_alerts": f"bench{run}.churn-alerts",
            "topic_actions": f"bench{run}.winback-actions",
            "topic_dlq": f"bench{run}.user-events.dlq",
            "key_prefix": f"bench{run}",
        }
    )
    copy_topic = f"bench{run}.copy"
    ensure_topics(settings, [settings.topic_events, copy_topic])
    port = free_port()
    env = env_for(settings) | {
        "CHURNWATCH_SCORER_GROUP": f"bench{run}-scorer",
        "CHURNWATCH_SCORER_WORKER_NAME": f"bench{run}-w1",
        "CHURNWATCH_SCORER_METRICS_PORT": str(port),
        "CHURNWATCH_LOG_LEVEL": "warning",
        "CHURNWATCH_SCORER_SWEEP_INTERVAL_S": "1",  # label and learn while scoring
    }
    try:
        events = make_events(args.size)
        total = len(events)
        print(f"producing {total} events of {total // EVENTS_PER_USER} users")
        asyncio.run(produce(settings, settings.topic_events, events))
        bare = asyncio.run(bare_loop(settings, settings.topic_events, copy_topic, total=total))
        print(f"bare aiokafka consume-and-produce: {bare:,.0f} events/s")
        ceiling = faust_ceiling(env, settings.topic_events, total=total, group=f"bench{run}-c")
        print(f"faust alone (an agent that does nothing): {ceiling:,.0f} events/s")
        seeded = seed_snapshots(settings, events, time.time())
        print(
            f"{len(seeded)} label snapshots, one per user, due "
            f"{DUE_AFTER_FIRST_EVENT_S:.0f} s after the worker's first event"
        )
        del events
        with tempfile.TemporaryDirectory(prefix="bench-scorer-") as logs:
            rate = measure_scorer(
                settings,
                env,
                port=port,
                total=total,
                logs=Path(logs),
                on_first_event=lambda: make_due(
                    settings, seeded, time.time() + DUE_AFTER_FIRST_EVENT_S
                ),
            )
        print(f"scorer worker: {rate:,.0f} events/s ({rate / ceiling:.2f} of faust alone)")
    finally:
        cleanup(
            settings,
            [settings.topic_events, settings.topic_alerts, settings.topic_dlq, copy_topic],
            prefix=f"bench{run}",
        )
    emit("scorer_events_per_s", rate, "events/s", bare, ratio=rate / bare)
    return 0

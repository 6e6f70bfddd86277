"""``churnwatch bench soak --minutes N``: the whole pipeline at a fixed rate, watched over time.

Runs ingest, scorer and notifier (processes, real Kafka and Redis, fresh topics
and key prefix, a mail catcher) and sends simulated activity at ``--rate``
events/s for ``--minutes``. Every 10 s it samples: the scorer's consumer lag
(end offsets minus the group's committed offsets), the services' resident
memory, Redis memory, and error counts from the services' metrics (dead
letters, store errors, ingest 503s). It writes ``soak.csv`` and ``soak.png`` in
``--out`` and ends with the JSON line: value = the largest lag seen (events),
baseline = the events sent in one sampling period (lag that large means the
scorer fell a full period behind).
"""

from __future__ import annotations

import argparse
import csv
import threading
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import httpx
import orjson
import redis
from kafka import KafkaConsumer, TopicPartition

from bench.e2e_load import HEADERS
from bench.registry import emit, fresh_deployment
from bench.scratch import cleanup, free_port
from services.common.kafka import all_topics, make_consumer
from services.common.settings import env_for
from services.demo_users import register_contacts
from services.launcher import Services, wait_http
from services.notifier.mailcatcher import MailCatcher
from services.sim.generator import event, make_users

PERIOD_S = 10.0


def total(url: str, name: str) -> float:
    """A counter summed over its labels (0 when the service does not answer)."""
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith((name + " ", name + "{"))
    )


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def lag(consumer: KafkaConsumer, topic: str) -> int:
    parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    ends = consumer.end_offsets(parts)
    return sum(ends[tp] - (consumer.committed(tp) or 0) for tp in parts)


def send(url: str, *, rate: float, stop: threading.Event, sent: list[int]) -> None:
    users = make_users(20_000, seed=3, prefix="soak")
    seq = 0
    with httpx.Client(timeout=10) as client:
        while not stop.is_set():
            started = time.monotonic()
            batch = []
            for _ in range(max(1, int(rate / 10))):
                seq += 1
                user = users[seq * 7919 % len(users)]
                kind = "payment_failed" if seq % 500 == 0 else "page_view"
                batch.append(event(user, kind, time.time(), seq))
            reply = client.post(url, content=b"\n".join(map(orjson.dumps, batch)), headers=HEADERS)
            if reply.status_code == 200:
                sent[0] += len(batch)
            time.sleep(max(0.0, 0.1 - (time.monotonic() - started)))


def plot(rows: list[dict[str, Any]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = [r["t_s"] / 60 for r in rows]
    fig, axes = plt.subplots(3, 1, figsize=(8, 8), sharex=True)
    axes[0].plot(t, [r["lag"] for r in rows])
    axes[0].set_ylabel("scorer lag (events)")
    for name in ("ingest_mb", "scorer_mb", "notifier_mb", "redis_mb"):
        axes[1].plot(t, [r[name] for r in rows], label=name.removesuffix("_mb"))
    axes[1].set_ylabel("memory (MiB)")
    axes[1].legend(loc="upper left")
    for name in ("dead_letters", "store_errors", "ingest_503"):
        axes[2].plot(t, [r[name] for r in rows], label=name)
    axes[2].set_ylabel("errors (cumulative)")
    axes[2].set_xlabel("minutes")
    axes[2].legend(loc="upper left")
    fig.suptitle("churnwatch soak")
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench soak", description=__doc__)
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=2000.0, help="events/s")
    parser.add_argument("--out", type=Path, default=Path("soak-out"))
    args = parser.parse_args(list(argv))
    run, settings = fresh_deployment("soak")
    ports = {name: free_port() for name in ("ingest", "scorer", "notifier", "smtp")}
    env = env_for(settings) | {
        "CHURNWATCH_INGEST_PORT": str(ports["ingest"]),
        "CHURNWATCH_SCORER_METRICS_PORT": str(ports["scorer"]),
        "CHURNWATCH_NOTIFIER_METRICS_PORT": str(ports["notifier"]),
        "CHURNWATCH_SMTP_PORT": str(ports["smtp"]),
        "CHURNWATCH_SCORER_GROUP": run,
        "CHURNWATCH_NOTIFIER_GROUP": f"{run}-n",
        "CHURNWATCH_TOPIC_NOTIFIER_DLQ": f"{run}.actions-dlq",
        "CHURNWATCH_LOG_LEVEL": "warning",
    }
    args.out.mkdir(parents=True, exist_ok=True)
    catcher = MailCatcher("127.0.0.1", ports["smtp"]).start()
    services = Services(
        settings, env, names=("ingest", "scorer", "notifier"), logs=args.out / "logs"
    )
    r = redis.Redis.from_url(settings.redis_url)
    consumer = make_consumer(settings, group_id=run, enable_auto_commit=False)
    rows: list[dict[str, Any]] = []
    stop, sent = threading.Event(), [0]
    try:
        register_contacts(settings, make_users(20_000, seed=3, prefix="soak"))
        services.start()
        wait_http(f"http://127.0.0.1:{ports['ingest']}/healthz", 60, services)
        time.sleep(8)
        sender = threading.Thread(
            target=send,
            daemon=True,
            kwargs={
                "url": f"http://127.0.0.1:{ports['ingest']}/v1/events",
                "rate": args.rate,
                "stop": stop,
                "sent": sent,
            },
        )
        sender.start()
        started = time.monotonic()
        while time.monotonic() - started < args.minutes * 60:
            time.sleep(PERIOD_S)
            services.check()
            metric = f"http://127.0.0.1:{ports['scorer']}/metrics"
            row = {
                "t_s": round(time.monotonic() - started, 1),
                "sent": sent[0],
                "lag": lag(consumer, settings.topic_events),
                **{f"{n}_mb": round(rss_mb(p.pid), 1) for n, p in services.procs.items()},
                "redis_mb": round(int(r.info("memory")["used_memory"]) / 2**20, 1),
                "dead_letters": total(metric, "churnwatch_scorer_dead_letters_total"),
                "store_errors": total(metric, "churnwatch_scorer_store_errors_total"),
                "ingest_503": total(
                    f"http://127.0.0.1:{ports['ingest']}/metrics",
                    "churnwatch_ingest_unavailable_total",
                ),
                "emails": catcher.inbox.received,
            }
            rows.append(row)
            print(orjson.dumps(row).decode(), flush=True)
    finally:
        stop.set()
        services.stop()
        catcher.stop()
        consumer.close()
        cleanup(settings, all_topics(settings), prefix=run)
    with (args.out / "soak.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot(rows, args.out / "soak.png")
    peak = max(row["lag"] for row in rows)
    per_period = args.rate * PERIOD_S
    print(
        f"soak: {sent[0]:,} events in {args.minutes:g} min; peak lag {peak:,} events; "
        f"plot {args.out / 'soak.png'}",
        flush=True,
    )
    emit("soak", peak, "events (peak lag)", per_period, ratio=peak / per_period)
    return 0

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
import time
from collections.abc import Sequence
from pathlib import Path

from bench.e2e_follower import Follower, append_time_topics
from bench.e2e_load import load, percentile
from bench.registry import emit, fresh_deployment
from bench.scratch import cleanup, free_port
from services.common.kafka import all_topics
from services.common.settings import env_for
from services.launcher import Services, wait_http


def spread(values: list[float]) -> str:
    """p50, p99 and max of latencies in seconds, in milliseconds.

    >>> spread([0.010, 0.020, 0.030])
    'p50 20.0 ms, p99 30.0 ms, max 30.0 ms'
    """
    if not values:
        return "none seen"
    p50, p99 = percentile(values, 0.5) * 1000, percentile(values, 0.99) * 1000
    return f"p50 {p50:.1f} ms, p99 {p99:.1f} ms, max {max(values) * 1000:.1f} ms"


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

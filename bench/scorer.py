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
import tempfile
import time
import uuid
from collections.abc import Sequence
from pathlib import Path

from bench.registry import emit
from bench.scorer_baselines import bare_loop, faust_ceiling
from bench.scorer_seed import EVENTS_PER_USER, make_due, make_events, produce, seed_snapshots
from bench.scorer_worker import measure_scorer
from bench.scratch import cleanup, free_port
from services.common.kafka import ensure_topics
from services.common.settings import CommonSettings, env_for, load_settings

DUE_AFTER_FIRST_EVENT_S = 2.0


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

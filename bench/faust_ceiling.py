"""What Faust alone carries: an agent that takes micro-batches and does nothing with them.

``python -m bench.faust_ceiling --topic T --total N`` consumes ``N`` records of
``T`` with a fresh consumer group, through the Faust app settings of the
workers and ``stream.take_events`` micro-batching (batches of the scorer's
size, 20 ms to fill), and prints ``faust-ceiling <events/s>`` (first record to
last) before it exits. ``churnwatch bench scorer`` runs it on its topic: it is
why the scorer's events no longer come through a Faust stream (on this
machine it carried ~11,000 events/s doing nothing, under the scorer's target;
see ``services/common/batch_consumer.py``), and it keeps that measured.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import uuid
from collections.abc import Sequence
from typing import Any

from services.common.faust_worker import make_faust_app, run_faust_worker
from services.common.settings import CommonSettings, load_settings
from services.scorer.config import ScorerSettings


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.faust_ceiling")
    parser.add_argument("--topic", required=True)
    parser.add_argument("--total", type=int, required=True)
    parser.add_argument("--group", default=f"bench-faust-{uuid.uuid4().hex[:8]}")
    args = parser.parse_args(argv)
    settings = load_settings(CommonSettings)
    scorer = load_settings(ScorerSettings)
    app = make_faust_app(
        settings,
        group=args.group,
        datadir="faust",
        session_timeout_s=scorer.scorer_session_timeout_s,
        broker_commit_every=10_000,
        stream_buffer_maxsize=16_384,
    )
    topic = app.topic(args.topic, key_serializer="raw", value_serializer="raw")
    seen = {"n": 0, "started": 0.0}

    @app.agent(topic)
    async def count(stream: Any) -> None:
        async for batch in stream.take_events(scorer.scorer_batch_size, within=0.02):
            if not seen["started"]:
                seen["started"] = time.perf_counter()
            seen["n"] += len(batch)
            if seen["n"] >= args.total:
                rate = args.total / (time.perf_counter() - seen["started"])
                print(f"faust-ceiling {rate:.0f}", flush=True)
                os._exit(0)  # the figure is out; a clean Faust shutdown takes seconds

    run_faust_worker(app, settings)
    return 1  # the worker stopped before counting every record


if __name__ == "__main__":
    sys.exit(main())

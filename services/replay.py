"""``churnwatch replay EVENTS.jsonl --out DIR [--as-of TIME ...]``.

Feeds a file of schema-v1 events, in event-time order, through the real
pipeline (Kafka → scorer worker → Redis → churn-alerts) with the scorer's clock
in replay mode, then writes what came out:

    DIR/alerts.jsonl          every alert as published (event-time occurred_at)
    DIR/scores.csv            user_id,as_of,risk,score,band,stage,tier at the end
    DIR/scores-<AS_OF>.csv    the same, as scores stood at each --as-of time
    DIR/model.ckpt            the model the replay learned, for
                              ``churnwatch scorer model load`` (a live start from history)

A replay uses its own single-partition topics and its own Redis key prefix, so
it starts from an empty state and never touches a live deployment's data; they
are removed at the end unless ``--keep``.

The replay's worker (topics, keys, reading back what it left) is
:class:`services.replay_worker.Replay`; the rows and format of the score files
are in ``services.replay_scores``.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import orjson

from services.common.events import parse_time
from services.common.kafka import ensure_topics
from services.common.settings import CommonSettings, load_settings
from services.launcher import Services
from services.replay_scores import stamp, write_scores
from services.replay_worker import Replay, say


def read_sorted(path: Path) -> list[tuple[float, bytes]]:
    """Every line with its event time, in event-time order (file order among equals)."""
    out = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                ts = parse_time(orjson.loads(line)["occurred_at"], path="occurred_at").timestamp()
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                ts = float("-inf")  # still replayed, so the scorer dead-letters it with a reason
            out.append((ts, line.rstrip(b"\n")))
            if n % 200_000 == 0:
                say(f"  read {n:,} lines")
    out.sort(key=lambda pair: pair[0])
    return out


def run_replay(events: Path, *, out: Path, as_of: list[str], keep: bool = False) -> dict[str, Any]:
    from services.stack.local import LocalStack

    base = load_settings(CommonSettings)
    LocalStack(base, say=say).up()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"reading {events} ...")
    lines = read_sorted(events)
    replay = Replay(base)
    ensure_topics(replay.settings)
    services = Services(replay.settings, replay.env, names=("scorer",), logs=out / "logs")
    cuts = sorted(parse_time(t, path="--as-of").timestamp() for t in as_of)
    say(f"replaying {len(lines):,} events (run {replay.run}) ...")
    services.start()
    try:
        done = 0
        for cut in [*cuts, float("inf")]:
            phase = [pair for pair in lines[done:] if pair[0] < cut]
            replay.produce(phase)
            done += len(phase)
            replay.wait_consumed(services)
            model = replay.checkpoint(services)
            if cut != float("inf"):
                write_scores(out / f"scores-{stamp(cut)}.csv", replay.scores_at(cut, model))
        end = max((ts for ts, _ in lines if ts != float("-inf")), default=0.0)
        write_scores(out / "scores.csv", replay.scores_at(end, model))
        (out / "model.ckpt").write_bytes(model.to_bytes())
        alerts = replay.alerts()
        (out / "alerts.jsonl").write_bytes(b"".join(a + b"\n" for a in alerts))
    finally:
        services.stop()
        if not keep:
            replay.clean()
    seconds = time.monotonic() - started
    return {
        "events": len(lines),
        "alerts": len(alerts),
        "seconds": round(seconds, 1),
        "events_per_s": round(len(lines) / seconds, 1),
        "out": str(out),
    }

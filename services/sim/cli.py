"""``churnwatch simulate``: a seeded population to a file, to ingest, or to Kafka.

    churnwatch simulate --users 1000 --days 120 --seed 1 --out runs/sim
    churnwatch simulate --users 200 --days 45 --to ingest --url http://127.0.0.1:8000 --rate 500

To a file it writes ``DIR/events.jsonl`` (schema v1, event-time order) and
``DIR/labels.csv`` (``user_id,churned,churned_at``; churn as defined in
:mod:`services.sim.population`). Live, the period ends now by default (so the
scorer's lateness window and silent-user timer see plausible times), and the
labels are still written when ``--out`` is given.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.common.errors import ConfigError
from services.common.events import parse_time
from services.sim.sinks import FileSink, IngestSink, KafkaSink, Progress, Sink

DEFAULT_START = "2026-01-01T00:00:00Z"


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="seeded simulated users: events and churn labels")
    p.add_argument("--users", type=int, default=1000, help="number of users")
    p.add_argument("--days", type=int, default=90, help="length of the simulated period")
    p.add_argument("--seed", type=int, default=1, help="same seed, same events")
    p.add_argument("--out", type=Path, default=None, help="folder for events.jsonl, labels.csv")
    p.add_argument("--to", choices=["file", "ingest", "kafka"], default="file")
    p.add_argument("--url", default="http://127.0.0.1:8000", help="ingest base URL (--to ingest)")
    p.add_argument("--rate", type=float, default=None, help="events per second when live")
    p.add_argument(
        "--start",
        default=None,
        help=f"start of the period, RFC 3339 (default {DEFAULT_START} to a file, "
        "now minus --days live)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar on stderr")
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    if args.users < 1 or args.days < 1:
        raise ConfigError("--users and --days must be at least 1")
    if args.to == "file" and args.out is None:
        raise ConfigError("--out DIR is required when writing to a file (or use --to ingest|kafka)")
    start = _start(args)
    if args.out is not None:
        args.out.mkdir(parents=True, exist_ok=True)
    sink: Sink
    if args.to == "file":
        sink = FileSink(args.out / "events.jsonl")
    elif args.to == "ingest":
        sink = IngestSink(args.url, rate=args.rate)
    else:
        sink = KafkaSink(rate=args.rate)
    summary = simulate_to(
        sink,
        users=args.users,
        days=args.days,
        seed=args.seed,
        start=start,
        out=args.out,
        progress=Progress(args.days * 86_400.0, enabled=not args.no_progress),
    )
    print(summary)
    return 0


def simulate_to(
    sink: Sink,
    *,
    users: int,
    days: int,
    seed: int,
    start: float,
    out: Path | None,
    progress: Progress | None = None,
) -> str:
    """Run the simulation into ``sink``; write labels to ``out``; return a JSON summary."""
    import orjson

    from services.sim.lifecycle import make_personas
    from services.sim.population import LabelBook, simulate_events, write_labels

    progress = progress or Progress(days * 86_400.0, enabled=False)
    book = LabelBook()
    count = 0
    personas = make_personas(users, days=days, seed=seed)
    try:
        for ev in simulate_events(personas, start=start, days=days, seed=seed):
            book.observe(ev)
            sink.send(ev)
            count += 1
            if count % 1000 == 0:
                progress.show(book.last[ev["user_id"]] - start, count)
    finally:
        sink.close()
    progress.show(days * 86_400.0, count, final=True)
    labels = book.labels(end=start + days * 86_400.0)
    if out is not None:
        write_labels(out / "labels.csv", labels)
    churned = [lab for lab in labels.values() if lab.churned]
    return orjson.dumps(
        {
            "events": count,
            "users": len(labels),
            "churned": len(churned),
            "cancelled": sum(lab.how == "cancel" for lab in churned),
            "faded": sum(lab.how == "silence" for lab in churned),
            "out": str(out) if out is not None else None,
        }
    ).decode()


def _start(args: argparse.Namespace) -> float:
    if args.start is not None:
        return parse_time(args.start, path="--start").timestamp()
    if args.to == "file":
        return parse_time(DEFAULT_START, path="--start").timestamp()
    return float(int(time.time() - args.days * 86_400.0))


if __name__ == "__main__":  # pragma: no cover
    parser = argparse.ArgumentParser(prog="churnwatch")
    add_parser(parser.add_subparsers(dest="command", required=True))
    ns = parser.parse_args()
    sys.exit(ns.handler(ns))

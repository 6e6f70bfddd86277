"""The argument parser of the ``churnwatch`` command: its subcommands, flags and help texts.

Each subcommand's ``handler`` default is its function in ``services.cli_handlers``,
which ``services.cli.main`` calls; ``simulate`` and ``evaluate`` add their own
subcommands (``services.sim.cli``, ``services.evaluate.cli``). It is apart from
the handlers so that the command line can be read, and changed, in one place.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from services import cli_handlers as handlers


def _add_redrive(actions: Any) -> None:
    redrive = actions.add_parser("redrive", help="send failed deliveries again")
    redrive.add_argument("--since", help="failed at or after: 30m, 6h, 2d, 1w or RFC 3339")
    redrive.add_argument("--alert-id", help="only this alert's failed deliveries")
    redrive.add_argument("--channel", choices=["email", "sms", "push", "webhook"])
    redrive.add_argument("--user-id", help="only this user's failed deliveries")
    redrive.add_argument("--limit", type=int, default=None, help="at most this many")
    redrive.add_argument(
        "--dry-run", action="store_true", help="say what would happen; send and change nothing"
    )
    redrive.set_defaults(handler=handlers.redrive)


def _add_model(actions: Any) -> None:
    model = actions.add_parser("model", help="list, export or load the workers' models")
    sub = model.add_subparsers(dest="model_action", required=True, metavar="ACTION")
    sub.add_parser("list", help="each worker's checkpoint: version, labels, saved, quality")
    export = sub.add_parser("export", help="a worker's model checkpoint to a file")
    export.add_argument("worker", help="the worker's name (see `model list`)")
    export.add_argument("file", type=Path)
    load = sub.add_parser("load", help="hand a model to running workers (rollback, reset)")
    source = load.add_mutually_exclusive_group(required=True)
    source.add_argument("file", type=Path, nargs="?", help="a checkpoint export or replay wrote")
    source.add_argument("--fresh", action="store_true", help="a new model: the prior alone")
    which = load.add_mutually_exclusive_group(required=True)
    which.add_argument("--worker", action="append", help="this worker (may be repeated)")
    which.add_argument(
        "--all", action="store_true", help="every worker that saved a checkpoint lately"
    )
    load.add_argument(
        "--active-within",
        type=float,
        default=None,
        help="seconds: with --all, a worker whose last checkpoint is older is left out "
        "(default: 10 minutes, or 3 checkpoint intervals if longer)",
    )
    load.add_argument(
        "--timeout", type=float, default=30.0, help="seconds to wait for the workers' answers"
    )
    model.set_defaults(handler=handlers.model)


def build_parser(description: str = "") -> argparse.ArgumentParser:
    """The whole command line; ``description`` heads its help (``services.cli`` passes
    the first paragraph of its docstring)."""
    parser = argparse.ArgumentParser(prog="churnwatch", description=description)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local Kafka and Redis")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the Redis is a three-master Redis Cluster (default ports 17001-17003; "
        "same as CHURNWATCH_REDIS_CLUSTER=true)",
    )
    stack.set_defaults(handler=handlers.stack)

    for name, helptext in (
        ("ingest", "the HTTP ingest service"),
        ("scorer", "the Faust scoring worker"),
        ("notifier", "the Faust win-back notifier"),
        ("api", "the risk query API and dashboard"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--port", type=int, default=None, help="override the service's port")
        p.set_defaults(handler=handlers.service("scorer" if name == "api" else name), role=name)
        if name == "notifier":  # `churnwatch notifier` alone runs the worker
            _add_redrive(p.add_subparsers(dest="action", metavar="ACTION"))
        if name == "scorer":  # `churnwatch scorer` alone runs the worker
            _add_model(p.add_subparsers(dest="action", metavar="ACTION"))

    demo = sub.add_parser("demo", help="stack, services and simulated traffic, with a summary")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    demo.add_argument("--users", type=int, default=200, help="simulated users")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.set_defaults(handler=handlers.demo)

    replay = sub.add_parser("replay", help="feed a history through the real pipeline")
    replay.add_argument("events", type=Path, help="schema-v1 events, JSON lines")
    replay.add_argument("--out", type=Path, required=True, help="output directory")
    replay.add_argument(
        "--as-of",
        action="append",
        metavar="TIME",
        help="also write the scores as of this RFC 3339 time (repeatable)",
    )
    replay.add_argument("--keep", action="store_true", help="keep the replay's topics and keys")
    replay.set_defaults(handler=handlers.replay)

    backfill = sub.add_parser(
        "backfill", help="a new deployment's users and model from its history"
    )
    backfill.add_argument("events", type=Path, help="schema-v1 events, JSON lines")
    backfill.add_argument(
        "--worker",
        action="append",
        help="a scorer worker that starts from the model learned (may be repeated; "
        "default: CHURNWATCH_SCORER_WORKER_NAME)",
    )
    backfill.add_argument(
        "--force",
        action="store_true",
        help="even if the deployment already has users (a stored user gets only its events "
        "from its last stored one on: a stopped backfill finishes, nothing counts twice)",
    )
    backfill.set_defaults(handler=handlers.backfill)

    contacts = sub.add_parser("contacts", help="the contact directory")
    contacts_sub = contacts.add_subparsers(dest="action", required=True)
    imp = contacts_sub.add_parser("import", help="load contacts and consent from CSV or JSON lines")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=handlers.contacts)

    mail = sub.add_parser("mailcatcher", help="loopback SMTP server that counts what it gets")
    mail.add_argument("--host", default="127.0.0.1")
    mail.add_argument("--port", type=int, default=2525)
    mail.set_defaults(handler=handlers.mailcatcher)

    keys = sub.add_parser("keys", help="API keys")
    keys.add_argument("action", choices=["create"])
    keys.add_argument(
        "--scope", action="append", required=True, choices=["ingest", "read", "admin"],
        help="a scope of the new key (repeat for several; admin implies all)",
    )  # fmt: skip
    keys.add_argument("--name", default="", help="who or what the key is for")
    keys.set_defaults(handler=handlers.keys)

    bench = sub.add_parser("bench", help="benchmarks on the real local stack")
    bench.add_argument(
        "name",
        choices=[
            "ingest",
            "scorer",
            "memory",
            "sweep",
            "e2e-latency",
            "cdnow",
            "soak",
            "fold",
            "backfill",
            "all",
        ],
        help="all runs every benchmark in turn",
    )
    bench.add_argument(
        "--size", type=int, default=None, help="events (scorer) or users (memory, sweep)"
    )
    bench.add_argument("--duration", type=float, default=15.0, help="seconds of load per target")
    bench.add_argument("--connections", type=int, default=4, help="concurrent HTTP connections")
    bench.add_argument("--batch", type=int, default=500, help="events per request")
    bench.add_argument("rest", nargs=argparse.REMAINDER, help="passed to the benchmark")
    bench.set_defaults(handler=handlers.bench)

    from services.evaluate.cli import add_parser as add_evaluate
    from services.sim.cli import add_parser as add_simulate

    add_simulate(sub)
    add_evaluate(sub)
    return parser

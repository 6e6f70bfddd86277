"""The ``churnwatch`` command.

    churnwatch stack up|down|status     the local Kafka and Redis
    churnwatch stack up --redis-cluster     ... with a three-master Redis Cluster as the Redis
    churnwatch ingest|scorer|notifier|api   run one service
    churnwatch notifier redrive [--since 2h] [--dry-run]   send failed deliveries again
    churnwatch scorer model list|export|load   the workers' models: back up, roll back, reset
    churnwatch backfill EVENTS.jsonl    a new deployment's users and model from its history
    churnwatch demo [--duration S]      everything, with simulated traffic
    churnwatch mailcatcher              a loopback SMTP server that counts mail
    churnwatch keys create --scope S    a new API key, printed once
    churnwatch bench ingest             the ingest throughput benchmark
    churnwatch bench scorer|memory|sweep   scorer throughput, Redis bytes per user, sweep time
    churnwatch simulate --users N --days D --seed S --out DIR   simulated events and labels
    churnwatch evaluate --run DIR --labels LABELS.csv   quality report of a replay

Settings come from ``CHURNWATCH_*`` environment variables; flags override the
few that people expect as flags (ports, duration). A bad setting or a missing
dependency ends the command with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from services.common.errors import ChurnwatchError

Handler = Callable[[argparse.Namespace], int]


def _stack(args: argparse.Namespace) -> int:
    from services.common.settings import (
        LOCAL_REDIS,
        LOCAL_REDIS_CLUSTER,
        CommonSettings,
        load_settings,
    )
    from services.stack.local import LocalStack

    settings = load_settings(CommonSettings)
    if args.redis_cluster and not settings.redis_cluster:
        url = LOCAL_REDIS_CLUSTER if settings.redis_url == LOCAL_REDIS else settings.redis_url
        settings = load_settings(CommonSettings, redis_cluster=True, redis_url=url)
    stack = LocalStack(settings)
    if args.action == "up":
        stack.up()
        return 0
    if args.action == "down":
        stack.down()
        return 0
    status = stack.status()
    for name, ok in status.items():
        print(f"{name:13} {stack.address(name)}  {'up' if ok else 'DOWN'}")
    return 0 if all(status.values()) else 1


def _service(module: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        main = importlib.import_module(f"services.{module}.__main__").main
        return int(main(args) or 0)

    return run


def _redrive(args: argparse.Namespace) -> int:
    from services.notifier.redrive_command import run_redrive

    return run_redrive(args)


def _model(args: argparse.Namespace) -> int:
    from services.scorer.model_command import run_model_command

    return run_model_command(args)


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(duration=args.duration, users=args.users, rate=args.rate)


def _replay(args: argparse.Namespace) -> int:
    import orjson

    from services.replay import run_replay

    summary = run_replay(args.events, out=args.out, as_of=args.as_of or [], keep=args.keep)
    print(orjson.dumps(summary).decode())
    return 0


def _backfill(args: argparse.Namespace) -> int:
    import orjson

    from services.backfill import run_backfill

    summary = run_backfill(args.events, workers=args.worker or [], force=args.force)
    print(orjson.dumps(summary).decode())
    return 0


def _contacts(args: argparse.Namespace) -> int:
    import orjson

    from services.common.settings import CommonSettings, load_settings
    from services.notifier.contacts_import import run_import

    counts = run_import(args.file, load_settings(CommonSettings))
    print(orjson.dumps(counts).decode())
    return 0 if counts["imported"] or not counts["skipped"] else 1


def _mailcatcher(args: argparse.Namespace) -> int:
    from services.notifier.mailcatcher import serve_forever

    serve_forever(host=args.host, port=args.port)
    return 0


def _keys(args: argparse.Namespace) -> int:
    from services.common.auth import RedisKeyStore, create_key
    from services.common.settings import CommonSettings, load_settings

    settings = load_settings(CommonSettings)
    store = RedisKeyStore(
        settings.redis_url, key_prefix=settings.key_prefix, cluster=settings.redis_cluster
    )
    key = create_key(store, scopes=args.scope, name=args.name)
    print(key)
    print(
        f"scopes {', '.join(sorted(set(args.scope)))}; stored hashed in Redis "
        f"({settings.key_prefix}:apikeys): this is the only time the key is shown",
        file=sys.stderr,
    )
    return 0


def _bench(args: argparse.Namespace) -> int:
    from pathlib import Path

    # bench/ is not part of the installed package; it lives next to services/.
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from bench.ingest import run_bench
    from bench.registry import BENCHMARKS, run

    def one(name: str) -> int:
        if name == "ingest":
            return run_bench(
                duration=args.duration,
                connections=args.connections,
                batch=args.batch,
                use_httpx="--httpx" in args.rest,
            )
        size = [] if args.size is None else ["--size", str(args.size)]
        return run(name, [*size, *args.rest])

    if args.name != "all":
        return one(args.name)
    suite = [name for name in ("ingest", *BENCHMARKS) if name != "soak"]  # soak: by hand
    failed = [name for name in suite if one(name) != 0]
    if failed:
        print(f"benchmarks that failed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


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
    redrive.set_defaults(handler=_redrive)


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
    model.set_defaults(handler=_model)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnwatch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local Kafka and Redis")
    stack.add_argument("action", choices=["up", "down", "status"])
    stack.add_argument(
        "--redis-cluster",
        action="store_true",
        help="the Redis is a three-master Redis Cluster (default ports 17001-17003; "
        "same as CHURNWATCH_REDIS_CLUSTER=true)",
    )
    stack.set_defaults(handler=_stack)

    for name, helptext in (
        ("ingest", "the HTTP ingest service"),
        ("scorer", "the Faust scoring worker"),
        ("notifier", "the Faust win-back notifier"),
        ("api", "the risk query API and dashboard"),
    ):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("--port", type=int, default=None, help="override the service's port")
        p.set_defaults(handler=_service("scorer" if name == "api" else name), role=name)
        if name == "notifier":  # `churnwatch notifier` alone runs the worker
            _add_redrive(p.add_subparsers(dest="action", metavar="ACTION"))
        if name == "scorer":  # `churnwatch scorer` alone runs the worker
            _add_model(p.add_subparsers(dest="action", metavar="ACTION"))

    demo = sub.add_parser("demo", help="stack, services and simulated traffic, with a summary")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    demo.add_argument("--users", type=int, default=200, help="simulated users")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.set_defaults(handler=_demo)

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
    replay.set_defaults(handler=_replay)

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
    backfill.set_defaults(handler=_backfill)

    contacts = sub.add_parser("contacts", help="the contact directory")
    contacts_sub = contacts.add_subparsers(dest="action", required=True)
    imp = contacts_sub.add_parser("import", help="load contacts and consent from CSV or JSON lines")
    imp.add_argument("file", type=Path)
    imp.set_defaults(handler=_contacts)

    mail = sub.add_parser("mailcatcher", help="loopback SMTP server that counts what it gets")
    mail.add_argument("--host", default="127.0.0.1")
    mail.add_argument("--port", type=int, default=2525)
    mail.set_defaults(handler=_mailcatcher)

    keys = sub.add_parser("keys", help="API keys")
    keys.add_argument("action", choices=["create"])
    keys.add_argument(
        "--scope", action="append", required=True, choices=["ingest", "read", "admin"],
        help="a scope of the new key (repeat for several; admin implies all)",
    )  # fmt: skip
    keys.add_argument("--name", default="", help="who or what the key is for")
    keys.set_defaults(handler=_keys)

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
    bench.set_defaults(handler=_bench)

    from services.evaluate.cli import add_parser as add_evaluate
    from services.sim.cli import add_parser as add_simulate

    add_simulate(sub)
    add_evaluate(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.handler(args))
    except ChurnwatchError as exc:
        print(f"churnwatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

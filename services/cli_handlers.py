"""What each ``churnwatch`` command does once its arguments are parsed.

One function per command, set as its ``handler`` by ``services.cli_parser``
(``churnwatch stack`` runs :func:`stack`, and so on); ``services.cli.main``
calls it. Each imports what it runs only when called, so a command loads only
its own code. They are apart from the parser, which only describes the command
line.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable

Handler = Callable[[argparse.Namespace], int]


def stack(args: argparse.Namespace) -> int:
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


def service(module: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        main = importlib.import_module(f"services.{module}.__main__").main
        return int(main(args) or 0)

    return run


def redrive(args: argparse.Namespace) -> int:
    from services.notifier.redrive_command import run_redrive

    return run_redrive(args)


def model(args: argparse.Namespace) -> int:
    from services.scorer.model_command import run_model_command

    return run_model_command(args)


def demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(duration=args.duration, users=args.users, rate=args.rate)


def replay(args: argparse.Namespace) -> int:
    import orjson

    from services.replay import run_replay

    summary = run_replay(args.events, out=args.out, as_of=args.as_of or [], keep=args.keep)
    print(orjson.dumps(summary).decode())
    return 0


def backfill(args: argparse.Namespace) -> int:
    import orjson

    from services.backfill import run_backfill

    summary = run_backfill(args.events, workers=args.worker or [], force=args.force)
    print(orjson.dumps(summary).decode())
    return 0


def contacts(args: argparse.Namespace) -> int:
    import orjson

    from services.common.settings import CommonSettings, load_settings
    from services.notifier.contacts_import import run_import

    counts = run_import(args.file, load_settings(CommonSettings))
    print(orjson.dumps(counts).decode())
    return 0 if counts["imported"] or not counts["skipped"] else 1


def mailcatcher(args: argparse.Namespace) -> int:
    from services.notifier.mailcatcher import serve_forever

    serve_forever(host=args.host, port=args.port)
    return 0


def keys(args: argparse.Namespace) -> int:
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


def bench(args: argparse.Namespace) -> int:
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

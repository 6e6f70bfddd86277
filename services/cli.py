"""The ``churnwatch`` command.

    churnwatch stack up|down|status     the local Kafka and Redis
    churnwatch ingest|scorer|notifier|api   run one service
    churnwatch demo [--duration S]      everything, with simulated traffic
    churnwatch mailcatcher              a loopback SMTP server that counts mail

Settings come from ``CHURNWATCH_*`` environment variables; flags override the
few that people expect as flags (ports, duration). A bad setting or a missing
dependency ends the command with a message that says what to fix.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Callable, Sequence

from services.common.errors import ChurnwatchError

Handler = Callable[[argparse.Namespace], int]


def _stack(args: argparse.Namespace) -> int:
    from services.common.settings import CommonSettings, load_settings
    from services.stack.local import LocalStack

    stack = LocalStack(load_settings(CommonSettings))
    if args.action == "up":
        stack.up()
        return 0
    if args.action == "down":
        stack.down()
        return 0
    status = stack.status()
    for name, ok in status.items():
        endpoint = stack.kafka if name == "kafka" else stack.redis
        print(f"{name:6} {endpoint.host}:{endpoint.port}  {'up' if ok else 'DOWN'}")
    return 0 if all(status.values()) else 1


def _service(module: str) -> Handler:
    def run(args: argparse.Namespace) -> int:
        main = importlib.import_module(f"services.{module}.__main__").main
        return int(main(args) or 0)

    return run


def _demo(args: argparse.Namespace) -> int:
    from services.demo import run_demo

    return run_demo(duration=args.duration, users=args.users, rate=args.rate)


def _mailcatcher(args: argparse.Namespace) -> int:
    from services.notifier.mailcatcher import serve_forever

    serve_forever(host=args.host, port=args.port)
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="churnwatch", description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    stack = sub.add_parser("stack", help="the local Kafka and Redis")
    stack.add_argument("action", choices=["up", "down", "status"])
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

    demo = sub.add_parser("demo", help="stack, services and simulated traffic, with a summary")
    demo.add_argument("--duration", type=float, default=60.0, help="seconds of traffic")
    demo.add_argument("--users", type=int, default=200, help="simulated users")
    demo.add_argument("--rate", type=float, default=200.0, help="events per second")
    demo.set_defaults(handler=_demo)

    mail = sub.add_parser("mailcatcher", help="loopback SMTP server that counts what it gets")
    mail.add_argument("--host", default="127.0.0.1")
    mail.add_argument("--port", type=int, default=2525)
    mail.set_defaults(handler=_mailcatcher)
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

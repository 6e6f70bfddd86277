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

This module is the entry point (the ``churnwatch`` script, ``python -m
services.cli``): the parser is built in ``services.cli_parser``, and what each
command does is in ``services.cli_handlers``.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from services.cli_parser import build_parser
from services.common.errors import ChurnwatchError


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser(__doc__.split("\n\n", 1)[0] if __doc__ else "").parse_args(argv)
    try:
        return int(args.handler(args))
    except ChurnwatchError as exc:
        print(f"churnwatch: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())

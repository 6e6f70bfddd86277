"""``churnwatch notifier redrive``: re-drive failed deliveries from the command line.

Same settings as the notifier worker (channels, retry policy, playbooks, Redis,
Kafka); the re-driven actions go to ``winback-actions`` like the worker's. One
line per failed delivery as it is handled, then a summary; exit status 1 when a
delivery failed again (run it again later), 0 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime

import orjson

from services.common.logs import scrub
from services.common.messages import WinbackAction
from services.common.settings import CommonSettings
from services.notifier.redrive import Redriver
from services.notifier.redrive_report import Outcome, RedriveFilter, RedriveSummary, parse_since


class KafkaActionSink:
    """Publishes on winback-actions with the deployment's producer (acks from all replicas)."""

    def __init__(self, settings: CommonSettings) -> None:
        from services.common.kafka import make_producer

        self.topic = settings.topic_actions
        self.producer = make_producer(settings)

    async def publish(self, actions: list[WinbackAction]) -> None:
        def send() -> None:
            pending = [
                self.producer.send(
                    self.topic, key=a.user_id.encode(), value=orjson.dumps(a.to_dict())
                )
                for a in actions
            ]
            for future in pending:
                future.get(timeout=30)

        await asyncio.to_thread(send)

    def close(self) -> None:
        self.producer.close(timeout=10)


def run_redrive(args: argparse.Namespace) -> int:
    from services.common.errors import ConfigError
    from services.common.logs import setup_logging
    from services.common.settings import load_settings
    from services.notifier.config import NotifierSettings

    settings = load_settings(NotifierSettings)
    setup_logging(settings.log_level, settings.log_format)
    try:
        since = parse_since(args.since, now=time.time()) if args.since else None
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    which = RedriveFilter(
        since=since, alert_id=args.alert_id, channel=args.channel, user_id=args.user_id
    )
    summary = asyncio.run(_run(settings, which, dry_run=args.dry_run, limit=args.limit))
    verb = "would be" if summary.dry_run else "were"
    print(
        f"{summary.found} failed deliveries matched; {summary.redriven} {verb} re-driven: "
        f"{summary.sent} sent, {summary.failed_again} failed again, "
        f"{summary.suppressed} suppressed, {summary.deferred} deferred; {summary.skipped} skipped",
        file=sys.stderr,
    )
    print(orjson.dumps(summary.to_dict()).decode())
    return 1 if summary.failed_again else 0


async def _run(
    settings: CommonSettings, which: RedriveFilter, *, dry_run: bool, limit: int | None
) -> RedriveSummary:
    from services.notifier.config import NotifierSettings
    from services.notifier.runtime import NotifierRuntime

    assert isinstance(settings, NotifierSettings)
    runtime = NotifierRuntime(settings)
    notifier = await runtime.notifier()
    sink = _NoSink() if dry_run else KafkaActionSink(settings)
    try:
        redriver = Redriver(notifier, runtime.directory, sink)
        return await redriver.run(which, dry_run=dry_run, limit=limit, progress=_show(dry_run))
    finally:
        if isinstance(sink, KafkaActionSink):
            sink.close()
        await runtime.directory.r.aclose()


class _NoSink:
    async def publish(self, actions: list[WinbackAction]) -> None:
        raise AssertionError("a dry run publishes nothing")


def _show(dry_run: bool) -> Callable[[Outcome], None]:
    def show(outcome: Outcome) -> None:
        job = outcome.job
        failed_at = datetime.fromtimestamp(job["failed_at"], UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        what = f"would be {outcome.outcome}" if dry_run else outcome.outcome
        reason = f" ({scrub(outcome.reason)})" if outcome.reason else ""
        print(
            f"{job['channel']:7} {job['action_id']} user {job['user_id']} "
            f"failed {failed_at} x{job.get('failures', 1)}: {what}{reason}",
            file=sys.stderr,
            flush=True,
        )

    return show

"""Run the notifier worker (``churnwatch notifier``)."""

from __future__ import annotations

import argparse
import sys


def main(args: argparse.Namespace | None = None) -> int:
    from prometheus_client import start_http_server

    from services.common.faust_worker import run_faust_worker
    from services.common.kafka import ensure_topics
    from services.common.logs import setup_logging
    from services.common.settings import load_settings
    from services.notifier.app import create_app
    from services.notifier.config import NotifierSettings
    from services.notifier.runtime import NotifierRuntime

    port = getattr(args, "port", None)
    settings = load_settings(NotifierSettings, **({"notifier_metrics_port": port} if port else {}))
    setup_logging(settings.log_level, settings.log_format)
    ensure_topics(
        settings, [settings.topic_alerts, settings.topic_actions, settings.topic_notifier_dlq]
    )
    runtime = NotifierRuntime(settings)
    if settings.notifier_metrics_port:
        start_http_server(settings.notifier_metrics_port, addr=settings.metrics_host)
    return run_faust_worker(create_app(settings, runtime), settings)


if __name__ == "__main__":
    sys.exit(main())

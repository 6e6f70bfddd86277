"""Run the scorer worker (``churnwatch scorer``) or the risk API (``churnwatch api``)."""

from __future__ import annotations

import argparse
import sys

from services.common.logs import setup_logging
from services.common.settings import load_settings


def run_worker(port: int | None) -> int:
    from prometheus_client import start_http_server

    from services.common.faust_worker import run_faust_worker
    from services.common.kafka import ensure_topics
    from services.scorer.app import create_app
    from services.scorer.config import ScorerSettings
    from services.scorer.runtime import Runtime

    settings = load_settings(ScorerSettings, **({"scorer_metrics_port": port} if port else {}))
    setup_logging(settings.log_level, settings.log_format)
    ensure_topics(settings)
    if settings.scorer_metrics_port:
        start_http_server(settings.scorer_metrics_port, addr=settings.metrics_host)
    return run_faust_worker(create_app(settings, Runtime(settings)), settings)


def run_api(port: int | None) -> int:
    import uvicorn

    from services.scorer.api import build_api
    from services.scorer.config import ApiSettings

    settings = load_settings(ApiSettings, **({"api_port": port} if port else {}))
    setup_logging(settings.log_level, settings.log_format)
    uvicorn.run(
        build_api(settings),
        host=settings.api_host,
        port=settings.api_port,
        log_config=None,
        access_log=False,
        timeout_graceful_shutdown=5,  # open alert streams (SSE) must not hold a stop
    )
    return 0


def main(args: argparse.Namespace | None = None) -> int:
    role = getattr(args, "role", None) or (sys.argv[1] if len(sys.argv) > 1 else "scorer")
    port = getattr(args, "port", None)
    return run_api(port) if role == "api" else run_worker(port)


if __name__ == "__main__":
    sys.exit(main())

"""Run the ingest service (``churnwatch ingest``)."""

from __future__ import annotations

import argparse
import sys
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from services.ingest.config import IngestSettings


def main(args: argparse.Namespace | None = None) -> int:
    import uvicorn

    from services.common.gc_tuning import tune_gc
    from services.common.logs import setup_logging
    from services.common.settings import load_settings
    from services.ingest.adapters import make_publisher
    from services.ingest.app import create_app
    from services.ingest.config import IngestSettings

    port = getattr(args, "port", None)
    settings = load_settings(IngestSettings, **({"ingest_port": port} if port else {}))
    setup_logging(settings.log_level, settings.log_format)
    # In the background: with Kafka down, the check takes its full timeout (~30 s),
    # and ingest should be up meanwhile, answering 503 and /readyz.
    threading.Thread(target=make_topics, args=(settings,), name="topics", daemon=True).start()
    publisher = make_publisher(settings)
    app = create_app(settings, publisher)
    tune_gc()
    uvicorn.run(
        app, host=settings.ingest_host, port=settings.ingest_port, log_config=None, access_log=False
    )
    return 0


def make_topics(settings: IngestSettings) -> None:
    """Create the topics if missing, as the workers do: a broker that does not create
    them on first use would refuse ingest's events until a worker had started once."""
    import logging

    from kafka.errors import KafkaError

    from services.common.errors import BrokerUnavailable
    from services.common.kafka import ensure_topics

    try:
        ensure_topics(settings)
    except (BrokerUnavailable, KafkaError) as exc:
        logging.getLogger("churnwatch.ingest").warning(
            "topics not checked, kafka unreachable", extra={"error": str(exc)}
        )


if __name__ == "__main__":
    sys.exit(main())

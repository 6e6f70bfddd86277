"""Run the ingest service (``churnwatch ingest``)."""

from __future__ import annotations

import argparse
import logging
import sys
import threading
import time
from collections.abc import Callable
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


def make_topics(settings: IngestSettings, *, sleep: Callable[[float], None] = time.sleep) -> bool:
    """Create the topics if missing, as the workers do: a broker that does not create
    them on first use would refuse ingest's events until a worker had started once.

    Tries until Kafka answers (docker-compose starts ingest before the broker is
    ready), backing off up to 30 s; a configuration the broker refuses (credentials,
    TLS) is logged and not retried. True once the topics are there.
    """
    from kafka.errors import KafkaError

    from services.common.errors import BrokerUnavailable, ChurnwatchError
    from services.common.kafka import ensure_topics

    log = logging.getLogger("churnwatch.ingest")
    wait = 1.0
    while True:
        try:
            ensure_topics(settings)
            return True
        except (BrokerUnavailable, KafkaError) as exc:
            log.warning(
                "topics not checked, kafka unreachable; trying again",
                extra={"error": str(exc), "retry_in_s": wait},
            )
        except ChurnwatchError as exc:
            log.error("topics not checked", extra={"error": str(exc)})
            return False
        sleep(wait)
        wait = min(30.0, wait * 2)


if __name__ == "__main__":
    sys.exit(main())

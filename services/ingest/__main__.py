"""Run the ingest service (``churnwatch ingest``)."""

from __future__ import annotations

import argparse
import sys


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
    publisher = make_publisher(settings)
    app = create_app(settings, publisher)
    tune_gc()
    uvicorn.run(
        app, host=settings.ingest_host, port=settings.ingest_port, log_config=None, access_log=False
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What both Faust workers (scorer, notifier) share: the app's settings and the run loop."""

from __future__ import annotations

from typing import Any

import faust

from services.common.gc_tuning import tune_gc
from services.common.kafka import ensure_topics
from services.common.kafka_security import faust_credentials
from services.common.logs import worker_logging_config
from services.common.settings import CommonSettings


def make_faust_app(
    settings: CommonSettings, *, group: str, datadir: str, session_timeout_s: float, **extra: Any
) -> faust.App:
    """A Faust app that keeps DESIGN §7: acks from all in-sync replicas, topics made by us.

    Kafka SASL/TLS comes from the settings (``broker_credentials``), like every other client.
    """
    home = (settings.home / datadir).resolve()
    home.mkdir(parents=True, exist_ok=True)  # a fresh checkout using someone else's Kafka
    return faust.App(
        group,
        broker=f"kafka://{settings.kafka_bootstrap}",
        broker_credentials=faust_credentials(settings),
        store="memory://",
        datadir=str(home),
        web_enabled=False,
        producer_acks=-1,
        topic_partitions=settings.topic_partitions,
        topic_replication_factor=settings.topic_replication,
        topic_allow_declare=False,  # ensure_topics creates ours, with our partition count
        consumer_auto_offset_reset="earliest",
        broker_commit_interval=1.0,
        # Faust's 60 s default keeps a crashed worker's partitions idle for a minute.
        broker_session_timeout=session_timeout_s,
        broker_heartbeat_interval=min(3.0, session_timeout_s / 3),
        **extra,
    )


def run_faust_worker(app: faust.App, settings: CommonSettings) -> int:
    """Run until stopped, logging JSON (with masking) like every other process."""
    # Faust's consumer always reads its leader topic (the scorer's reads nothing else),
    # and may not declare it (topic_allow_declare=False): made here, one partition as
    # Faust would, so a start does not log "topic not found" errors.
    ensure_topics(settings, [f"{app.conf.id}-__assignor-__leader"], partitions=1)
    worker = faust.Worker(
        app,
        loglevel=settings.log_level,
        quiet=True,
        redirect_stdouts=False,
        logging_config=worker_logging_config(settings.log_level, settings.log_format),
    )
    tune_gc()
    worker.execute_from_commandline()
    return 0

"""The Faust app of the scorer: the only module that imports faust.

Events come in micro-batches from :class:`~services.common.batch_consumer.BatchConsumer`
(aiokafka, run as a service of the Faust app: a Faust stream costs more per
record than this worker may spend, see that module's doc). The handler is a
thin loop: hand the batch to :class:`~services.scorer.pipeline.BatchScorer`,
publish alerts and dead letters, and wait for Kafka's acknowledgements; the
consumer commits the offsets only after that, when the effects are durable
(DESIGN §7). Faust runs the timers (silent-user sweep, label learning,
checkpoints), the producer, start-up and shutdown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from typing import Any

import faust
import mode
import orjson

from services.common.batch_consumer import BatchConsumer, Handler
from services.common.errors import StoreUnavailable
from services.common.faust_worker import make_faust_app
from services.common.messages import Record
from services.scorer import metrics
from services.scorer.config import ScorerSettings
from services.scorer.decoding import Decoded, ScoreAheadStep
from services.scorer.pipeline import Outcome
from services.scorer.runtime import Runtime
from services.scorer.store_retry import until_stored

log = logging.getLogger("churnwatch.scorer")


Publish = Callable[[Outcome], Awaitable[None]]


def make_publisher(alerts: faust.types.TopicT, dlq: faust.types.TopicT) -> Publish:
    """Sends an outcome's alerts and dead letters and returns once Kafka acknowledged all."""

    async def publish(outcome: Outcome) -> None:
        pending = []
        for alert in outcome.alerts:
            pending.append(
                await alerts.send(key=alert.user_id.encode(), value=orjson.dumps(alert.to_dict()))
            )
            metrics.ALERTS.labels(alert.band, alert.trigger).inc()
        for dead in outcome.dead:
            pending.append(
                await dlq.send(
                    key=(dead.source.key or "").encode(), value=orjson.dumps(dead.to_dict())
                )
            )
            metrics.DEAD_LETTERED.labels(dead.stage + ":" + _reason_kind(dead.reason)).inc()
        if pending:
            await asyncio.gather(*pending)  # Kafka acknowledged every one

    return publish


def batch_handler(runtime: Runtime, publish: Publish) -> Handler:
    """What the consumer runs on each micro-batch; it commits the offsets after it returns."""

    async def handle(records: list[Record], decoded: Decoded | None = None) -> None:
        started = time.perf_counter()
        scorer = await runtime.scorer()
        async with runtime.state_lock:  # the sweep re-scores the same users' state
            outcome = await until_stored(scorer.handle, records, decoded)
        await publish(outcome)
        await until_stored(runtime.after_batch, outcome)
        metrics.EVENTS.inc(len(records))
        for band, n in outcome.bands.items():
            metrics.SCORES.labels(band).inc(n)
        for key, n in outcome.winbacks.items():
            playbook, group = key.rsplit(":", 1)
            metrics.WINBACKS.labels(playbook, group).inc(n)
        for op, seconds in outcome.redis_s.items():
            metrics.REDIS_SECONDS.labels(op).observe(seconds)
        if outcome.newest_ts:
            metrics.EVENT_LAG.set(max(0.0, time.time() - outcome.newest_ts))
        metrics.DUPLICATES.inc(outcome.duplicates)
        metrics.ERASED_EVENTS.inc(outcome.erased)
        count_unreadable(outcome)
        metrics.BATCH_SIZE.observe(len(records))
        metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    return handle


def count_unreadable(outcome: Outcome) -> None:
    """Count and log the stored values a batch or a sweep could not read, by kind."""
    for kind, n in outcome.unreadable.items():
        metrics.UNREADABLE.labels(kind).inc(n)
    if outcome.unreadable:
        # state: the users' events dead-lettered; policy, record: dropped, the users
        # scored without them (docs/operations.md, failure table).
        log.warning("stored values unreadable", extra={"by_kind": dict(outcome.unreadable)})


def create_app(settings: ScorerSettings, runtime: Runtime) -> faust.App:
    app = make_faust_app(
        settings,
        # Not the consumer group of the events: Faust's own consumer joins its app id's
        # group with Faust's assignor, which a group of aiokafka members refuses.
        group=f"{settings.scorer_group}-faust",
        datadir="faust",
        session_timeout_s=settings.scorer_session_timeout_s,
    )
    # Read at each scrape, not set when a checkpoint or learn succeeds: during a Redis
    # outage neither does, and the age must keep growing for ChurnwatchCheckpointStale.
    metrics.CHECKPOINT_AGE.set_function(runtime.checkpoint_age_s)
    publish = make_publisher(
        app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw"),
        app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw"),
    )
    consumer = BatchConsumer(
        settings,
        topic=settings.topic_events,
        group=settings.scorer_group,
        handler=batch_handler(runtime, publish),
        # Decoding the next batch, reading its users' rows and scoring them fills the
        # Redis waits of this one (a replay scores per event in arrival order instead).
        prepare=ScoreAheadStep(runtime.ready_scorer) if settings.scorer_clock == "live" else None,
        max_records=settings.scorer_batch_size,
        fill_within_s=settings.scorer_batch_within_s,
        commit_every_s=settings.scorer_commit_every_s,
        session_timeout_s=settings.scorer_session_timeout_s,
    )
    metrics.CONSUMER_LAG.set_function(consumer.lag)

    @app.service
    class ScoreEvents(mode.Service):
        """Feeds the event topic's micro-batches to the scorer (common/batch_consumer.py)."""

        async def on_start(self) -> None:
            leftover = await until_stored(runtime.unpublished)
            await publish(leftover)
            await until_stored(runtime.after_batch, leftover)
            await consumer.start()

        async def on_stop(self) -> None:
            await consumer.stop()

        @mode.Service.task
        async def _consume(self) -> None:
            await consumer.run()

    if settings.scorer_clock == "live":  # in replay, sweeps run at event-time ticks instead

        @app.timer(interval=settings.scorer_sweep_interval_s)
        async def sweep_silent_users() -> None:
            outcome = await until_stored(runtime.sweep)
            count_unreadable(outcome)
            await publish(outcome)
            await until_stored(runtime.after_batch, outcome)

    # A timer that raises crashes the whole worker: a Redis outage only skips a tick.
    @app.timer(interval=settings.scorer_checkpoint_interval_s)
    async def checkpoint() -> None:
        try:
            await runtime.checkpoint()
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("checkpoint skipped, redis unavailable", extra={"error": str(exc)})

    @app.timer(interval=1.0)
    async def answer_requests() -> None:
        """``churnwatch replay`` (or an operator) asks for a checkpoint through Redis;
        ``churnwatch scorer model load`` leaves a model to run."""
        try:
            await runtime.checkpoint_if_requested()
            await runtime.load_model_if_requested()
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("control request skipped, redis unavailable", extra={"error": str(exc)})

    @app.on_before_shutdown.connect
    async def checkpoint_on_shutdown(sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        try:
            await runtime.checkpoint()
        except StoreUnavailable as exc:
            log.error("final checkpoint failed", extra={"error": str(exc)})
        finally:
            runtime.close()

    return app


def _reason_kind(reason: str) -> str:
    """A bounded label for the metric from a free-text reason."""
    for kind in ("unreadable", "late", "JSON", "schema_version", "empty", "required"):
        if kind.lower() in reason.lower():
            return kind.lower()
    return "invalid"

"""The Faust app of the scorer: the only module that imports faust.

The agent is a thin loop: take a micro-batch, hand it to
:class:`~services.scorer.pipeline.BatchScorer`, publish alerts and dead
letters, and wait for Kafka's acknowledgements before the batch is acked (so
offsets are committed only after the effects are durable, DESIGN §7).
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust
import orjson

from services.common.errors import StoreUnavailable
from services.common.faust_worker import make_faust_app
from services.scorer import metrics
from services.scorer.config import ScorerSettings
from services.scorer.pipeline import Outcome, Record
from services.scorer.runtime import Runtime

log = logging.getLogger("churnwatch.scorer")


def create_app(settings: ScorerSettings, runtime: Runtime) -> faust.App:
    app = make_faust_app(
        settings,
        group=settings.scorer_group,
        datadir="faust",
        session_timeout_s=settings.scorer_session_timeout_s,
        broker_commit_every=10_000,
        stream_buffer_maxsize=16_384,
    )
    events = app.topic(settings.topic_events, key_serializer="raw", value_serializer="raw")
    alerts = app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.topic_dlq, key_serializer="raw", value_serializer="raw")

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

    @app.agent(events)
    async def score_events(stream: Any) -> None:
        scorer = await runtime.scorer()
        leftover = await _until_stored(runtime.unpublished)
        await publish(leftover)
        await _until_stored(runtime.after_batch, leftover)
        async for batch in stream.take_events(
            settings.scorer_batch_size, within=settings.scorer_batch_within_s
        ):
            started = time.perf_counter()
            records = [
                Record(
                    e.message.key,
                    e.message.value,
                    e.message.topic,
                    e.message.partition,
                    e.message.offset,
                )
                for e in batch
            ]
            outcome = await _until_stored(scorer.handle, records)
            await publish(outcome)
            await _until_stored(runtime.after_batch, outcome)
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
            metrics.BATCH_SIZE.observe(len(records))
            metrics.BATCH_SECONDS.observe(time.perf_counter() - started)

    if settings.scorer_clock == "live":  # in replay, sweeps run at event-time ticks instead

        @app.timer(interval=settings.scorer_sweep_interval_s)
        async def sweep_silent_users() -> None:
            outcome = await _until_stored(runtime.sweep)
            await publish(outcome)
            await _until_stored(runtime.after_batch, outcome)

    # A timer that raises crashes the whole worker: a Redis outage only skips a tick.
    @app.timer(interval=settings.scorer_checkpoint_interval_s)
    async def checkpoint() -> None:
        try:
            await runtime.checkpoint()
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("checkpoint skipped, redis unavailable", extra={"error": str(exc)})

    @app.timer(interval=1.0)
    async def checkpoint_on_request() -> None:
        """``churnwatch replay`` (or an operator) asks for a checkpoint through Redis."""
        try:
            await runtime.checkpoint_if_requested()
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning("checkpoint request skipped, redis unavailable", extra={"error": str(exc)})

    @app.on_before_shutdown.connect
    async def checkpoint_on_shutdown(sender: Any, /, *args: Any, signal: Any, **kw: Any) -> None:
        try:
            await runtime.checkpoint()
        except StoreUnavailable as exc:
            log.error("final checkpoint failed", extra={"error": str(exc)})

    return app


async def _until_stored(fn: Any, *args: Any) -> Outcome:
    """Run a batch step, waiting out a Redis outage instead of losing the batch."""
    delay = 0.2
    while True:
        try:
            result: Outcome = await fn(*args)
            return result
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning(
                "redis unavailable, retrying", extra={"error": str(exc), "retry_in_s": delay}
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)


def _reason_kind(reason: str) -> str:
    """A bounded label for the metric from a free-text reason."""
    for kind in ("late", "JSON", "schema_version", "empty", "required"):
        if kind.lower() in reason.lower():
            return kind.lower()
    return "invalid"

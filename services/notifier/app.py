"""The Faust app of the notifier: the only notifier module that imports faust.

Per alert: validate → :class:`~services.notifier.service.Notifier` → publish
each action on ``winback-actions`` and wait for Kafka's acknowledgement before
the alert's offset can be committed. A timer sends deferred actions when due.
The agent notes where it is on each partition for ``/metrics``
(:mod:`services.notifier.progress`).
"""

from __future__ import annotations

import asyncio
import logging
import time
from functools import partial
from typing import Any

import faust
import orjson
from faust.exceptions import ConsumerNotStarted
from faust.types import TP

from services.common.errors import InvalidEvent, StoreUnavailable
from services.common.faust_worker import make_faust_app
from services.common.messages import WinbackAction, dead_record
from services.common.schemas import validate
from services.notifier import metrics
from services.notifier.config import NotifierSettings
from services.notifier.progress import AlertProgress
from services.notifier.runtime import NotifierRuntime
from services.notifier.service import Notifier

log = logging.getLogger("churnwatch.notifier")


def create_app(settings: NotifierSettings, runtime: NotifierRuntime) -> faust.App:
    app = make_faust_app(
        settings,
        group=settings.notifier_group,
        datadir="faust-notifier",
        session_timeout_s=settings.notifier_session_timeout_s,
    )
    alerts = app.topic(settings.topic_alerts, key_serializer="raw", value_serializer="raw")
    actions_topic = app.topic(settings.topic_actions, key_serializer="raw", value_serializer="raw")
    dlq = app.topic(settings.topic_notifier_dlq, key_serializer="raw", value_serializer="raw")

    async def publish(actions: list[WinbackAction]) -> None:
        pending = [
            await actions_topic.send(key=a.user_id.encode(), value=orjson.dumps(a.to_dict()))
            for a in actions
        ]
        if pending:
            await asyncio.gather(*pending)

    progress = AlertProgress(end_of=partial(highwater, app))
    metrics.CONSUMER_LAG.set_function(progress.lag)

    # Sent once the agent is done with the alert in hand. (mode types a handler with a
    # NamedArg that no function signature matches.)
    @app.on_partitions_revoked.connect  # type: ignore[arg-type]
    async def forget_revoked(sender: faust.App, revoked: set[TP], **kwargs: Any) -> None:
        progress.forget(revoked)

    async def handle_alert(notifier: Notifier, message: Any) -> None:
        metrics.ALERTS.inc()
        try:
            alert = _decode(message.value)
        except InvalidEvent as exc:
            metrics.INVALID.inc()
            dead = dead_record(message, exc, stage="notifier")
            await (await dlq.send(key=message.key, value=orjson.dumps(dead.to_dict())))
            return
        actions = await _until_stored(notifier.handle_alert, alert)
        await publish(actions)
        await _until_stored(
            runtime.directory.mark_published, alert["user_id"], [a.action_id for a in actions]
        )

    @app.agent(alerts)
    async def handle_alerts(stream: Any) -> None:
        notifier = await runtime.notifier()
        async for event in stream.events():
            message = event.message
            progress.take(message.tp, message.offset)
            await handle_alert(notifier, message)
            progress.done(message.tp, message.offset)

    @app.timer(interval=settings.notifier_deferred_poll_s)
    async def send_deferred() -> None:
        notifier = await runtime.notifier()
        jobs = await _until_stored(runtime.directory.due, time.time())
        for job in jobs:
            action = await _until_stored(notifier.run_deferred, job)
            if action is not None:
                await publish([action])
                await _until_stored(
                    runtime.directory.mark_published, action.user_id, [action.action_id]
                )
            await _until_stored(runtime.directory.finish, job)
        metrics.DEFERRED.set(await runtime.directory.deferred_depth())
        metrics.FAILED.set(await runtime.directory.failed_depth())

    return app


def highwater(app: faust.App, tp: Any) -> int | None:
    """The partition's end as of the consumer's last fetch response from it, without a
    request to Kafka; None if unknown: not fetched from yet, revoked, or not running.

    Read from the metrics server's thread, so the partition may be revoked meanwhile
    (aiokafka asserts it is assigned).
    """
    try:
        end = app.consumer.highwater(tp)
    except (AssertionError, AttributeError, ConsumerNotStarted):
        return None
    return None if end is None else int(end)


def _decode(value: bytes) -> dict[str, Any]:
    try:
        alert = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise InvalidEvent(f"alert is not valid JSON: {exc}") from None
    errors = validate("churn-alert", alert)
    if errors:
        raise InvalidEvent(errors[0].message, path=errors[0].path)
    return dict(alert)


async def _until_stored(fn: Any, *args: Any) -> Any:
    delay = 0.2
    while True:
        try:
            return await fn(*args)
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()  # ChurnwatchNotifierStoreErrors
            log.warning("redis unavailable, retrying", extra={"error": str(exc)})
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

"""The ops dashboard: one static page served by the risk API, and its live alert stream.

``GET /dashboard`` is the page (HTML, JS and CSS under ``static/``, nothing from
the internet; the Content-Security-Policy forbids any other origin). The page and
its static files answer without a key (a browser cannot send one when it opens
a page) and hold no data; everything shown comes from keyed routes. The page
asks for an API key, keeps it in ``sessionStorage`` and calls the same /v1
routes as any client, with ``Authorization: Bearer``.

``GET /v1/alerts/stream`` follows the alerts topic from its end and sends each
alert as a server-sent event (``data: <churn-alert v1 JSON>``), a comment line
every 15 s as a heartbeat, and ``event: ready`` once it reads from the end of
every partition. The browser's ``EventSource`` cannot send headers, so this
route, and only this one, also takes the key as ``?key=``. A key in a URL can
end up in proxy logs and browser history: give the dashboard a ``read`` key of
its own, which can see but never change anything. The stream uses a consumer
without a group (partitions assigned, no offsets committed), so each viewer
sees every alert and leaves nothing behind in Kafka.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse, JSONResponse, Response, StreamingResponse
from fastapi.staticfiles import StaticFiles

from services.common.auth import ApiKey, ApiKeys, AuthFailed, presented_key, require_scope
from services.common.errors import StoreUnavailable
from services.scorer.api.deps import READ, errors
from services.scorer.config import ApiSettings
from services.scorer.core.reasons import LABELS

log = logging.getLogger("churnwatch.api.dashboard")

STATIC = Path(__file__).parent / "static"
HEARTBEAT_S = 15.0
# Only this origin: no CDN, font or script from elsewhere can load.
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
)


def install_dashboard(app: FastAPI, settings: ApiSettings) -> None:
    """Mount the page, its static files and the alert stream on ``app``."""
    app.include_router(build_router(settings))
    app.mount("/dashboard/static", StaticFiles(directory=STATIC), name="dashboard-static")


KeyParam = Query(
    max_length=512,
    description=(
        "the API key, for browsers' EventSource, which cannot send headers; this route only. "
        "URLs get logged: use a key with the read scope alone"
    ),
)


async def stream_key(request: Request, key: Annotated[str | None, KeyParam] = None) -> ApiKey:
    """``require_scope("read")``, also accepting ``?key=`` (EventSource sends no headers)."""
    if key is None or presented_key(request.headers) is not None:
        return await require_scope("read")(request)
    keys: ApiKeys = request.app.state.api_keys
    hit, found = keys.cached(key)
    if not hit:
        try:
            found = await run_in_threadpool(keys.lookup, key)
        except StoreUnavailable:
            raise AuthFailed(503, "the key store is unavailable; retry later") from None
    if found is None:
        raise AuthFailed(401, "unknown API key: create one with 'churnwatch keys create'")
    if not found.allows("read"):
        raise AuthFailed(403, "this API key does not have the 'read' scope")
    return found


def build_router(settings: ApiSettings) -> APIRouter:
    router = APIRouter(tags=["dashboard"])

    @router.get(
        "/dashboard",
        summary="The ops dashboard (HTML page)",
        description=(
            "A self-contained page: at-risk list, live alert feed, user detail, activity, "
            "win-back and model charts. It asks for an API key with the `read` scope."
        ),
        response_class=FileResponse,
        responses={200: {"content": {"text/html": {"example": "<!doctype html>..."}}}},
    )
    async def page() -> FileResponse:
        return FileResponse(
            STATIC / "dashboard.html",
            media_type="text/html",
            headers={"Content-Security-Policy": CSP, "Cache-Control": "no-cache"},
        )

    @router.get(
        "/dashboard/labels",
        summary="Plain-word names of the model's features (for the page)",
        description="Feature name → what it means, as alerts label their reasons.",
        dependencies=READ,
        responses={
            200: {"content": {"application/json": {"example": {"recency_days": "days since"}}}},
            **errors(),
        },
    )
    def labels() -> dict[str, str]:
        return LABELS

    @router.get(
        "/v1/alerts/stream",
        summary="Live churn alerts as server-sent events",
        description=(
            "Follows the alerts topic from its end: `event: ready` once positioned, then one "
            "`data:` line per churn-alert v1 message, and a `: heartbeat` comment every 15 s. "
            "Needs the `read` scope; as EventSource cannot send headers, the key may be given "
            "as `?key=` on this route only (use a read-only key: URLs get logged). "
            "503 when Kafka is unreachable or the topic does not exist."
        ),
        response_class=StreamingResponse,
        responses={
            200: {
                "content": {
                    "text/event-stream": {
                        "example": 'event: ready\ndata: {}\n\ndata: {"alert_id": "5f0c6b1e"}\n\n'
                    }
                }
            },
            **errors(),
        },
    )
    async def alert_stream(request: Request, _: Annotated[ApiKey, Depends(stream_key)]) -> Response:
        consumer, problem = await _follow_from_end(settings)
        if consumer is None:
            retry_after = {"Retry-After": str(settings.api_retry_after_s)}
            return JSONResponse({"error": problem}, status_code=503, headers=retry_after)
        return StreamingResponse(
            _events(consumer, request),
            media_type="text/event-stream",
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    return router


async def _follow_from_end(settings: ApiSettings) -> tuple[Any, str]:
    """A started group-less consumer positioned at the end of every alerts partition.

    Without a group, aiokafka assigns the consumer every partition of the topic
    (and any added later) and commits nothing; each partition is then sought to
    its end and the position resolved, so an alert published after ``ready`` is
    never missed.
    """
    from aiokafka import AIOKafkaConsumer
    from aiokafka.errors import KafkaError

    from services.common.kafka_security import aiokafka_options

    consumer = AIOKafkaConsumer(
        settings.topic_alerts,
        bootstrap_servers=settings.kafka_bootstrap,
        **aiokafka_options(settings),
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="latest",
        request_timeout_ms=10_000,
    )
    try:
        await asyncio.wait_for(consumer.start(), timeout=10)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("alert stream: Kafka unavailable: %s", exc)
        await consumer.stop()
        return None, "Kafka is unavailable"
    try:
        deadline = time.monotonic() + 10
        while not consumer.assignment():
            if time.monotonic() > deadline:
                await consumer.stop()
                return None, f"the alerts topic {settings.topic_alerts!r} was not found"
            await asyncio.sleep(0.05)
        partitions = sorted(consumer.assignment())
        await consumer.seek_to_end(*partitions)
        for tp in partitions:
            await consumer.position(tp)
    except (KafkaError, OSError, TimeoutError) as exc:
        log.warning("alert stream: Kafka unavailable: %s", exc)
        await consumer.stop()
        return None, "Kafka is unavailable"
    return consumer, ""


async def _events(consumer: Any, request: Request) -> AsyncIterator[bytes]:
    last_sent = time.monotonic()
    try:
        yield b"retry: 3000\nevent: ready\ndata: {}\n\n"
        while not await request.is_disconnected():
            batches = await consumer.getmany(timeout_ms=1000, max_records=200)
            chunks = [
                b"data: " + msg.value.replace(b"\n", b"") + b"\n\n"
                for records in batches.values()
                for msg in records
                if msg.value
            ]
            if chunks:
                yield b"".join(chunks)
                last_sent = time.monotonic()
            elif time.monotonic() - last_sent >= HEARTBEAT_S:
                yield b": heartbeat\n\n"
                last_sent = time.monotonic()
    finally:
        await consumer.stop()

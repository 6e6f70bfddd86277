"""The ingest HTTP service: POST /v1/events → Kafka ``user-events``."""

from __future__ import annotations

import asyncio
import logging
import time
from collections import OrderedDict
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import orjson
from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import Response
from prometheus_client import make_asgi_app

from services.common.auth import (
    ApiKeys,
    docs_routes,
    install_auth,
    keys_from_settings,
    require_scope,
)
from services.common.schemas import SCHEMA_NAMES, load_schema
from services.ingest import metrics
from services.ingest.config import IngestSettings
from services.ingest.core import BadRequest, check_items, parse_body
from services.ingest.ports import EventPublisher

log = logging.getLogger("churnwatch.ingest")


class ORJSONResponse(Response):
    """JSON through orjson, for the handlers that build their own answers.

    FastAPI's own ``ORJSONResponse`` is deprecated (it serialises through Pydantic
    when a response model is declared); these answers are plain dicts, built per
    request on the hot path, so they keep orjson.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


class RecentIds:
    """Event ids produced in the last ``window_s`` seconds (bounded LRU)."""

    def __init__(self, window_s: float, *, max_size: int = 1_000_000) -> None:
        self.window_s = window_s
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, event_id: str, now: float) -> bool:
        expiry = self._seen.get(event_id)
        return expiry is not None and expiry > now

    def add(self, event_id: str, now: float) -> None:
        self._seen[event_id] = now + self.window_s
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.max_size or (
            self._seen and next(iter(self._seen.values())) <= now
        ):
            self._seen.popitem(last=False)


def create_app(
    settings: IngestSettings, publisher: EventPublisher, *, keys: ApiKeys | None = None
) -> FastAPI:
    """The ingest app; ``keys`` defaults to the Redis key store (``dev-key`` in development)."""

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        log.info("ingest ready", extra={"env": settings.env, "topic": settings.topic_events})
        yield
        await run_in_threadpool(publisher.close)  # flush what Kafka has not acknowledged yet

    app = FastAPI(
        title="churnwatch ingest",
        version="1",
        description="Takes user activity events (schema v1) and puts them on Kafka.",
        default_response_class=ORJSONResponse,
        lifespan=lifespan,
        **docs_routes(settings),
    )
    api_keys = keys or keys_from_settings(settings)
    install_auth(
        app,
        api_keys,
        retry_after_s=settings.ingest_retry_after_s,
        on_unavailable=metrics.KEY_STORE_DOWN.inc,
    )
    recent = RecentIds(settings.ingest_dedup_window_s)
    # A publisher that can wait for Kafka on the event loop (librdkafka's) does;
    # one that blocks (kafka-python's, the fakes) waits in the thread pool.
    publish_async = getattr(publisher, "publish_async", None)
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Kafka and the API key store are reachable")
    async def readyz() -> ORJSONResponse:
        # Both checks at once, each bounded by its client's 2 s timeout.
        answers = await asyncio.gather(
            run_in_threadpool(publisher.ready), run_in_threadpool(api_keys.store.ready)
        )
        down = []
        for dependency, up in zip(("kafka", "key_store"), answers, strict=True):
            metrics.DEPENDENCY_UP.labels(dependency).set(1 if up else 0)
            if not up:
                down.append(dependency.replace("_", " "))
        if not down:
            return ORJSONResponse({"status": "ready"})
        return ORJSONResponse(
            {"status": " and ".join(down) + " unreachable"},
            status_code=503,
            headers={"Retry-After": str(settings.ingest_retry_after_s)},
        )

    @app.get(
        "/v1/schemas/{name}",
        summary="A wire contract as JSON Schema",
        dependencies=[Depends(require_scope("read"))],
    )
    def get_schema(name: str) -> ORJSONResponse:
        if name not in SCHEMA_NAMES:
            return ORJSONResponse(
                {"error": f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}"},
                status_code=404,
            )
        return ORJSONResponse(load_schema(name))

    @app.post(
        "/v1/events",
        summary="Send one event, a JSON array of events, or NDJSON",
        dependencies=[Depends(require_scope("ingest"))],
    )
    async def post_events(request: Request) -> ORJSONResponse:
        metrics.IN_FLIGHT.inc()
        try:
            return await _handle(request)
        finally:
            metrics.IN_FLIGHT.dec()

    async def _handle(request: Request) -> ORJSONResponse:
        declared = request.headers.get("content-length")
        if declared and declared.isdigit() and int(declared) > settings.ingest_max_body_bytes:
            metrics.REJECTED.labels("too_large").inc()
            return _error(413, f"body over {settings.ingest_max_body_bytes} bytes; split it")
        body = await _read_limited(request, settings.ingest_max_body_bytes)
        if body is None:
            metrics.REJECTED.labels("too_large").inc()
            return _error(413, f"body over {settings.ingest_max_body_bytes} bytes; split it")
        try:
            items = parse_body(
                body, request.headers.get("content-type", ""), max_events=settings.ingest_max_events
            )
        except BadRequest as exc:
            metrics.REJECTED.labels(
                {400: "bad_json", 413: "too_many", 415: "content_type"}.get(
                    exc.status, "bad_request"
                )
            ).inc()
            return _error(exc.status, str(exc))
        checked = check_items(items)
        if checked.rejected:
            metrics.REJECTED.labels("invalid").inc(len(checked.rejected))
        now = time.monotonic()
        fresh: list[tuple[int, bytes, bytes]] = []
        fresh_ids: list[str] = []
        in_batch: set[str] = set()
        for record, eid in zip(checked.records, checked.event_ids, strict=True):
            # A retry inside the window, or the same id twice in this body: produce once.
            if eid in in_batch or recent.seen(eid, now):
                continue
            in_batch.add(eid)
            fresh.append(record)
            fresh_ids.append(eid)
        duplicates = len(checked.records) - len(fresh)
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        started = time.perf_counter()
        batch = [(k, v) for _, k, v in fresh]
        if publish_async is not None:
            results = await publish_async(batch)
        else:
            results = await run_in_threadpool(publisher.publish, batch)
        metrics.PRODUCE_LATENCY.observe(time.perf_counter() - started)
        not_taken = [
            {"index": i, "error": str(err) or type(err).__name__}
            for (i, _, _), err in zip(fresh, results, strict=True)
            if err is not None
        ]
        for eid, err in zip(fresh_ids, results, strict=True):
            if err is None:
                recent.add(eid, now)
        accepted = len(checked.records) - len(not_taken)
        metrics.ACCEPTED.inc(accepted - duplicates)
        body_out: dict[str, Any] = {
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": checked.rejected,
        }
        if not_taken:
            metrics.KAFKA_DOWN.inc()
            log.warning("kafka did not take events", extra={"not_taken": len(not_taken)})
            body_out["not_taken"] = not_taken
            body_out["error"] = (
                "Kafka is unavailable: the items in not_taken were not stored; "
                "send them again after Retry-After seconds"
            )
            return ORJSONResponse(
                body_out,
                status_code=503,
                headers={"Retry-After": str(settings.ingest_retry_after_s)},
            )
        status = 200 if not checked.rejected else (207 if accepted else 422)
        return ORJSONResponse(body_out, status_code=status)

    return app


def _error(status: int, message: str) -> ORJSONResponse:
    return ORJSONResponse({"error": message}, status_code=status)


async def _read_limited(request: Request, limit: int) -> bytes | None:
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)

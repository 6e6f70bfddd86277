"""The ingest HTTP service: POST /v1/events → Kafka ``user-events``.

The wiring: the app, its API keys, /healthz, /readyz, /metrics, the schemas and
the routes. What POST /v1/events does is in :mod:`services.ingest.events`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import Depends, FastAPI, Request
from fastapi.concurrency import run_in_threadpool
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
from services.ingest.events import EventIntake
from services.ingest.ports import EventPublisher
from services.ingest.responses import ORJSONResponse, error

log = logging.getLogger("churnwatch.ingest")


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
    intake = EventIntake(settings, publisher)
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
            return error(404, f"unknown schema {name!r}; known: {', '.join(SCHEMA_NAMES)}")
        return ORJSONResponse(load_schema(name))

    @app.post(
        "/v1/events",
        summary="Send one event, a JSON array of events, or NDJSON",
        dependencies=[Depends(require_scope("ingest"))],
    )
    async def post_events(request: Request) -> ORJSONResponse:
        return await intake.handle(request)

    return app

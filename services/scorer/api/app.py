"""Wiring of the risk API: one Redis client, auth, routers, error bodies, health, metrics."""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from prometheus_client import Histogram, make_asgi_app
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.common.auth import ApiKeys, docs_routes, install_auth, keys_from_settings
from services.common.errors import StoreUnavailable, UnreadableStored
from services.common.redis_client import AsyncRedis, async_redis
from services.scorer.api import ops, users
from services.scorer.api.commands import AdminCommands
from services.scorer.api.dashboard import install_dashboard
from services.scorer.config import ApiSettings
from services.scorer.queries import RiskQueries

REQUESTS = Histogram(
    "churnwatch_api_request_seconds",
    "Risk API requests by route and status",
    ["route", "status"],
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5),
)


def describe_errors(errors: list[Any]) -> tuple[str, list[dict[str, str]]]:
    """One line per problem, ``where: what``; the offending values are never echoed.

    >>> describe_errors([{"loc": ("body", "phone"), "msg": "Value error, bad", "input": "+1"}])
    ('body.phone: bad', [{'loc': 'body.phone', 'msg': 'bad'}])
    """
    details = [
        {
            "loc": ".".join(str(p) for p in e.get("loc", ())),
            "msg": str(e.get("msg", "")).removeprefix("Value error, "),
        }
        for e in errors
    ]
    return "; ".join(f"{d['loc']}: {d['msg']}" for d in details), details


def build_api(
    settings: ApiSettings,
    *,
    keys: ApiKeys | None = None,
    clock: Callable[[], float] = time.time,
) -> FastAPI:
    """The app; nothing connects until the first request. ``keys`` defaults to Redis-backed;
    ``clock`` says what "now" is for the day-keyed figures (DAU, cohorts, recency).

    Connections belong to the event loop that opened them: serve it from one loop
    (uvicorn, or ``with TestClient(app)``).
    """
    client = async_redis(settings.redis_url, cluster=settings.redis_cluster, socket_timeout=5)
    app = FastAPI(
        title="churnwatch risk API",
        version="1",
        description=(
            "Churn risk, reasons and history per user, the at-risk list, activity and model "
            "figures; consent, contact and erasure for admins. Every /v1 route needs an API "
            "key (`Authorization: Bearer <key>` or `X-API-Key`) with the `read` scope, or "
            '`admin` for writes. Errors are `{"error": "..."}`.'
        ),
        lifespan=_closing(client),
        **docs_routes(settings),
    )
    app.state.queries = RiskQueries(
        client, prefix=settings.key_prefix, index_shards=settings.redis_index_shards, clock=clock
    )
    app.state.commands = AdminCommands(
        client, prefix=settings.key_prefix, index_shards=settings.redis_index_shards
    )
    retry_after = {"Retry-After": str(settings.api_retry_after_s)}
    install_auth(
        app, keys or keys_from_settings(settings), retry_after_s=settings.api_retry_after_s
    )
    app.mount("/metrics", make_asgi_app())
    app.include_router(users.router)
    app.include_router(ops.router)
    install_dashboard(app, settings)
    _install_errors(app, retry_after=retry_after)

    @app.middleware("http")
    async def timed(request: Request, call_next: Any) -> Any:
        start = time.perf_counter()
        response = await call_next(request)
        route = request.scope.get("route")
        path = getattr(route, "path", "unmatched")
        REQUESTS.labels(path, str(response.status_code)).observe(time.perf_counter() - start)
        return response

    @app.get("/healthz", summary="The process is up", tags=["health"])
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get(
        "/readyz",
        summary="Redis is reachable",
        tags=["health"],
        responses={
            503: {"content": {"application/json": {"example": {"error": "redis unreachable"}}}}
        },
    )
    async def readyz() -> JSONResponse:
        if await app.state.queries.ping():
            return JSONResponse({"status": "ready"})
        return JSONResponse({"error": "redis unreachable"}, status_code=503, headers=retry_after)

    return app


def _closing(client: AsyncRedis) -> Callable[[FastAPI], AbstractAsyncContextManager[None]]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await client.aclose()

    return lifespan


def _install_errors(app: FastAPI, *, retry_after: dict[str, str]) -> None:
    async def http_error(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, StarletteHTTPException)
        return JSONResponse(
            {"error": str(exc.detail)}, status_code=exc.status_code, headers=exc.headers
        )

    async def invalid(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, RequestValidationError)
        message, details = describe_errors(list(exc.errors()))
        return JSONResponse({"error": message, "details": details}, status_code=422)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"error": "Redis is unavailable"}, status_code=503, headers=retry_after)

    async def unreadable(request: Request, exc: Exception) -> JSONResponse:
        # A corrupt stored value, or a newer version's format after a rollback: say
        # which, rather than a bare 500.
        return JSONResponse(
            {"error": f"{exc} (docs/operations.md: unreadable stored values)"},
            status_code=500,
        )

    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(RequestValidationError, invalid)
    app.add_exception_handler(StoreUnavailable, unavailable)
    app.add_exception_handler(UnreadableStored, unreadable)

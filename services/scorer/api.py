"""The risk query API (``churnwatch api``): reads what the scorer keeps in Redis."""

from __future__ import annotations

from typing import Any

import orjson
import redis.asyncio as aioredis
from fastapi import FastAPI, HTTPException
from fastapi.responses import JSONResponse, ORJSONResponse
from prometheus_client import make_asgi_app
from redis.exceptions import RedisError

from services.scorer.adapters.redis_store import user_key
from services.scorer.config import ApiSettings
from services.scorer.core.features import decode_state, to_vector


def build_api(settings: ApiSettings) -> FastAPI:
    app = FastAPI(
        title="churnwatch risk API",
        version="1",
        description="Churn risk, reasons and history per user.",
        default_response_class=ORJSONResponse,
    )
    client = aioredis.Redis.from_url(settings.redis_url, socket_timeout=5)
    prefix = settings.key_prefix
    app.mount("/metrics", make_asgi_app())

    @app.get("/healthz", summary="The process is up")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.get("/readyz", summary="Redis is reachable")
    async def readyz() -> JSONResponse:
        try:
            await client.ping()
        except RedisError:
            return JSONResponse(
                {"status": "redis unreachable"}, status_code=503, headers={"Retry-After": "5"}
            )
        return JSONResponse({"status": "ready"})

    @app.get("/v1/users/{user_id}", summary="A user's risk, reasons and features")
    async def get_user(user_id: str) -> dict[str, Any]:
        try:
            features, record = await client.hmget(user_key(prefix, user_id), "f", "r")
        except RedisError as exc:
            raise HTTPException(503, "Redis is unavailable", {"Retry-After": "5"}) from exc
        if record is None or features is None:
            raise HTTPException(404, f"no user {user_id!r}: no event of theirs was scored")
        out: dict[str, Any] = {"user_id": user_id, **orjson.loads(record)}
        out["reasons"] = [
            {"feature": f, "contribution": c, "value": v} for f, c, v in out.get("reasons", [])
        ]
        out["features"] = to_vector(decode_state(features), out["updated_at"])
        return out

    return app

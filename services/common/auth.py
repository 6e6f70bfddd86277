"""API keys in front of every churnwatch HTTP service: the FastAPI side.

A route asks for a scope with ``Depends(require_scope("read"))``; the app
carries its :class:`ApiKeys` in ``app.state.api_keys`` (see
:func:`install_auth`). A key is presented as ``Authorization: Bearer <key>`` or
``X-API-Key``; a missing or unknown key is a 401, a key without the scope a 403,
a key store that cannot be asked a 503.

What a key grants, how it is stored and how lookups are cached is in
:mod:`services.common.api_keys`, apart from HTTP; its names are re-exported here.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from services.common.api_keys import (
    DEV_KEY,
    SCOPES,
    ApiKey,
    ApiKeys,
    KeyStore,
    MemoryKeyStore,
    RedisKeyStore,
    create_key,
    hash_key,
    keys_from_settings,
)
from services.common.errors import ChurnwatchError, ConfigError, StoreUnavailable
from services.common.settings import CommonSettings

__all__ = [
    "DEV_KEY",
    "SCOPES",
    "ApiKey",
    "ApiKeys",
    "AuthFailed",
    "KeyStore",
    "MemoryKeyStore",
    "RedisKeyStore",
    "create_key",
    "docs_routes",
    "hash_key",
    "install_auth",
    "keys_from_settings",
    "presented_key",
    "require_scope",
]

log = logging.getLogger("churnwatch.auth")


def docs_routes(settings: CommonSettings) -> dict[str, Any]:
    """FastAPI's interactive docs (/docs, /redoc, /openapi.json) in development only.

    They answer without a key, so production has none: every route there but
    /healthz, /readyz and /metrics needs a key.

    >>> docs_routes(CommonSettings(env="production"))
    {'docs_url': None, 'redoc_url': None, 'openapi_url': None}
    >>> docs_routes(CommonSettings(env="development"))
    {}
    """
    if settings.is_production:
        return {"docs_url": None, "redoc_url": None, "openapi_url": None}
    return {}


class AuthFailed(ChurnwatchError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status


def install_auth(
    app: FastAPI,
    keys: ApiKeys,
    *,
    retry_after_s: int = 5,
    on_unavailable: Callable[[], None] | None = None,
) -> None:
    """Attach ``keys`` to ``app`` and answer auth failures with ``{"error": ...}``.

    When the key store cannot be asked, the answer is 503 with ``Retry-After:
    retry_after_s``, and ``on_unavailable`` (a service's metric) is called.
    """
    app.state.api_keys = keys

    async def _failed(request: Request, exc: Exception) -> JSONResponse:
        assert isinstance(exc, AuthFailed)
        headers = {"WWW-Authenticate": "Bearer"} if exc.status == 401 else None
        if exc.status == 503:
            headers = {"Retry-After": str(retry_after_s)}
            if on_unavailable is not None:
                on_unavailable()
        return JSONResponse({"error": str(exc)}, status_code=exc.status, headers=headers)

    app.add_exception_handler(AuthFailed, _failed)
    if keys.allow_dev_key:
        log.warning(
            "development mode: the API key %r is accepted with every scope; "
            "set CHURNWATCH_ENV=production to refuse it",
            DEV_KEY,
        )


def presented_key(headers: Any) -> str | None:
    """The key from ``Authorization: Bearer <key>`` or ``X-API-Key``."""
    auth = headers.get("authorization")
    if auth:
        scheme, _, value = auth.partition(" ")
        if scheme.lower() == "bearer" and value.strip():
            return str(value.strip())
    key = headers.get("x-api-key")
    return str(key).strip() or None if key else None


def require_scope(scope: str) -> Callable[[Request], Awaitable[ApiKey]]:
    """A FastAPI dependency: the caller's key must grant ``scope`` (401/403 otherwise)."""
    if scope not in SCOPES:
        raise ConfigError(f"unknown scope {scope!r}: choose one of {', '.join(SCOPES)}")

    async def check(request: Request) -> ApiKey:
        keys: ApiKeys = request.app.state.api_keys
        key = presented_key(request.headers)
        if key is None:
            raise AuthFailed(
                401, "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'"
            )
        hit, found = keys.cached(key)
        if not hit:
            try:
                found = await run_in_threadpool(keys.lookup, key)
            except StoreUnavailable:
                log.warning("key store unavailable")
                raise AuthFailed(503, "the key store is unavailable; retry later") from None
        if found is None:
            raise AuthFailed(401, "unknown API key: create one with 'churnwatch keys create'")
        if not found.allows(scope):
            raise AuthFailed(403, f"this API key does not have the {scope!r} scope")
        return found

    return check

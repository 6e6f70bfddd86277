"""Waiting out a Redis outage instead of losing a batch, a sweep or its learned labels."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from services.common.errors import StoreUnavailable
from services.scorer import metrics

log = logging.getLogger("churnwatch.scorer")
T = TypeVar("T")


async def until_stored(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run a store step again until Redis answers (back-off 0.2 s, doubling to 5 s),
    counting each failure in ``churnwatch_scorer_store_errors_total``."""
    delay = 0.2
    while True:
        try:
            return await fn(*args)
        except StoreUnavailable as exc:
            metrics.STORE_ERRORS.inc()
            log.warning(
                "redis unavailable, retrying",
                extra={
                    "step": getattr(fn, "__qualname__", repr(fn)),
                    "error": str(exc),
                    "retry_in_s": delay,
                },
            )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 5.0)

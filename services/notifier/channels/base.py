"""The channel port and the retry policy every channel shares.

A channel delivers one rendered message to one address. It raises
:class:`~services.common.errors.DeliveryFailed` (``retryable`` or not);
:func:`deliver_with_retries` retries the retryable ones with exponential
backoff and full jitter, honouring a provider's Retry-After.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol

from services.common.errors import DeliveryFailed


@dataclass(frozen=True)
class Message:
    """What a channel sends; ``to`` is the contact looked up at send time."""

    to: str
    subject: str
    text: str
    html: str | None = None
    idempotency_key: str = ""
    metadata: dict[str, str] | None = None


class Channel(Protocol):
    name: str

    async def send(self, message: Message) -> None:
        """Deliver or raise DeliveryFailed."""


class RetryAfter(DeliveryFailed):
    """The provider asked us to wait ``seconds`` (HTTP 429 / 503 with Retry-After)."""

    def __init__(self, message: str, *, seconds: float) -> None:
        super().__init__(message, retryable=True)
        self.seconds = seconds


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 4
    base_s: float = 0.5
    cap_s: float = 30.0

    def backoff(self, attempt: int, rng: random.Random) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)].

        >>> RetryPolicy(base_s=1, cap_s=4).backoff(5, random.Random(0)) <= 4
        True
        """
        return rng.uniform(0, min(self.cap_s, self.base_s * 2**attempt))


async def deliver_with_retries(
    send: Callable[[], Awaitable[None]],
    *,
    policy: RetryPolicy,
    on_retry: Callable[[int, DeliveryFailed], None] | None = None,
    sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    rng: random.Random | None = None,
) -> int:
    """Run ``send`` until it succeeds; return the number of attempts it took.

    Raises the last DeliveryFailed when attempts run out or the error is final.
    """
    rng = rng or random.Random()
    for attempt in range(policy.attempts):
        try:
            await send()
            return attempt + 1
        except DeliveryFailed as exc:
            if not exc.retryable or attempt + 1 == policy.attempts:
                raise
            if on_retry:
                on_retry(attempt + 1, exc)
            wait = policy.backoff(attempt, rng)
            if isinstance(exc, RetryAfter):
                wait = max(wait, min(exc.seconds, policy.cap_s))
            await sleep(wait)
    raise AssertionError("unreachable")  # pragma: no cover

"""Render one planned action and deliver it through its channel, with retries.

The message goes to the address the contact directory holds for the channel,
looked up at send time and never stored elsewhere; a send that still fails after
the retry policy is reported as ``failed`` (the caller keeps it for a re-drive).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

from services.common.errors import DeliveryFailed
from services.notifier import metrics
from services.notifier.adapters.redis_directory import CONTACT_FIELDS
from services.notifier.channels.base import Channel, Message, RetryPolicy, deliver_with_retries
from services.notifier.core.guardrails import Decision
from services.notifier.core.templates import Brand, Renderer

log = logging.getLogger("churnwatch.notifier")


class GaveUp(DeliveryFailed):
    """The delivery was stopped between two attempts: no one wants it any more."""

    def __init__(self, message: str) -> None:
        super().__init__(message, retryable=False)


def address_for(channel: str, contact: Mapping[str, str]) -> str | None:
    """The address a channel sends to; the webhook goes to the CS queue, not the user."""
    if channel == "webhook":
        return contact.get("cs_queue", "retention")
    field = CONTACT_FIELDS.get(channel)
    return contact.get(field) if field else None


class Delivery:
    """The channels, the renderer, the brand and the retry policy a send needs."""

    def __init__(
        self,
        *,
        channels: Mapping[str, Channel],
        renderer: Renderer,
        brand: Brand,
        retry: RetryPolicy,
    ) -> None:
        self.channels = channels
        self.renderer = renderer
        self.brand = brand
        self.retry = retry

    async def send(
        self,
        alert: dict[str, Any],
        decision: Decision,
        *,
        contact: Mapping[str, str],
        action_id: str,
        before_retry: Callable[[], Awaitable[bool]] | None = None,
    ) -> tuple[str, str | None]:
        """("sent", None); ("failed", the error) once the retries are spent; or
        ("suppressed", why) when the directory holds no address for the channel.

        ``before_retry``: asked before each attempt after the first; False gives up
        (the user was erased meanwhile): ("failed", why), not counted as a dead letter.
        """
        channel = self.channels[decision.channel]
        to = address_for(decision.channel, contact)
        if to is None or decision.template is None:
            return "suppressed", f"no contact for {decision.channel}"
        rendered = self.renderer.render(
            decision.template,
            decision.channel,
            locale=contact.get("locale"),
            alert=alert,
            offer=decision.offer,
            brand=self.brand,
        )
        message = Message(
            to=to,
            subject=rendered.subject or "",
            text=rendered.text,
            html=rendered.html,
            idempotency_key=action_id,
            metadata={
                "alert_id": alert["alert_id"],
                "user_id": alert["user_id"],
                "band": alert["band"],
                "offer": decision.offer or "",
            },
        )
        attempts = 0

        async def attempt() -> None:
            nonlocal attempts
            attempts += 1
            if attempts > 1 and before_retry is not None and not await before_retry():
                raise GaveUp("not tried again: the user was erased meanwhile")
            await channel.send(message)

        started = time.perf_counter()
        try:
            await deliver_with_retries(
                attempt,
                policy=self.retry,
                on_retry=lambda n, exc: metrics.RETRIES.labels(decision.channel).inc(),
            )
        except GaveUp as exc:
            return "failed", str(exc)
        except DeliveryFailed as exc:
            metrics.DEAD_LETTERS.labels(decision.channel).inc()
            log.warning(
                "delivery failed",
                extra={"channel": decision.channel, "action_id": action_id, "error": str(exc)},
            )
            return "failed", str(exc)
        finally:
            metrics.SEND_SECONDS.labels(decision.channel).observe(time.perf_counter() - started)
        return "sent", None

"""SMS, push and CRM webhook through provider HTTP APIs (httpx).

- SMS: a Twilio-style form POST (``To``, ``From``, ``Body``) with basic auth.
- push: an FCM-style JSON POST (``message.token``, ``notification``) with a bearer token.
- webhook: a JSON POST of the hand-off to a CRM or ticketing system, signed with a
  shared secret (``X-Churnwatch-Signature``: HMAC-SHA256 of the body).

Every request carries ``Idempotency-Key`` so a provider can drop a repeat.
"""

from __future__ import annotations

import hashlib
import hmac
import time
from email.utils import parsedate_to_datetime
from typing import Any

import httpx
import orjson

from services.common.errors import DeliveryFailed
from services.notifier.channels.base import Message, RetryAfter


def retry_after_seconds(value: str, *, now: float | None = None) -> float:
    """Seconds to wait from a Retry-After value: delay-seconds or an HTTP date (RFC 9110).

    >>> retry_after_seconds("2"), retry_after_seconds("soon")
    (2.0, 1.0)
    >>> retry_after_seconds("Thu, 01 Jan 1970 00:00:30 GMT", now=10.0)
    20.0
    """
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = parsedate_to_datetime(value).timestamp()
    except (TypeError, ValueError, IndexError):
        return 1.0
    return max(0.0, when - (time.time() if now is None else now))


def _retry_after(response: httpx.Response) -> float:
    return retry_after_seconds(response.headers.get("retry-after", ""))


class HttpChannel:
    """The common part: POST, classify the answer, never leak the address."""

    name = "http"

    def __init__(self, *, url: str, client: httpx.AsyncClient, timeout_s: float = 5.0) -> None:
        self.url = url
        self.client = client
        self.timeout_s = timeout_s

    def request(self, message: Message) -> dict[str, Any]:
        raise NotImplementedError

    async def send(self, message: Message) -> None:
        kwargs = self.request(message)
        headers = {"Idempotency-Key": message.idempotency_key, **kwargs.pop("headers", {})}
        try:
            response = await self.client.post(
                self.url, headers=headers, timeout=self.timeout_s, **kwargs
            )
        except httpx.TimeoutException as exc:
            raise DeliveryFailed(f"{self.name}: provider timed out") from exc
        except httpx.TransportError as exc:
            raise DeliveryFailed(f"{self.name}: {type(exc).__name__}") from exc
        status = response.status_code
        if status < 300:
            return
        if status in (429, 503) and "retry-after" in response.headers:
            raise RetryAfter(
                f"{self.name}: provider answered {status}", seconds=_retry_after(response)
            )
        raise DeliveryFailed(
            f"{self.name}: provider answered {status}",
            retryable=status >= 500 or status in (408, 429),
        )


class SmsChannel(HttpChannel):
    name = "sms"

    def __init__(
        self,
        *,
        url: str,
        client: httpx.AsyncClient,
        sender: str,
        account: str = "",
        token: str = "",
        timeout_s: float = 5.0,
    ) -> None:
        super().__init__(url=url, client=client, timeout_s=timeout_s)
        self.sender = sender
        self.auth = (account, token) if account else None

    def request(self, message: Message) -> dict[str, Any]:
        out: dict[str, Any] = {
            "data": {"To": message.to, "From": self.sender, "Body": message.text}
        }
        if self.auth:
            out["auth"] = self.auth
        return out


class PushChannel(HttpChannel):
    name = "push"

    def __init__(
        self, *, url: str, client: httpx.AsyncClient, token: str = "", timeout_s: float = 5.0
    ) -> None:
        super().__init__(url=url, client=client, timeout_s=timeout_s)
        self.token = token

    def request(self, message: Message) -> dict[str, Any]:
        body = {
            "message": {
                "token": message.to,
                "notification": {"title": message.subject, "body": message.text},
                "data": message.metadata or {},
            }
        }
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        return {"json": body, "headers": headers}


class WebhookChannel(HttpChannel):
    name = "webhook"

    def __init__(
        self, *, url: str, client: httpx.AsyncClient, secret: str = "", timeout_s: float = 5.0
    ) -> None:
        super().__init__(url=url, client=client, timeout_s=timeout_s)
        self.secret = secret.encode()

    def request(self, message: Message) -> dict[str, Any]:
        body = orjson.dumps(
            {
                "queue": message.to,
                "subject": message.subject,
                "text": message.text,
                "data": message.metadata or {},
            }
        )
        headers = {"Content-Type": "application/json"}
        if self.secret:
            sig = hmac.new(self.secret, body, hashlib.sha256).hexdigest()
            headers["X-Churnwatch-Signature"] = f"sha256={sig}"
        return {"content": body, "headers": headers}

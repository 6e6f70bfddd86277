"""The notifier's wiring: adapters and channels built from settings, once, on the loop."""

from __future__ import annotations

import asyncio

import httpx

from services.common.redis_client import async_redis
from services.notifier.adapters.redis_directory import RedisDirectory
from services.notifier.channels.base import Channel, RetryPolicy
from services.notifier.channels.http_channels import PushChannel, SmsChannel, WebhookChannel
from services.notifier.channels.smtp_channel import SmtpChannel
from services.notifier.config import NotifierSettings
from services.notifier.core.playbooks import load_playbooks
from services.notifier.core.templates import Brand, Renderer
from services.notifier.service import Notifier


def build_channels(s: NotifierSettings, client: httpx.AsyncClient) -> dict[str, Channel]:
    """Email always; SMS, push and the webhook only where an endpoint is configured."""
    channels: dict[str, Channel] = {
        "email": SmtpChannel(
            host=s.smtp_host,
            port=s.smtp_port,
            sender=s.smtp_sender,
            timeout_s=s.smtp_timeout_s,
            starttls=s.smtp_starttls,
            username=s.smtp_username,
            password=s.smtp_password,
        )
    }
    if s.sms_url:
        channels["sms"] = SmsChannel(
            url=s.sms_url,
            client=client,
            sender=s.sms_sender,
            account=s.sms_account,
            token=s.sms_token,
            timeout_s=s.http_timeout_s,
        )
    if s.push_url:
        channels["push"] = PushChannel(
            url=s.push_url, client=client, token=s.push_token, timeout_s=s.http_timeout_s
        )
    if s.webhook_url:
        channels["webhook"] = WebhookChannel(
            url=s.webhook_url, client=client, secret=s.webhook_secret, timeout_s=s.http_timeout_s
        )
    return channels


class NotifierRuntime:
    def __init__(self, settings: NotifierSettings) -> None:
        self.settings = settings
        self.book = load_playbooks(settings.notifier_playbooks)  # fail at start, loudly
        self._notifier: Notifier | None = None
        self._lock = asyncio.Lock()

    async def notifier(self) -> Notifier:
        async with self._lock:
            if self._notifier is None:
                s = self.settings
                client = async_redis(s.redis_url, cluster=s.redis_cluster, socket_timeout=5)
                self.directory = RedisDirectory(client, prefix=s.key_prefix)
                self._notifier = Notifier(
                    book=self.book,
                    directory=self.directory,
                    channels=build_channels(s, httpx.AsyncClient()),
                    renderer=Renderer(),
                    brand=Brand(name=s.brand_name, url=s.brand_url),
                    retry=RetryPolicy(
                        attempts=s.notifier_attempts,
                        base_s=s.notifier_backoff_s,
                        cap_s=s.notifier_backoff_cap_s,
                    ),
                )
            return self._notifier

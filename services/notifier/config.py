"""Settings of the notifier (``CHURNWATCH_NOTIFIER_*``, ``CHURNWATCH_SMTP_*`` ...)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field, model_validator

from services.common.settings import CommonSettings
from services.notifier.core.playbooks import DEFAULT_PLAYBOOKS


class NotifierSettings(CommonSettings):
    notifier_group: str = "churnwatch-notifier"
    notifier_metrics_port: int = Field(8003, ge=0, le=65535, description="0 disables /metrics")
    notifier_session_timeout_s: float = Field(
        10.0,
        ge=6,
        le=300,
        description="a worker silent this long (crashed) loses its partitions to the others",
    )
    notifier_playbooks: Path = Field(DEFAULT_PLAYBOOKS, description="playbook YAML file")
    notifier_deferred_poll_s: float = Field(5.0, gt=0, description="deferred queue poll")
    notifier_attempts: int = Field(4, ge=1, description="delivery attempts before dead letter")
    notifier_backoff_s: float = Field(0.5, gt=0, description="first retry delay")
    notifier_backoff_cap_s: float = Field(30.0, gt=0)
    topic_notifier_dlq: str = "winback-actions.dlq"
    brand_name: str = "Acme"
    brand_url: str = "https://example.com"
    smtp_host: str = "127.0.0.1"
    smtp_port: int = Field(2525, ge=1, le=65535)
    smtp_sender: str = "Acme <care@example.com>"
    smtp_starttls: bool = False
    smtp_username: str | None = None
    smtp_password: str | None = None
    smtp_timeout_s: float = Field(10.0, gt=0)
    sms_url: str | None = Field(None, description="Twilio-style Messages endpoint")
    sms_sender: str = "Acme"
    sms_account: str = ""
    sms_token: str = ""
    push_url: str | None = Field(None, description="FCM-style send endpoint")
    push_token: str = ""
    webhook_url: str | None = Field(None, description="CRM / ticket hand-off endpoint")
    webhook_secret: str = ""
    http_timeout_s: float = Field(5.0, gt=0)

    @model_validator(mode="after")
    def _secrets_in_production(self) -> NotifierSettings:
        if self.is_production and self.webhook_url and not self.webhook_secret:
            raise ValueError("CHURNWATCH_WEBHOOK_SECRET is required in production")
        return self

"""Settings shared by every churnwatch process.

Every value comes from an environment variable with the prefix
``CHURNWATCH_`` (``CHURNWATCH_KAFKA_BOOTSTRAP``, ``CHURNWATCH_REDIS_URL`` ...).
Each service extends :class:`CommonSettings` with its own fields; the object is
built once in the service's entry point, validated there, and passed down.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, ValidationError, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.errors import ConfigError

# The local stack listens on non-default ports so that it never collides with
# a Kafka or Redis the machine already runs.
LOCAL_KAFKA = "127.0.0.1:19092"
LOCAL_REDIS = "redis://127.0.0.1:16379/0"


class CommonSettings(BaseSettings):
    """What every process needs: where Kafka and Redis are, and topic names."""

    model_config = SettingsConfigDict(env_prefix="CHURNWATCH_", frozen=True, extra="ignore")

    env: Literal["development", "production"] = Field(
        "development", description="production refuses development defaults (keys, secrets)"
    )
    home: Path = Field(
        Path(".churnwatch"), description="where the local stack keeps its data and logs"
    )
    kafka_bootstrap: str = Field(LOCAL_KAFKA, description="Kafka bootstrap servers, host:port,...")
    redis_url: str = Field(LOCAL_REDIS, description="redis:// or rediss:// URL")
    key_prefix: str = Field("cw", description="prefix of every Redis key this deployment owns")
    topic_events: str = "user-events"
    topic_alerts: str = "churn-alerts"
    topic_actions: str = "winback-actions"
    topic_dlq: str = "user-events.dlq"
    topic_partitions: int = Field(4, ge=1, le=1024)
    topic_replication: int = Field(1, ge=1, le=7)
    metrics_host: str = Field(
        "127.0.0.1", description="address the workers' /metrics binds (0.0.0.0 in containers)"
    )
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    log_format: Literal["json", "text"] = "json"

    @field_validator("kafka_bootstrap")
    @classmethod
    def _bootstrap_has_port(cls, value: str) -> str:
        for server in value.split(","):
            host, _, port = server.strip().rpartition(":")
            if not host or not port.isdigit():
                raise ValueError(f"expected host:port[,host:port], got {value!r}")
        return value

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: str) -> str:
        if not value.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {value!r}")
        return value

    @property
    def is_production(self) -> bool:
        return self.env == "production"


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build settings from the environment, turning validation errors into one
    :class:`ConfigError` whose message names each variable and what is wrong.
    """
    try:
        return cls(**overrides)
    except ValidationError as exc:
        prefix = cls.model_config.get("env_prefix", "")
        lines = []
        for err in exc.errors():
            name = "_".join(str(p) for p in err["loc"]).upper()
            lines.append(f"  {prefix}{name}: {err['msg']}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None


def env_for(settings: CommonSettings) -> dict[str, str]:
    """The environment a child process needs to see the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        env[f"CHURNWATCH_{name.upper()}"] = str(value)
    return env


def scratch_settings(base: CommonSettings, name: str, **extra: Any) -> CommonSettings:
    """``base`` with topics and a key prefix of its own (replays, benchmarks).

    >>> scratch_settings(CommonSettings(), "replay-1").topic_events
    'replay-1.user-events'
    """
    return base.model_copy(
        update={
            "topic_events": f"{name}.user-events",
            "topic_alerts": f"{name}.churn-alerts",
            "topic_actions": f"{name}.winback-actions",
            "topic_dlq": f"{name}.user-events.dlq",
            "key_prefix": name,
            **extra,
        }
    )

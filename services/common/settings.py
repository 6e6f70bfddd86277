"""Settings shared by every churnwatch process.

Every value comes from an environment variable with the prefix
``CHURNWATCH_`` (``CHURNWATCH_KAFKA_BOOTSTRAP``, ``CHURNWATCH_REDIS_URL`` ...).
Each service extends :class:`CommonSettings` with its own fields; the object is
built once in the service's entry point, validated there, and passed down.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict, SettingsError

from services.common.errors import ConfigError

# The local stack listens on non-default ports so that it never collides with
# a Kafka or Redis the machine already runs.
LOCAL_KAFKA = "127.0.0.1:19092"
LOCAL_REDIS = "redis://127.0.0.1:16379/0"
LOCAL_REDIS_CLUSTER = "redis://127.0.0.1:17001/0"  # `stack up --redis-cluster`: 17001-17003


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
    kafka_security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        "PLAINTEXT", description="how clients talk to Kafka (services/common/kafka_security.py)"
    )
    kafka_sasl_mechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] = "PLAIN"
    kafka_sasl_username: str | None = None
    kafka_sasl_password: SecretStr | None = Field(None, description="never logged or printed")
    kafka_ssl_cafile: Path | None = Field(None, description="CA bundle (default: system's)")
    kafka_ssl_certfile: Path | None = Field(None, description="client certificate (mutual TLS)")
    kafka_ssl_keyfile: Path | None = Field(None, description="its private key")
    kafka_ssl_check_hostname: bool = True
    redis_url: str = Field(
        LOCAL_REDIS,
        description="redis:// or rediss:// URL; AUTH as redis://user:password@host, "
        "TLS as rediss://...?ssl_ca_certs=/path/ca.pem (docs/operations.md)",
    )
    redis_cluster: bool = Field(
        False, description="redis_url is a node of a Redis Cluster (common/redis_client.py)"
    )
    key_prefix: str = Field("cw", description="prefix of every Redis key this deployment owns")
    redis_index_shards: int = Field(
        1024,
        ge=1,
        le=65_536,
        description="small sorted sets per shared per-user index (last activity, label due): "
        "at least users / 100 keeps each one compact (docs/operations.md); changing it "
        "needs a re-index",
    )
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
            shown = (
                value.split("://", 1)[0] + "://..." if "://" in value else "a URL without scheme"
            )
            # Not the URL itself: it may hold the password.
            raise ValueError(f"expected a redis://, rediss:// or unix:// URL, got {shown}")
        return value

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> CommonSettings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"CHURNWATCH_KAFKA_SECURITY_PROTOCOL={protocol} needs "
                "CHURNWATCH_KAFKA_SASL_USERNAME and CHURNWATCH_KAFKA_SASL_PASSWORD"
            )
        if protocol in ("SSL", "SASL_SSL"):
            for name in ("kafka_ssl_cafile", "kafka_ssl_certfile", "kafka_ssl_keyfile"):
                path = getattr(self, name)
                if path is not None and not Path(path).is_file():
                    raise ValueError(f"CHURNWATCH_{name.upper()}: no such file: {path}")
            if self.kafka_ssl_keyfile and not self.kafka_ssl_certfile:
                raise ValueError("CHURNWATCH_KAFKA_SSL_KEYFILE needs CHURNWATCH_KAFKA_SSL_CERTFILE")
        return self

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
            if not err["loc"]:  # a check across fields: its message names the variables
                lines.append(f"  {err['msg'].removeprefix('Value error, ')}")
                continue
            # A JSON variable's error is inside it: name the variable, then the path.
            field, *inside = (str(p) for p in err["loc"])
            where = f" (at {'.'.join(inside)})" if inside else ""
            msg = err["msg"].removeprefix("Value error, ")
            lines.append(f"  {prefix}{field.upper()}{where}: {msg}")
        raise ConfigError("invalid settings:\n" + "\n".join(lines)) from None
    except SettingsError as exc:  # a value that is not the JSON its variable takes
        raise ConfigError(f"invalid settings: {exc} (is it valid JSON?)") from None


def env_for(settings: CommonSettings) -> dict[str, str]:
    """The environment a child process needs to see the same settings."""
    env = dict(os.environ)
    for name, value in settings.model_dump().items():
        if value is None:  # unset: the child's default, not the string "None"
            continue
        if isinstance(value, SecretStr):  # the child needs the secret, not its mask
            value = value.get_secret_value()
        elif isinstance(value, dict | list):  # read back as JSON, as from any environment
            value = json.dumps(value)
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

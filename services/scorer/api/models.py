"""Bodies the risk API reads and writes, with the examples its OpenAPI shows."""

from __future__ import annotations

import re
from functools import lru_cache
from typing import Any, Literal
from zoneinfo import available_timezones

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

Channel = Literal["email", "sms", "push"]
Band = Literal["low", "medium", "high", "critical"]
Stage = Literal["new", "active", "loyal", "at-risk", "dormant", "churned", "reactivated"]
Tier = Literal["high", "medium", "low"]

EMAIL = re.compile(r"^[^@\s]{1,64}@[^@\s]+\.[^@\s]+$")
E164 = re.compile(r"^\+[1-9][0-9]{1,14}$")
LOCALE = re.compile(r"^[A-Za-z]{2,3}(?:[-_][A-Za-z0-9]{2,8})*$")


@lru_cache(maxsize=1)
def _zones() -> frozenset[str]:
    return frozenset(available_timezones())


def _example(value: dict[str, Any]) -> ConfigDict:
    return ConfigDict(json_schema_extra={"examples": [value]})


class ErrorBody(BaseModel):
    model_config = _example({"error": "no user 'u-48213': no event of theirs was scored"})
    error: str


class Reason(BaseModel):
    feature: str
    contribution: float
    value: float


USER_EXAMPLE: dict[str, Any] = {
    "user_id": "u-48213",
    "risk": 0.7312,
    "score": 73,
    "band": "high",
    "stage": "at-risk",
    "tier": "high",
    "percentile": 96.4,
    "reasons": [
        {"feature": "recency_days", "contribution": 0.41, "value": 9.0},
        {"feature": "trend_7d_vs_30d", "contribution": 0.22, "value": 0.3},
    ],
    "model_version": "scorer-0@1742",
    "updated_at": "2026-01-02T03:04:05Z",
    "features": {"recency_days": 9.0, "events_7d": 2.0, "events_30d": 31.0},
}


class UserRisk(BaseModel):
    model_config = _example(USER_EXAMPLE)
    user_id: str
    risk: float = Field(description="probability of churn within the horizon, 0..1")
    score: int = Field(description="risk on the 0..100 scale the bands use")
    band: str
    stage: str = Field(description="lifecycle stage")
    tier: str = Field(description="value tier (RFM)")
    percentile: float | None = Field(
        description="share (%) of all users in the at-risk index with a risk at most this one"
    )
    reasons: list[Reason]
    model_version: str
    updated_at: str = Field(description="when the user was last scored (RFC 3339)")
    features: dict[str, float] = Field(description="the feature vector as of updated_at")


class HistoryPage(BaseModel):
    model_config = _example(
        {
            "user_id": "u-48213",
            "total": 3,
            "limit": 1,
            "offset": 0,
            "items": [{"alert_id": "5f0c6b1e9a7d4c2b8e3f1a09", "band": "critical"}],
        }
    )
    user_id: str
    total: int = Field(description="entries kept for this user (the history is capped)")
    limit: int
    offset: int
    items: list[dict[str, Any]] = Field(description="newest first, as published on Kafka")


class AtRiskRow(BaseModel):
    user_id: str
    risk: float
    score: int | None
    band: str | None
    stage: str | None
    tier: str | None
    updated_at: str | None


class AtRiskPage(BaseModel):
    model_config = _example(
        {
            "items": [
                {
                    "user_id": "u-48213",
                    "risk": 0.91,
                    "score": 91,
                    "band": "critical",
                    "stage": "at-risk",
                    "tier": "high",
                    "updated_at": "2026-01-02T03:04:05Z",
                }
            ],
            "next_cursor": "WzAuOTEsInUtNDgyMTMiXQ",
        }
    )
    items: list[AtRiskRow]
    next_cursor: str | None = Field(
        description="pass as ?cursor= for the next page; null at the end"
    )


class Stats(BaseModel):
    model_config = _example(
        {
            "as_of": "2026-01-02T03:04:05Z",
            "active_users": {"dau": 1804, "wau": 5120, "mau": 9731},
            "cohorts": [
                {
                    "signup_day": "2026-01-01",
                    "users": 412,
                    "day1": 0.61,
                    "day7": 0.38,
                    "day30": 0.22,
                }
            ],
            "users_by_stage": {"new": 412, "active": 6120, "churned": 1310},
            "churn_rate": 0.1662,
            "winback": {
                "high-value-critical": {
                    "treated": {"treated": 120, "won": 31, "win_rate": 0.2583},
                    "control": {"treated": 14, "won": None, "win_rate": None},
                }
            },
        }
    )
    as_of: str
    active_users: dict[str, int]
    cohorts: list[dict[str, str | int | float]] = []
    users_by_stage: dict[str, int] = {}
    churn_rate: float | None = None
    winback: dict[str, dict[str, dict[str, int | float | None]]]


class WorkerModel(BaseModel):
    worker: str
    model_version: str | None
    labels: dict[str, int]
    quality: dict[str, float | None]
    threshold: float | None
    checkpoint_saved_at: str | None
    checkpoint_age_s: float | None


class ModelReport(BaseModel):
    model_config = _example(
        {
            "as_of": "2026-01-02T03:04:05Z",
            "workers": [
                {
                    "worker": "scorer-0",
                    "model_version": "scorer-0@1742",
                    "labels": {"positive": 312, "negative": 1430},
                    "quality": {"roc_auc": 0.81, "log_loss": 0.42, "precision": 0.6, "recall": 0.7},
                    "threshold": 0.65,
                    "checkpoint_saved_at": "2026-01-02T03:03:05Z",
                    "checkpoint_age_s": 60.0,
                }
            ],
        }
    )
    as_of: str
    workers: list[WorkerModel]


class ConsentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [{"channels": {"email": True, "sms": False}, "preferred": "email"}]
        },
    )
    channels: dict[Channel, bool] = Field(min_length=1, description="consent per channel")
    preferred: Channel | None = None

    @model_validator(mode="after")
    def _preferred_is_allowed(self) -> ConsentIn:
        if self.preferred is not None and not self.channels.get(self.preferred):
            raise ValueError(f"preferred channel {self.preferred!r} must be consented in channels")
        return self


class ContactIn(BaseModel):
    """Replaces the user's contact details; never logged, never copied elsewhere."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "email": "ada@example.com",
                    "phone": "+4915112345678",
                    "locale": "de-DE",
                    "timezone": "Europe/Berlin",
                }
            ]
        },
    )
    email: str | None = Field(None, max_length=254, description="an e-mail address")
    phone: str | None = Field(None, description="E.164, e.g. +4915112345678")
    push_token: str | None = Field(None, min_length=1, max_length=4096)
    locale: str | None = Field(None, max_length=35, description="BCP 47, e.g. de-DE")
    timezone: str | None = Field(None, description="IANA time zone, e.g. Europe/Berlin")

    @field_validator("email")
    @classmethod
    def _email(cls, value: str | None) -> str | None:
        if value is not None and not EMAIL.match(value):
            raise ValueError("email must look like name@domain.tld")
        return value

    @field_validator("phone")
    @classmethod
    def _phone(cls, value: str | None) -> str | None:
        if value is not None and not E164.match(value):
            raise ValueError("phone must be E.164: '+', country code and number, digits only")
        return value

    @field_validator("locale")
    @classmethod
    def _locale(cls, value: str | None) -> str | None:
        if value is not None and not LOCALE.match(value):
            raise ValueError("locale must be a BCP 47 tag such as 'en' or 'de-DE'")
        return value

    @field_validator("timezone")
    @classmethod
    def _timezone(cls, value: str | None) -> str | None:
        if value is not None and value not in _zones():
            raise ValueError("timezone must be an IANA time zone such as 'Europe/Berlin'")
        return value

    @model_validator(mode="after")
    def _something(self) -> ContactIn:
        if not any(v is not None for v in self.model_dump().values()):
            raise ValueError("give at least one of email, phone, push_token, locale, timezone")
        return self


class Saved(BaseModel):
    model_config = _example({"user_id": "u-48213", "saved": ["email", "preferred"]})
    user_id: str
    saved: list[str] = Field(description="the fields now stored (values are not echoed)")


class Erased(BaseModel):
    model_config = _example(
        {
            "user_id": "u-48213",
            "removed_keys": ["s", "alerts", "contact", "consent", "actions"],
            "removed_from_indexes": ["lastseen", "snapdue", "atrisk:active"],
            "removed_deferred_jobs": 0,
            "removed_failed_deliveries": 0,
            "guard_until": 1768435200.0,
            "kept": "daily active-user HyperLogLogs and win-back counters (aggregates)",
        }
    )
    user_id: str
    removed_keys: list[str]
    removed_from_indexes: list[str]
    removed_deferred_jobs: int
    removed_failed_deliveries: int = 0
    guard_until: float = Field(
        description="until when (UNIX time) the notifier contacts and records nothing of the "
        "user, and the scorer stores nothing of it: alerts of the user still on their way are "
        "dropped, and so are the user's events still coming (consent to a channel saved "
        "again through the API lifts it)"
    )
    kept: str

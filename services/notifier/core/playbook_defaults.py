"""The playbook file's ``defaults``: the guardrail settings shared by every playbook.

The control group's share and salt, the frequency cap, quiet hours and the
default time zone. Validated like the playbooks
(:mod:`services.notifier.core.playbook_book`, whose values share the immutable
base ``_Frozen`` defined here); apart from them because the guardrails read
these, not the choice of a playbook.
"""

from __future__ import annotations

import re
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

_CLOCK = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class FrequencyCap(_Frozen):
    max_contacts: int = Field(default=3, ge=1)
    window_days: float = Field(default=7, gt=0)


class QuietHours(_Frozen):
    start: str = "21:00"
    end: str = "08:00"

    @field_validator("start", "end")
    @classmethod
    def _clock_time(cls, value: str) -> str:
        if not _CLOCK.fullmatch(value):
            raise ValueError(f"bad time {value!r}; use HH:MM on a 24-hour clock, like '21:00'")
        return value


class Defaults(_Frozen):
    """Guardrail settings shared by every playbook."""

    control_share: float = Field(default=0.1, ge=0, le=1)
    control_salt: str = Field(default="churnwatch-control-v1", min_length=1)
    frequency_cap: FrequencyCap = FrequencyCap()
    quiet_hours: QuietHours = QuietHours()
    default_timezone: str = "UTC"

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data: Any) -> Any:
        # Read by no one here: the scorer judges win-backs, with its own setting. An
        # old file that still sets it must say so, not be silently ignored.
        if isinstance(data, dict) and "winback_window_days" in data:
            raise ValueError(
                "winback_window_days is not a playbook setting: the scorer judges win-backs; "
                "set CHURNWATCH_SCORER_WINBACK_WINDOW_DAYS instead"
            )
        return data

    @field_validator("default_timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r}; use an IANA name like 'UTC'") from None
        return value

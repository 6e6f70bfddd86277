"""The messages churnwatch writes: churn alerts, win-back actions, dead letters.

Each is a frozen dataclass whose ``to_dict()`` is the wire form of its schema
in ``schemas/`` (times as RFC 3339 with ``Z``) and whose ``from_dict()`` reads
an already schema-valid mapping back. ``tests/unit/test_schemas.py`` checks
that fields and schemas agree.

The alert and action types and their ids are here; the wire conversion they
share is in :mod:`services.common.wire`, the dead letters (with the raw
:class:`Record` they name) in :mod:`services.common.dead_letters`. This module
re-exports both, so the services import every message from here.

>>> seg = Segment(stage="at-risk", tier="high")
>>> Segment.from_dict(seg.to_dict()) == seg
True
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime

from services.common.dead_letters import (
    MAX_PAYLOAD_BYTES,
    MAX_REASON_CHARS,
    DeadLetter,
    Record,
    Source,
    dead_letter,
    dead_record,
)
from services.common.wire import SCHEMA_VERSION, _Message, _Part, format_time

__all__ = [
    "MAX_PAYLOAD_BYTES",
    "MAX_REASON_CHARS",
    "SCHEMA_VERSION",
    "ChurnAlert",
    "DeadLetter",
    "Reason",
    "Record",
    "Segment",
    "Source",
    "WinbackAction",
    "dead_letter",
    "dead_record",
    "format_time",
    "make_action_id",
    "make_alert_id",
]


def _digest(*parts: str) -> str:
    # The separator cannot occur in ids, so ("a", "bc") and ("ab", "c") differ.
    return hashlib.blake2b("\x1f".join(parts).encode(), digest_size=12).hexdigest()


def make_alert_id(user_id: str, band: str, occurred_at_bucket: int | str) -> str:
    """Deterministic alert id: the same user, band and time bucket give the same id.

    >>> a = make_alert_id("u-48213", "high", 20455)
    >>> len(a), a == make_alert_id("u-48213", "high", "20455")
    (24, True)
    >>> a == make_alert_id("u-48213", "critical", 20455)
    False
    """
    return _digest(user_id, band, str(occurred_at_bucket))


def make_action_id(alert_id: str, channel: str) -> str:
    """Deterministic action id: one alert and channel give one action.

    >>> make_action_id("a1", "email") == make_action_id("a1", "email")
    True
    >>> make_action_id("a1", "email") == make_action_id("a1", "sms")
    False
    """
    return _digest(alert_id, channel)


@dataclass(frozen=True, slots=True)
class Reason(_Part):
    """A feature that pushes the risk up: name, label, contribution and value."""

    feature: str
    label: str
    contribution: float
    value: float


@dataclass(frozen=True, slots=True)
class Segment(_Part):
    """Lifecycle stage and value tier."""

    stage: str
    tier: str


@dataclass(frozen=True, slots=True)
class ChurnAlert(_Message):
    """A user's risk moved up into a high band or rose sharply (schema churn-alert v1)."""

    alert_id: str
    user_id: str
    risk: float
    score: int
    band: str
    trigger: str
    segment: Segment
    reasons: tuple[Reason, ...]
    model_version: str
    horizon_days: int
    occurred_at: datetime
    previous_band: str | None = None
    timezone: str | None = None


@dataclass(frozen=True, slots=True)
class WinbackAction(_Message):
    """What the notifier did about one alert on one channel (schema winback-action v1)."""

    action_id: str
    alert_id: str
    user_id: str
    channel: str
    playbook: str
    status: str
    at: datetime
    offer: str | None = None
    template: str | None = None
    reason: str | None = None

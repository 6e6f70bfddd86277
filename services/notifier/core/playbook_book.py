"""Win-back playbooks as validated, immutable values, and the choice of one per alert.

A playbook maps segment x band to ordered actions. Playbooks are tried top to
bottom and the first whose ``match`` covers the alert wins, so put the narrow
ones first. Apart from reading the file (:mod:`services.notifier.core.playbooks`):
nothing here reads a file, and the guardrails and the notifier need only these
values.

>>> book = PlaybookBook.model_validate({"playbooks": [
...     {"name": "vip", "match": {"tiers": ["high"], "bands": ["critical"]},
...      "actions": [{"channel": "email", "template": "personal_offer", "offer": "VIP30"}]},
...     {"name": "rest", "actions": [{"channel": "push", "template": "nudge"}]}]})
>>> book.match("active", "high", "critical").name, book.match("new", "high", "high").name
('vip', 'rest')
>>> book.defaults.frequency_cap.max_contacts, book.playbooks[0].actions[0].delay_s
(3, 0.0)
"""

from __future__ import annotations

import re
from typing import Any, Literal

from pydantic import Field, ValidationInfo, field_validator

from services.notifier.core.playbook_defaults import Defaults, _Frozen

Channel = Literal["email", "sms", "push", "webhook"]
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "webhook")
STAGES = ("new", "active", "loyal", "at-risk", "dormant", "churned", "reactivated")
TIERS = ("high", "medium", "low")
BANDS = ("low", "medium", "high", "critical")
_KNOWN = {"stages": ("stage", STAGES), "tiers": ("tier", TIERS), "bands": ("band", BANDS)}

_DURATION = re.compile(r"(?:\d+[smhd])+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


def parse_duration(text: str) -> float:
    """Seconds in a duration such as ``"0s"``, ``"30m"``, ``"2h"`` or ``"1d12h"``.

    >>> parse_duration("2h"), parse_duration("1d12h"), parse_duration("0s")
    (7200.0, 129600.0, 0.0)
    """
    if not isinstance(text, str) or not _DURATION.fullmatch(text):
        raise ValueError(
            f"bad duration {text!r}; use a number and a unit s, m, h or d, like '0s', '30m' or '2h'"
        )
    return float(sum(int(n) * _UNIT_S[u] for n, u in re.findall(r"(\d+)([smhd])", text)))


class Action(_Frozen):
    """One step of a playbook: a channel, a template, an optional offer and a delay."""

    channel: Channel
    template: str
    offer: str | None = None
    delay: str = "0s"

    @field_validator("channel", mode="before")
    @classmethod
    def _known_channel(cls, value: Any) -> Any:
        if value not in CHANNELS:
            raise ValueError(f"unknown channel {value!r}; expected one of: {', '.join(CHANNELS)}")
        return value

    @field_validator("template")
    @classmethod
    def _plain_template_name(cls, value: str) -> str:
        if not _TEMPLATE_NAME.fullmatch(value):
            raise ValueError(f"bad template name {value!r}; use lower-case letters, digits, _ or -")
        return value

    @field_validator("delay")
    @classmethod
    def _valid_delay(cls, value: str) -> str:
        parse_duration(value)
        return value

    @property
    def delay_s(self) -> float:
        """The delay in seconds."""
        return parse_duration(self.delay)


class Match(_Frozen):
    """Which alerts a playbook covers; ``"*"`` matches anything, omitted lists mean ``["*"]``."""

    stages: tuple[str, ...] = ("*",)
    tiers: tuple[str, ...] = ("*",)
    bands: tuple[str, ...] = ("*",)

    @field_validator("stages", "tiers", "bands")
    @classmethod
    def _known_names(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        kind, allowed = _KNOWN[str(info.field_name)]
        if not value:
            raise ValueError(f"no {kind}s listed; use ['*'] to match every {kind}")
        for name in value:
            if name != "*" and name not in allowed:
                raise ValueError(
                    f"unknown {kind} {name!r}; expected '*' or one of: {', '.join(allowed)}"
                )
        return value

    def covers(self, stage: str, tier: str, band: str) -> bool:
        """True when every list names the value or ``"*"``."""
        pairs = ((self.stages, stage), (self.tiers, tier), (self.bands, band))
        return all("*" in names or value in names for names, value in pairs)


class Playbook(_Frozen):
    name: str = Field(min_length=1)
    description: str = ""
    match: Match = Match()
    actions: tuple[Action, ...]

    @field_validator("name")
    @classmethod
    def _no_braces(cls, value: str) -> str:
        # The name is part of Redis keys, where braces would make a cluster hash tag.
        if "{" in value or "}" in value:
            raise ValueError(f"bad playbook name {value!r}; leave out {{ and }}")
        return value

    @field_validator("actions")
    @classmethod
    def _some_actions(cls, value: tuple[Action, ...]) -> tuple[Action, ...]:
        if not value:
            raise ValueError("no actions; list at least one")
        return value


class PlaybookBook(_Frozen):
    """All playbooks in file order, plus the shared defaults."""

    defaults: Defaults = Defaults()
    playbooks: tuple[Playbook, ...]

    @field_validator("playbooks")
    @classmethod
    def _unique_names(cls, value: tuple[Playbook, ...]) -> tuple[Playbook, ...]:
        if not value:
            raise ValueError("no playbooks; list at least one")
        names = [p.name for p in value]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"playbook names must be unique; repeated: {', '.join(dupes)}")
        return value

    def match(self, stage: str, tier: str, band: str) -> Playbook | None:
        """The first playbook covering this segment and band, or None."""
        return next((p for p in self.playbooks if p.match.covers(stage, tier, band)), None)

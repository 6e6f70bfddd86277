"""Win-back playbooks: the YAML file as validated, immutable values.

A playbook maps segment x band to ordered actions. Playbooks are tried top to
bottom and the first whose ``match`` covers the alert wins, so put the narrow
ones first. ``load_playbooks`` refuses a bad file with one line per problem,
each naming the file, the playbook and the field.

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
from pathlib import Path
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from services.common.errors import ConfigError
from services.notifier.core.templates import (
    DEFAULT_TEMPLATES_DIR,
    FALLBACK_LOCALE,
    available_locales,
    missing_files,
)

Channel = Literal["email", "sms", "push", "webhook"]
CHANNELS: tuple[str, ...] = ("email", "sms", "push", "webhook")
STAGES = ("new", "active", "loyal", "at-risk", "dormant", "churned", "reactivated")
TIERS = ("high", "medium", "low")
BANDS = ("low", "medium", "high", "critical")
_KNOWN = {"stages": ("stage", STAGES), "tiers": ("tier", TIERS), "bands": ("band", BANDS)}
DEFAULT_PLAYBOOKS = Path(__file__).resolve().parent.parent / "playbooks.yaml"

_DURATION = re.compile(r"(?:\d+[smhd])+")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
_TEMPLATE_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")
_CLOCK = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


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


class _Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


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


def load_playbooks(
    path: str | Path = DEFAULT_PLAYBOOKS, *, templates_dir: str | Path = DEFAULT_TEMPLATES_DIR
) -> PlaybookBook:
    """Read, validate and cross-check a playbook file; raise ConfigError saying what to fix."""
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the playbook file: {exc.strerror}") from exc
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a mapping with 'defaults' and 'playbooks'")
    try:
        book = PlaybookBook.model_validate(raw)
    except ValidationError as exc:
        lines = [_describe(path, raw, err) for err in exc.errors()]
        raise ConfigError("\n".join(lines)) from exc
    _check_templates(path, book, Path(templates_dir))
    return book


def _check_templates(path: Path, book: PlaybookBook, root: Path) -> None:
    locales = available_locales(root)
    if FALLBACK_LOCALE not in locales:
        raise ConfigError(f"{path}: no {FALLBACK_LOCALE!r} template folder under {root}")
    problems = []
    for playbook in book.playbooks:
        for i, action in enumerate(playbook.actions):
            for locale in locales:
                missing = missing_files(root, action.template, action.channel, locale=locale)
                if missing:
                    problems.append(
                        f"{path}: playbook {playbook.name!r}: actions[{i}].template: "
                        f"template {action.template!r} for {action.channel} is missing "
                        f"in locale {locale!r} (no {', '.join(missing)} under {root / locale})"
                    )
    if problems:
        raise ConfigError("\n".join(problems))


def _describe(path: Path, raw: dict[str, Any], err: Any) -> str:
    loc = list(err["loc"])
    msg = str(err["msg"]).removeprefix("Value error, ")
    where = f"{path}: "
    if len(loc) >= 2 and loc[0] == "playbooks" and isinstance(loc[1], int):
        entry = (raw.get("playbooks") or [])[loc[1]]
        name = entry.get("name") if isinstance(entry, dict) else None
        where += f"playbook {name or '#' + str(loc[1] + 1)!r}: "
        loc = loc[2:]
    field = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    return f"{where}{field or 'playbook'}: {msg}"

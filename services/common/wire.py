"""The wire form the messages share: dataclass fields to and from their schema's JSON.

:class:`_Part` converts a dataclass by its fields (nested parts, tuples, times
as RFC 3339 with ``Z`` by :func:`format_time`); :class:`_Message` adds
``schema_version``. The alert and action types (:mod:`services.common.messages`)
and the dead letters (:mod:`services.common.dead_letters`) both build on them,
so they are apart from either.
"""

from __future__ import annotations

from dataclasses import fields, is_dataclass
from datetime import UTC, datetime
from typing import Any, Self, get_args, get_origin, get_type_hints

from services.common.events import parse_time

SCHEMA_VERSION = 1


def format_time(value: datetime) -> str:
    """RFC 3339 in UTC with ``Z``; refuses naive datetimes.

    >>> from datetime import timedelta, timezone
    >>> format_time(datetime(2026, 1, 2, 4, 4, 5, tzinfo=timezone(timedelta(hours=1))))
    '2026-01-02T03:04:05Z'
    """
    if value.tzinfo is None:
        raise ValueError(f"datetime {value.isoformat()} has no time zone; use an aware datetime")
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z")


def _wire(value: Any) -> Any:
    if is_dataclass(value) and not isinstance(value, type):
        return {f.name: _wire(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, datetime):
        return format_time(value)
    if isinstance(value, tuple | list):
        return [_wire(v) for v in value]
    return value


def _unwire(hint: Any, value: Any, path: str) -> Any:
    if hint is datetime:
        return parse_time(value, path=path)
    if hint is int:
        return int(value)  # JSON Schema counts 3.0 as an integer
    if isinstance(hint, type) and issubclass(hint, _Part):
        return hint.from_dict(value)
    if get_origin(hint) is tuple:
        return tuple(_unwire(get_args(hint)[0], v, path) for v in value)
    return value


_HINTS: dict[type, dict[str, Any]] = {}


class _Part:
    """Wire conversion driven by the dataclass fields, so a new field cannot be forgotten."""

    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The wire form."""
        out: dict[str, Any] = _wire(self)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> Self:
        """Read an already schema-valid wire form; absent optional fields take their defaults."""
        hints = _HINTS.get(cls) or _HINTS.setdefault(cls, get_type_hints(cls))
        names = [f.name for f in fields(cls) if f.name in raw]  # type: ignore[arg-type]
        return cls(**{n: _unwire(hints[n], raw[n], n) for n in names})


class _Message(_Part):
    __slots__ = ()

    def to_dict(self) -> dict[str, Any]:
        """The wire form, with ``schema_version``."""
        return {"schema_version": SCHEMA_VERSION, **super().to_dict()}

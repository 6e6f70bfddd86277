"""Validate wire messages against the JSON Schemas in ``schemas/``.

Two validators, one contract: a fastjsonschema function compiled once per
schema answers "valid?" cheaply (the ingest path runs it 50,000 times a
second); only when the answer is no does jsonschema walk the message again to
say precisely what is wrong, where, and how to fix it. User events, which the
scorer and ingest check one by one, first meet a hand-written check that can
only say "certainly valid" (:mod:`services.common.event_check`, three times
faster); anything it is not sure of takes the two validators.

>>> validate("user-event", {"event_id": "e1", "user_id": "u1", "type": "login",
...                         "occurred_at": "2026-01-02T03:04:05Z"})
[]
>>> validate("user-event", {"user_id": "u1", "type": "login",
...                         "occurred_at": "2026-01-02T03:04:05Z"})[0].path
'event_id'
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import Any

import fastjsonschema
import jsonschema
from jsonschema.exceptions import ValidationError

from services.common.errors import ConfigError, InvalidEvent
from services.common.event_check import certainly_valid

SCHEMA_NAMES = ("user-event", "churn-alert", "winback-action", "dead-letter")
SCHEMA_DIR = Path(__file__).resolve().parents[2] / "schemas"

_EXAMPLE_TIME = "'2026-01-02T03:04:05Z'"
# What a pattern means, in words; keyed by the pattern so a new field reusing one is covered.
_PATTERN_HINTS = {
    r"^[a-z][a-z0-9_]{0,63}$": "a lowercase identifier (a-z, 0-9 and _, starting with a letter)",
    r"^[A-Z]{3}$": "three uppercase letters (an ISO 4217 currency code such as 'EUR')",
    r"^[A-Z]{2}$": "two uppercase letters (an ISO 3166-1 country code such as 'DE')",
}
_TIME_HINT = f"an RFC 3339 date-time with a time zone, e.g. {_EXAMPLE_TIME}"
_REQUIRED_HINTS = {
    ("user-event", "event_id"): "give every event a unique id (it is the idempotency key)",
    ("user-event", "user_id"): "say which user the event is about (it is the partition key)",
    ("user-event", "type"): "say what happened, e.g. 'login'",
    ("user-event", "occurred_at"): f"give the event time as {_TIME_HINT}",
    ("winback-action", "reason"): "say why the action was deferred, suppressed or failed",
    ("dead-letter", "reason"): "say why the message was rejected, in words a person can act on",
}
_JSON_TYPES = {"object": "an object", "array": "an array", "string": "a string",
               "number": "a number", "integer": "an integer", "boolean": "a boolean",
               "null": "null"}  # fmt: skip


@dataclass(frozen=True, slots=True)
class FieldError:
    """One problem with a message: the field's dotted path ("" for the root) and what to do."""

    path: str
    message: str


def load_schema(name: str) -> dict[str, Any]:
    """Read one schema from the repository's ``schemas/`` folder (a fresh copy).

    >>> load_schema("churn-alert")["title"]
    'Churn alert'
    """
    if name not in SCHEMA_NAMES:
        raise ConfigError(f"unknown schema {name!r}: choose one of {', '.join(SCHEMA_NAMES)}")
    path = SCHEMA_DIR / f"{name}.v1.json"
    try:
        schema: dict[str, Any] = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(
            f"schema file {path} is missing: churnwatch reads its wire contracts from the "
            "schemas/ folder next to services/; run from a full checkout"
        ) from None
    return schema


def validate(name: str, obj: Any) -> list[FieldError]:
    """Check ``obj`` against schema ``name``; ``[]`` when valid, never raises for bad input.

    >>> validate("user-event", [])
    [FieldError(path='', message='the user activity event must be an object, not an array')]
    """
    if name == "user-event" and certainly_valid(obj):
        return []
    try:
        _fast(name)(obj)
    except fastjsonschema.JsonSchemaValueException as exc:
        found = explain(name, obj)
        # The two validators should agree (a property test checks it); if they ever do
        # not, the fast one rejected the message, so report its own words.
        return found or [FieldError(_fast_path(exc), exc.message)]
    return []


def validate_or_raise(name: str, obj: Any) -> None:
    """Like :func:`validate`, but raise :class:`InvalidEvent` naming the first problem.

    >>> try:
    ...     validate_or_raise("user-event", {"event_id": "e1", "user_id": "u1", "type": "login"})
    ... except InvalidEvent as exc:
    ...     print(exc.path, "|", exc.message[:23])
    occurred_at | occurred_at is required
    """
    errors = validate(name, obj)
    if errors:
        first = errors[0]
        more = f" (and {len(errors) - 1} more problems)" if len(errors) > 1 else ""
        raise InvalidEvent(first.message + more, path=first.path)


def explain(name: str, obj: Any) -> list[FieldError]:
    """Every problem with ``obj``, shallowest first (the slow, thorough path)."""
    schema = _schema(name)
    errors = sorted(_slow(name).iter_errors(obj), key=lambda e: len(e.absolute_path))
    found: list[FieldError] = []
    for error in errors:
        for item in _describe(name, schema, error):
            if item not in found:
                found.append(item)
    return found


@cache
def _schema(name: str) -> dict[str, Any]:
    return load_schema(name)


@cache
def _fast(name: str) -> Any:
    # No defaults: validation must not write into the caller's message.
    return fastjsonschema.compile(_schema(name), use_default=False, use_formats=False)


@cache
def _regex(pattern: str) -> re.Pattern[str]:
    # "$" ends the string, as in ECMA-262 and fastjsonschema (Python's "$" allows a final "\n").
    return re.compile(re.sub(r"(?<!\\)\$", r"\\Z", pattern))


def _pattern(validator: Any, pattern: str, instance: Any, schema: Any) -> Iterator[ValidationError]:
    if validator.is_type(instance, "string") and not _regex(pattern).search(instance):
        yield ValidationError(f"{instance!r} does not match {pattern!r}")


_Validator = jsonschema.validators.extend(jsonschema.Draft202012Validator, {"pattern": _pattern})


@cache
def _slow(name: str) -> Any:
    return _Validator(_schema(name))


def _describe(name: str, schema: dict[str, Any], error: ValidationError) -> Iterator[FieldError]:
    parts = list(error.absolute_path)
    kind, value, inst = error.validator, error.validator_value, error.instance
    if kind == "required":
        props = error.schema.get("properties", {}) if isinstance(error.schema, dict) else {}
        for field in (f for f in value if f not in inst):
            path = _join([*parts, field])
            hint = _REQUIRED_HINTS.get((name, path)) or _example_hint(props.get(field))
            yield FieldError(path, f"{path} is required" + (f": {hint}" if hint else ""))
    elif kind == "additionalProperties" and isinstance(error.schema, dict):
        known = list(error.schema.get("properties", {}))
        where = _join(parts) or f"a {schema['title'].lower()}"
        for field in (f for f in inst if f not in known):
            path = _join([*parts, field])
            yield FieldError(path, f"unknown field {field!r}: {where} has only {', '.join(known)}")
    else:
        subject = _join(parts) or f"the {schema['title'].lower()}"
        yield FieldError(_join(parts), f"{subject} {_complaint(kind, value, inst)}")


def _complaint(kind: Any, value: Any, inst: Any) -> str:
    match kind:
        case "type":
            wanted = [value] if isinstance(value, str) else value
            shown = "" if inst is None or isinstance(inst, dict | list) else f" ({_show(inst)})"
            return (
                f"must be {' or '.join(_JSON_TYPES[t] for t in wanted)}, not {_kind(inst)}{shown}"
            )
        case "pattern" if _is_naive_time(inst):
            return f"must carry a time zone (e.g. 'Z' or '+02:00'), not {_show(inst)}"
        case "pattern":
            hint = _PATTERN_HINTS.get(value, _TIME_HINT if "T(" in value else f"match {value}")
            return f"must be {hint}, not {_show(inst)}"
        case "enum":
            return f"must be one of {', '.join(map(_show, value))}, not {_show(inst)}"
        case "const":
            return f"must be {_show(value)}, not {_show(inst)}"
        case "minLength":
            return "must not be empty" if value == 1 else f"must have {value}+ characters"
        case "maxLength":
            return f"is too long: {len(inst)} characters, at most {value}"
        case "minimum":
            return f"must be at least {value}, not {_show(inst)}"
        case "maximum":
            return f"must be at most {value}, not {_show(inst)}"
        case "maxItems":
            return f"has {len(inst)} items, at most {value}"
    return f"is invalid ({kind}): {_show(inst)}"


def _example_hint(field_schema: Any) -> str:
    examples = field_schema.get("examples") if isinstance(field_schema, dict) else None
    return f"e.g. {_show(examples[0])}" if examples else ""


def _is_naive_time(value: Any) -> bool:
    if not isinstance(value, str) or "T" not in value:
        return False
    try:
        return datetime.fromisoformat(value).tzinfo is None
    except ValueError:
        return False


def _kind(value: Any) -> str:
    if value is None or isinstance(value, bool):
        return "null" if value is None else "a boolean"
    if isinstance(value, int | float):
        return "a number"
    names: dict[type, str] = {dict: "an object", list: "an array", str: "a string"}
    return names.get(type(value), f"a {type(value).__name__}")


def _show(value: Any) -> str:
    text = repr(value) if isinstance(value, str) else json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def _join(parts: list[Any]) -> str:
    out = ""
    for part in parts:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def _fast_path(exc: fastjsonschema.JsonSchemaValueException) -> str:
    return _join(list(exc.path or [])[1:])  # the first element is fastjsonschema's "data"

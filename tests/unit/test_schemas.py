"""The wire contract: schemas, their fixtures, and the Python types that must match them."""

from __future__ import annotations

import dataclasses
import json
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import schemas
from services.common.errors import ConfigError, InvalidEvent
from services.common.events import UserEvent, event_to_dict, parse_event
from services.common.messages import (
    MAX_PAYLOAD_BYTES,
    ChurnAlert,
    DeadLetter,
    Reason,
    Segment,
    Source,
    WinbackAction,
    dead_letter,
    make_action_id,
    make_alert_id,
)
from services.common.schemas import SCHEMA_NAMES, FieldError, load_schema, validate

FIXTURES = Path(__file__).parents[1] / "fixtures" / "schemas"
MINIMUM_FIXTURES = {"user-event": (4, 8)} | {n: (2, 4) for n in SCHEMA_NAMES[1:]}
AT = datetime(2026, 1, 2, 3, 4, 5, 123456, tzinfo=UTC)


def _fixtures(kind: str) -> list[Any]:
    files = sorted(FIXTURES.glob(f"*/{kind}/*.json"))
    return [pytest.param(f.parts[-3], f, id=f"{f.parts[-3]}/{f.stem}") for f in files]


@pytest.mark.parametrize(("name", "path"), _fixtures("valid"))
def test_valid_fixture_has_no_errors(name: str, path: Path) -> None:
    instance = json.loads(path.read_text())
    assert validate(name, instance) == []
    assert schemas.explain(name, instance) == []


@pytest.mark.parametrize(("name", "path"), _fixtures("invalid"))
def test_invalid_fixture_gives_exactly_its_error(name: str, path: Path) -> None:
    case = json.loads(path.read_text())
    assert validate(name, case["instance"]) == [FieldError(**case["error"])]
    with pytest.raises(InvalidEvent) as raised:
        schemas.validate_or_raise(name, case["instance"])
    assert (raised.value.path, raised.value.message) == (
        case["error"]["path"],
        case["error"]["message"],
    )


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_every_schema_has_enough_fixtures(name: str) -> None:
    want_valid, want_invalid = MINIMUM_FIXTURES[name]
    assert len(list((FIXTURES / name / "valid").glob("*.json"))) >= want_valid
    assert len(list((FIXTURES / name / "invalid").glob("*.json"))) >= want_invalid


def _fields(schema: dict[str, Any], prefix: str = "") -> list[tuple[str, dict[str, Any]]]:
    """Every named field in a schema, nested objects and array items included."""
    found = []
    for key, sub in schema.get("properties", {}).items():
        found.append((prefix + key, sub))
        found += _fields(sub, f"{prefix}{key}.")
        if isinstance(sub.get("items"), dict):
            found += _fields(sub["items"], f"{prefix}{key}[].")
    return found


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_schema_is_valid_draft_2020_12_and_documented(name: str) -> None:
    schema = load_schema(name)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"].endswith(f"/{name}.v1.json")
    assert schema["title"] and schema["description"]
    for path, sub in _fields(schema):
        assert sub.get("description"), f"{name}: {path} has no description"
        assert sub.get("examples"), f"{name}: {path} has no examples"
        for example in sub["examples"]:
            assert jsonschema.Draft202012Validator(sub).is_valid(example), f"{name}: {path}"


@pytest.mark.parametrize("name", SCHEMA_NAMES)
def test_readme_documents_every_field(name: str) -> None:
    readme = (schemas.SCHEMA_DIR / "README.md").read_text()
    missing = [p for p, _ in _fields(load_schema(name)) if f"| `{p}` |" not in readme]
    assert not missing, f"schemas/README.md lacks rows for {name}: {missing}"


# The dataclass that mirrors each (sub)schema; schema_version lives in to_dict, not in a field.
MIRRORS: list[tuple[type, str, str]] = [
    (UserEvent, "user-event", ""),
    (ChurnAlert, "churn-alert", ""),
    (Segment, "churn-alert", "segment"),
    (Reason, "churn-alert", "reasons"),
    (WinbackAction, "winback-action", ""),
    (DeadLetter, "dead-letter", ""),
    (Source, "dead-letter", "source"),
]


@pytest.mark.parametrize(("cls", "name", "where"), MIRRORS, ids=lambda v: getattr(v, "__name__", v))
def test_dataclass_fields_match_schema(cls: type, name: str, where: str) -> None:
    schema = load_schema(name)
    if where:
        schema = dict(_fields(schema))[where]
        schema = schema.get("items", schema)
    props = set(schema["properties"]) - {"schema_version"}
    required = set(schema.get("required", [])) - {"schema_version"}
    # Fields outside __init__ are derived (UserEvent.ts), never on the wire.
    fields = [f for f in dataclasses.fields(cls) if f.init]
    assert {f.name for f in fields} == props
    no_default = {
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }
    assert no_default == required


def _alert() -> ChurnAlert:
    return ChurnAlert(
        alert_id=make_alert_id("u-1", "high", 20455),
        user_id="u-1",
        risk=0.83,
        score=83,
        band="high",
        trigger="band_up",
        segment=Segment(stage="at-risk", tier="high"),
        reasons=(Reason("recency_days", "days since last activity", 1.42, 21.0),),
        model_version="scorer-0@1742",
        horizon_days=14,
        occurred_at=AT.astimezone(timezone(timedelta(hours=2))),
        previous_band="medium",
    )


def _messages() -> list[tuple[str, Any]]:
    alert = _alert()
    action = WinbackAction(
        action_id=make_action_id(alert.alert_id, "email"),
        alert_id=alert.alert_id,
        user_id="u-1",
        channel="email",
        playbook="high-value-critical",
        status="deferred",
        at=AT,
        reason="quiet_hours",
    )
    source: dict[str, Any] = {"topic": "user-events", "partition": 0, "offset": 9, "key": b"u-1"}
    big = b'{"pad": "' + "é".encode() * MAX_PAYLOAD_BYTES + b'"}'
    return [
        ("churn-alert", alert),
        ("churn-alert", dataclasses.replace(alert, reasons=(), previous_band=None)),
        ("winback-action", action),
        (
            "dead-letter",
            dead_letter(b'{"x": 1}', InvalidEvent("bad", path="x"), stage="scorer", **source),
        ),
        ("dead-letter", dead_letter(b"\xff" * 10, "not UTF-8", stage="ingest", **source, at=AT)),
        ("dead-letter", dead_letter(big, "too big", stage="ingest", **source)),
        (
            "dead-letter",
            dead_letter(b"\xfe" * (MAX_PAYLOAD_BYTES + 5), "x", stage="ingest", **source),
        ),
    ]


@pytest.mark.parametrize(("name", "message"), _messages())
def test_message_round_trips_through_its_schema(name: str, message: Any) -> None:
    wire = json.loads(json.dumps(message.to_dict()))
    assert validate(name, wire) == []
    assert type(message).from_dict(wire) == message


def test_user_event_round_trips_through_its_schema() -> None:
    event = parse_event(json.loads((FIXTURES / "user-event/valid/full.json").read_text()))
    assert validate("user-event", event_to_dict(event)) == []
    assert parse_event(event_to_dict(event)) == event


def test_dead_letter_keeps_text_and_bytes_and_flags_truncation() -> None:
    kw: dict[str, Any] = {"stage": "ingest", "topic": "POST /v1/events"}
    kw |= {"partition": None, "offset": None, "key": None}
    text = dead_letter('{"é": 1}'.encode(), InvalidEvent("bad", path="é"), **kw)
    assert (text.payload, text.payload_encoding, text.error_path) == ('{"é": 1}', "utf-8", "é")
    binary = dead_letter(b"\x00\xff", "binary", **kw)
    assert binary.payload_encoding == "base64" and binary.payload_bytes() == b"\x00\xff"
    big = dead_letter(b"ab" * MAX_PAYLOAD_BYTES, "big", **kw)
    assert big.truncated and big.payload_bytes() == b"ab" * (MAX_PAYLOAD_BYTES // 2)
    odd = b"a" + "é".encode() * MAX_PAYLOAD_BYTES  # the 64 KiB cut splits an "é"
    cut = dead_letter(odd, "cut mid-character", **kw)
    assert cut.payload_encoding == "utf-8" and cut.truncated and not text.truncated
    assert odd.startswith(cut.payload_bytes()) and len(cut.payload_bytes()) == MAX_PAYLOAD_BYTES - 1


def test_ids_are_deterministic_and_distinct() -> None:
    assert make_alert_id("u-1", "high", 1) == make_alert_id("u-1", "high", 1)
    assert make_alert_id("u-1", "high", 1) != make_alert_id("u-1", "high", 2)
    assert make_alert_id("u-1", "high", 1) != make_alert_id("u-1high", "", 1)
    assert len(make_action_id("a", "sms")) == 24


def test_load_schema_errors_say_what_to_fix(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with pytest.raises(ConfigError, match="unknown schema 'user'"):
        load_schema("user")
    monkeypatch.setattr(schemas, "SCHEMA_DIR", tmp_path)
    with pytest.raises(ConfigError, match=r"user-event\.v1\.json is missing"):
        load_schema("user-event")


def test_validate_does_not_write_defaults_into_the_message() -> None:
    event = {
        "event_id": "e",
        "user_id": "u",
        "type": "login",
        "occurred_at": "2026-01-02T03:04:05Z",
    }
    assert validate("user-event", event) == [] and "schema_version" not in event


_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=12)
)
_json = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@st.composite
def _near_valid(draw: st.DrawFn, name: str) -> Any:
    """A valid fixture with a few fields replaced by random values or other fields' examples."""
    base = json.loads(
        draw(st.sampled_from(sorted((FIXTURES / name / "valid").glob("*.json")))).read_text()
    )
    examples = [e for _, sub in _fields(load_schema(name)) for e in sub["examples"]]
    patch = draw(
        st.dictionaries(
            st.sampled_from([*sorted(base), "unexpected"]),
            _json | st.sampled_from(examples),
            max_size=3,
        )
    )
    return base | patch


@settings(max_examples=300, deadline=None)
@given(name=st.sampled_from(SCHEMA_NAMES), data=st.data())
def test_validate_never_raises_and_agrees_with_the_full_check(
    name: str, data: st.DataObject
) -> None:
    value = data.draw(_json | _near_valid(name))
    errors = validate(name, value)
    assert all(isinstance(e, FieldError) and e.message for e in errors)
    # The fast path must answer exactly as the thorough one does.
    assert errors == schemas.explain(name, value)

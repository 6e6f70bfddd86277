"""The hand-written user-event check never calls an invalid event valid.

``certainly_valid`` answers before the schema validators on the hot paths, so a
wrong ``True`` would let a bad event through: the property below throws
near-valid events at it (fields replaced, nested keys replaced, times and
types bent) and checks every ``True`` against the thorough jsonschema check.
It must also say ``True`` of what real traffic looks like, or it saves nothing.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common import schemas
from services.common.event_check import certainly_valid
from services.sim.generator import history, make_users

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "schemas" / "user-event"
VALID = [json.loads(p.read_text()) for p in sorted((FIXTURES / "valid").glob("*.json"))]
INVALID = [json.loads(p.read_text()) for p in sorted((FIXTURES / "invalid").glob("*.json"))]


def schema_valid(event: Any) -> bool:
    return not schemas.explain("user-event", event)


def test_every_valid_fixture_and_simulated_event_is_certainly_valid() -> None:
    simulated = [
        orjson.loads(orjson.dumps(e))
        for user in make_users(50, seed=3, prefix="chk")
        for e in history(user, start=1_780_000_000.0, days=30, seed=3)
    ]
    assert len(simulated) > 1000
    for event in VALID + simulated:
        assert certainly_valid(event), event


def test_no_invalid_fixture_is_certainly_valid() -> None:
    assert INVALID
    for event in INVALID:
        assert not certainly_valid(event), event


_scalar = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-5, max_value=5)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=3)
    | st.text(min_size=60, max_size=140)
)
_value = st.recursive(
    _scalar,
    lambda inner: st.lists(inner, max_size=2) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=4,
)
_time = st.sampled_from(
    [
        "2026-01-02T03:04:05Z",
        "2026-01-02T03:04:05.123456789+01:00",
        "2026-01-02T03:04:05",
        "2026-01-02T03:04:05Z\n",
        "2026-13-02T03:04:05Z",
        "2026-01-02t03:04:05z",
        "2026-01-02T24:00:00Z",
        "2026-01-02T03:04:05.1234567890Z",
        " 2026-01-02T03:04:05Z",
    ]
)
_text = st.sampled_from(["login", "Login", "a" * 64, "a" * 65, "x-y", "", "a_1", "login\n"])
_nested = {
    "properties": [
        "amount",
        "currency",
        "plan",
        "session_id",
        "duration_s",
        "channel",
        "feature",
        "other",
    ],
    "context": ["platform", "app_version", "country", "timezone", "other"],
}
_nested_values = (
    st.sampled_from(
        ["EUR", "eur", "EURO", "DE", "de", "EUR\n", "DE\n", -1, -0.5, 0, 1.5, True, None, "1"]
    )
    | st.text(min_size=63, max_size=130)
    | _value
)


@st.composite
def near_valid_events(draw: st.DrawFn) -> Any:
    event = dict(draw(st.sampled_from(VALID)))
    top = [*sorted(schemas.load_schema("user-event")["properties"]), "unexpected"]
    for key in draw(st.lists(st.sampled_from(top), max_size=3)):
        event[key] = draw(_value | _time | _text | st.sampled_from([1, 1.0, 2, True]))
    for where, keys in _nested.items():
        if draw(st.booleans()):
            inner = dict(event.get(where) or {}) if isinstance(event.get(where), dict) else {}
            for key in draw(st.lists(st.sampled_from(keys), max_size=3)):
                inner[key] = draw(_nested_values)
            event[where] = inner
    for key in draw(st.lists(st.sampled_from(["event_id", "user_id", "type"]), max_size=2)):
        event.pop(key, None)
    return event


@st.composite
def one_change(draw: st.DrawFn) -> Any:
    """A valid fixture with exactly one field changed: a lone flaw has nowhere to hide."""
    event = dict(draw(st.sampled_from(VALID)))
    where = draw(st.sampled_from(["top", *_nested]))
    if where == "top":
        key = draw(st.sampled_from([*sorted(event), "schema_version", "received_at", "other"]))
        event[key] = draw(_value | _time | _text | st.sampled_from([1, 1.0, 2, True]))
    else:
        inner = dict(event.get(where) or {})
        inner[draw(st.sampled_from(_nested[where]))] = draw(_nested_values)
        event[where] = inner
    return event


@settings(max_examples=1000, deadline=None)
@given(event=near_valid_events() | _value)
def test_certainly_valid_implies_schema_valid(event: Any) -> None:
    if certainly_valid(event):
        assert schema_valid(event), event


@settings(max_examples=1500, deadline=None)
@given(event=one_change())
def test_certainly_valid_implies_schema_valid_with_one_change(event: Any) -> None:
    if certainly_valid(event):
        assert schema_valid(event), event


@settings(max_examples=300, deadline=None)
@given(event=near_valid_events())
def test_validate_answers_as_the_thorough_check_does(event: Any) -> None:
    # The quick check sits in front of validate(); the answer must not change.
    assert schemas.validate("user-event", event) == schemas.explain("user-event", event)

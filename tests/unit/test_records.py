"""The compact stored forms of score records, snapshots and policy state (core.records,
core.snapshot_codec, core.policy_codec)."""

from __future__ import annotations

import contextlib
from datetime import UTC, datetime

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.errors import UnreadableStored
from services.common.events import UserEvent
from services.scorer.core.feature_ids import FEATURES
from services.scorer.core.features import FeatureSettings, update_features
from services.scorer.core.labels import take_snapshot
from services.scorer.core.policy import BANDS, AlertState
from services.scorer.core.policy_codec import decode_policy, encode_policy
from services.scorer.core.records import decode_record, encode_record, record_stage
from services.scorer.core.segments import STAGES, TIERS
from services.scorer.core.snapshot_codec import LAYOUTS, decode_snapshot, encode_snapshot
from services.scorer.core.state_codec import decode_state, encode_state, state_times
from services.scorer.core.vector import to_vector
from services.scorer.queries.at_risk import _row
from services.scorer.queries.formats import public_record


def test_the_newest_layout_is_the_feature_vector_of_today() -> None:
    """A feature added to ``to_vector`` needs a new layout here (append to LAYOUTS),
    or its snapshots are stored as JSON, ~5 times larger."""
    e = UserEvent("a", "u", "login", datetime(2026, 1, 5, tzinfo=UTC))
    vector = to_vector(update_features(None, e, settings=FeatureSettings()), e.ts)
    assert tuple(vector) == LAYOUTS[-1]
    assert set(vector) <= set(FEATURES)


def record(**changes: object) -> dict[str, object]:
    base: dict[str, object] = {
        "risk": 0.734512,
        "score": 73,
        "band": "high",
        "stage": "at-risk",
        "tier": "medium",
        "reasons": [["recency_days", 0.4123, 12.5], ["revenue_90d", 0.05, 250000.99]],
        "model_version": "logreg-12-ab12cd34",
        "updated_at": 1767830400.125,
    }
    return base | changes


@given(
    risk=st.integers(0, 1_000_000).map(lambda n: n / 1e6),
    band=st.sampled_from(BANDS),
    stage=st.sampled_from([*STAGES, ""]),
    tier=st.sampled_from([*TIERS, ""]),
    value=st.floats(-1e12, 1e12).map(lambda v: round(v, 4)),
    contribution=st.floats(-100, 100).map(lambda v: round(v, 4)),
)
def test_a_record_round_trips(
    risk: float, band: str, stage: str, tier: str, value: float, contribution: float
) -> None:
    rec = record(
        risk=risk,
        score=round(risk * 100),
        band=band,
        stage=stage,
        tier=tier,
        reasons=[["events_7d", contribution, value], ["recency_days", -contribution, 2.5]],
    )
    packed = encode_record(rec)
    assert packed[:1] == b"\x01" and decode_record(packed) == rec
    assert record_stage(packed) == stage


def test_a_record_is_under_a_third_of_its_json() -> None:
    packed = encode_record(record())
    assert len(packed) * 3 < len(orjson.dumps(record())) and decode_record(packed) == record()


@pytest.mark.parametrize(
    "odd", [{"band": "purple"}, {"reasons": [["a_new_feature", 0.1, 1.0]]}, {"extra": 1}]
)
def test_what_the_binary_record_cannot_hold_is_stored_as_json(odd: dict[str, object]) -> None:
    rec = record(**odd)
    assert encode_record(rec)[:1] == b"{" and decode_record(encode_record(rec)) == rec


def test_a_snapshot_keeps_counts_exactly_and_other_values_to_float16() -> None:
    features = dict.fromkeys(FEATURES, 0.0) | {
        "events_30d": 17.0,
        "events_90d": 4000.0,  # a whole number past 255: float16, exact up to 2048 only
        "recency_days": 3.14159,
        "revenue_90d": 123456.78,  # past float16's range: float32
        "sessions_change": -3.0,
    }
    snap = take_snapshot("u1", features, taken_at=1767830400.5, raw=-1.25, risk=0.3)
    back = decode_snapshot(encode_snapshot(snap), "u1")
    assert (back.user_id, back.taken_at, back.day, back.raw) == (
        "u1",
        1767830400.5,
        snap.day,
        -1.25,
    )
    assert back.risk == pytest.approx(0.3)
    assert back.features["events_30d"] == 17.0 and back.features["sessions_change"] == -3.0
    assert back.features["events_90d"] == 4000.0
    assert back.features["recency_days"] == pytest.approx(3.14159, rel=1e-3)
    assert back.features["revenue_90d"] == pytest.approx(123456.78, rel=1e-7)
    assert len(encode_snapshot(snap)) < 40


def test_a_snapshot_of_unknown_features_is_stored_as_json() -> None:
    snap = take_snapshot("u1", {"something_else": 1.0}, taken_at=0.0, raw=0.0, risk=0.5)
    packed = encode_snapshot(snap)
    assert packed[:1] == b"{" and decode_snapshot(packed, "u1") == snap


@pytest.mark.parametrize(
    "state",
    [
        AlertState("low", True, None, 8, 1792505599.0, 8, 1792419199.0),
        AlertState("critical", False, 1792505599.5, 97, 1792505600.25),
        AlertState("high", False, None, 81.5, 1.0, None, None),
    ],
)
def test_policy_state_round_trips(state: AlertState) -> None:
    packed = encode_policy(state)
    assert packed[:1] == b"\x03" and decode_policy(packed) == state
    assert len(packed) < 36


def test_old_json_policy_state_decodes() -> None:
    old = b'["low",true,null,8,1792505599.0,8,1792419199.0]'
    assert decode_policy(old) == AlertState("low", True, None, 8, 1792505599.0, 8, 1792419199.0)
    assert decode_policy(None) is None


def _stored_user() -> tuple[bytes, bytes, bytes, bytes]:
    """A real user's feature state, label snapshot, score record and alert state, as the
    scorer stores them."""
    e = UserEvent("a", "u", "purchase", datetime(2026, 1, 5, tzinfo=UTC), properties={"amount": 5})
    state = update_features(None, e, settings=FeatureSettings())
    snap = take_snapshot("u", to_vector(state, e.ts), taken_at=e.ts, raw=0.3, risk=0.2)
    record = encode_record(
        {
            "risk": 0.71,
            "score": 71,
            "band": "high",
            "stage": "at_risk",
            "tier": "high",
            "reasons": [["recency_days", 0.4, 12.0]],
            "model_version": "m-1",
            "updated_at": e.ts,
        }
    )
    policy = encode_policy(AlertState("high", False, e.ts, 71, e.ts, 40, e.ts - 3600))
    return encode_state(state), encode_snapshot(snap), record, policy


def _damaged(data: bytes, cut: int, flips: list[tuple[int, int]]) -> bytes:
    out = bytearray(data[: max(1, cut % (len(data) + 1))])
    for at, value in flips:
        out[at % len(out)] = value
    return bytes(out)


_DAMAGE = (st.integers(0, 10_000), st.lists(st.tuples(st.integers(0, 10_000), st.integers(0, 255))))


@settings(max_examples=400, deadline=None)
@given(st.one_of(st.binary(max_size=300), st.tuples(*_DAMAGE)))
def test_stored_bytes_either_decode_or_raise_unreadable_stored(data: object) -> None:
    """Whatever is in Redis (random, cut short, bytes flipped): the decoders return a value
    or raise UnreadableStored, which their callers set aside; never another error,
    which would stop the worker."""
    state_bytes, snap_bytes, record_bytes, policy_bytes = _stored_user()
    for decode, good in (
        (decode_state, state_bytes),
        (state_times, state_bytes),
        (lambda b: decode_snapshot(b, "u"), snap_bytes),
        (decode_record, record_bytes),
        (record_stage, record_bytes),
        (decode_policy, policy_bytes),
    ):
        raw = data if isinstance(data, bytes) else _damaged(good, *data)  # type: ignore[misc]
        with contextlib.suppress(UnreadableStored):
            decode(raw)


@settings(max_examples=600, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=120),
        st.tuples(*_DAMAGE),
        st.dictionaries(
            st.sampled_from(["risk", "score", "band", "stage", "reasons", "updated_at", "tier"]),
            st.one_of(
                st.none(),
                st.floats(),
                st.integers(-(2**53), 2**53),
                st.text(max_size=3),
                st.lists(st.lists(st.one_of(st.text(max_size=3), st.floats()), max_size=3)),
            ),
        ),
    )
)
def test_a_record_that_decodes_can_be_shown(data: object) -> None:
    """What the risk API does with a stored record (its list row, its user view) never fails
    on one that decoded: a damaged record is refused by the decoder, not by the page."""
    good = _stored_user()[2]
    if isinstance(data, dict):
        raw = orjson.dumps(data)
    else:
        raw = data if isinstance(data, bytes) else _damaged(good, *data)  # type: ignore[misc]
    try:
        record = decode_record(raw)
    except UnreadableStored:
        return
    _row("u", 0.5, record)
    public_record(raw)

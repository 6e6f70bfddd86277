"""Per-user features: event time, lateness, idempotency, windows, encoding."""

from __future__ import annotations

import base64
import contextlib
import copy
import struct
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from services.common.clock import day_index
from services.common.errors import LateEvent
from services.common.events import UserEvent
from services.scorer.core.event_counts import EVENTS
from services.scorer.core.features import (
    FeatureSettings,
    UserState,
    apply_batch,
    fold_events,
    update_features,
)
from services.scorer.core.state_codec import decode_state, encode_state
from services.scorer.core.vector import to_vector

S = FeatureSettings()
T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)
CONTRACT_KEYS = [
    "recency_days",
    "tenure_days",
    "events_1d",
    "events_7d",
    "events_30d",
    "events_90d",
    "active_days_7d",
    "active_days_30d",
    "active_days_90d",
    "sessions_30d",
    "mean_session_s",
    "distinct_features_30d",
    "purchases_30d",
    "purchases_90d",
    "revenue_30d",
    "revenue_90d",
    "is_paid",
    "payment_failures_30d",
    "trend_7d_vs_30d",
    "sessions_change",
    "support_tickets_30d",
    "complaints_30d",
    "downgrades_90d",
    "uninstalled",
    "winback_sent_90d",
    "winback_responded_90d",
    "active_days_total",
    "purchases_total",
    "active_span_days",
    "mean_gap_days",
    "recency_vs_gap",
    "revenue_total",
]
_ids = iter(range(10**9))


def ev(
    at: datetime, type: str = "login", *, id: str | None = None, tz: str | None = None, **props: Any
) -> UserEvent:
    return UserEvent(
        event_id=id or f"e{next(_ids)}",
        user_id="u1",
        type=type,
        occurred_at=at,
        properties=props,
        context={"timezone": tz} if tz else {},
    )


def fold(events: list[UserEvent], state: UserState | None = None) -> UserState:
    for e in events:
        state = update_features(state, e, settings=S)
    assert state is not None
    return state


def test_vector_has_every_contract_key_as_a_float() -> None:
    vector = to_vector(fold([ev(T0)]), T0.timestamp())
    assert set(CONTRACT_KEYS) <= set(vector)
    assert all(type(v) is float for v in vector.values())


def test_an_event_exactly_seven_days_back_is_outside_the_7_day_window() -> None:
    now = T0.timestamp()
    week_ago = fold([ev(T0 - timedelta(days=7))])
    six_days_ago = fold([ev(T0 - timedelta(days=6))])
    assert to_vector(week_ago, now)["events_7d"] == 0.0
    assert to_vector(week_ago, now)["events_30d"] == 1.0
    assert to_vector(six_days_ago, now)["events_7d"] == 1.0
    assert to_vector(six_days_ago, now)["active_days_7d"] == 1.0


def test_one_day_window_is_the_local_day_of_now() -> None:
    now = T0.timestamp()
    state = fold([ev(T0.replace(hour=0, minute=1)), ev(T0 - timedelta(hours=12, minutes=1))])
    vector = to_vector(state, now)
    assert vector["events_1d"] == 1.0  # 00:01 today counts, 23:59 yesterday does not
    assert vector["events_7d"] == 2.0


def test_late_event_inside_tolerance_lands_on_its_own_day() -> None:
    state = fold([ev(T0)])
    late_at = T0 - timedelta(hours=47)
    state = update_features(state, ev(late_at, "purchase", amount=5.0), settings=S)
    late_day = day_index(late_at.timestamp(), None)
    assert late_day == day_index(T0.timestamp(), None) - 2
    assert state.days[late_day][0][EVENTS] == 1
    assert state.last_seen == int(T0.timestamp())  # the newest event is still the newest
    vector = to_vector(state, T0.timestamp())
    assert vector["events_1d"] == 1.0
    assert vector["purchases_30d"] == 1.0
    assert vector["recency_days"] == 0.0


def test_event_beyond_tolerance_raises_late_event_and_changes_nothing() -> None:
    state = fold([ev(T0)])
    before = encode_state(state)
    with pytest.raises(LateEvent, match=r"49\.0 h older .*tolerance 48 h"):
        update_features(state, ev(T0 - timedelta(hours=49)), settings=S)
    assert encode_state(state) == before


def test_the_same_event_twice_counts_once() -> None:
    first = fold([ev(T0, "purchase", id="p1", amount=10.0)])
    again = update_features(first, ev(T0, "purchase", id="p1", amount=10.0), settings=S)
    assert again is first
    assert to_vector(again, T0.timestamp())["revenue_30d"] == 10.0


def test_duplicates_inside_and_across_batches_count_once() -> None:
    batch = [ev(T0, id="a"), ev(T0 + timedelta(minutes=1), id="b"), ev(T0, id="a")]
    state, late = apply_batch(None, batch, settings=S)
    assert late == []
    state, late = apply_batch(state, batch[:2], settings=S)  # a redelivered batch
    assert state is not None
    assert to_vector(state, T0.timestamp())["events_1d"] == 2.0


def test_apply_batch_folds_in_event_time_and_collects_late_ones() -> None:
    old = ev(T0 - timedelta(days=5), id="old")
    batch = [ev(T0, id="new"), old, ev(T0 - timedelta(hours=30), id="inside")]
    state, late = apply_batch(fold([ev(T0)]), batch, settings=S)
    assert [(e.event_id, type(exc)) for e, exc in late] == [("old", LateEvent)]
    assert state is not None
    assert to_vector(state, T0.timestamp())["events_7d"] == 3.0


def test_update_never_mutates_its_input() -> None:
    state = fold([ev(T0 + timedelta(hours=h), "feature_used", feature=f"f{h}") for h in range(5)])
    snapshot = copy.deepcopy(state)
    update_features(state, ev(T0 + timedelta(hours=6), "session_start"), settings=S)
    update_features(state, ev(T0 - timedelta(hours=20), "purchase", amount=3.0), settings=S)
    assert state == snapshot


_TYPES = ["login", "page_view", "session_start", "purchase", "feature_used", "mystery_type"]


@st.composite
def _events(draw: st.DrawFn) -> list[UserEvent]:
    n = draw(st.integers(min_value=1, max_value=12))
    out = []
    for i in range(n):
        at = T0 + timedelta(seconds=draw(st.integers(min_value=0, max_value=47 * 3600)))
        kind = draw(st.sampled_from(_TYPES))
        props: dict[str, Any] = {}
        if kind == "purchase":
            props["amount"] = draw(st.integers(min_value=0, max_value=10_000)) / 100
        if kind == "feature_used":
            props["feature"] = draw(st.sampled_from(["export", "share", "search"]))
        if draw(st.booleans()):
            props["duration_s"] = draw(st.integers(min_value=1, max_value=3600))
        out.append(ev(at, kind, id=f"h{i}", tz="Asia/Shanghai", **props))
    return out


@settings(max_examples=150, deadline=None)
@given(_events(), st.randoms(use_true_random=False))
def test_any_order_within_tolerance_gives_the_same_features(events: list[UserEvent], rnd) -> None:
    shuffled = list(events)
    rnd.shuffle(shuffled)
    in_order = fold(sorted(events, key=lambda e: e.occurred_at))
    any_order = fold(shuffled)
    now = T0.timestamp() + 3 * 86_400
    assert to_vector(any_order, now) == to_vector(in_order, now)
    assert any_order == in_order
    # Redelivering everything (again in another order) changes nothing.
    assert to_vector(fold(events, any_order), now) == to_vector(in_order, now)


def test_local_days_follow_the_users_time_zone() -> None:
    at_2330_shanghai = datetime(2026, 1, 1, 15, 30, tzinfo=UTC)
    at_0030_shanghai = at_2330_shanghai + timedelta(hours=1)
    now = (at_0030_shanghai + timedelta(minutes=5)).timestamp()
    events = [ev(at_2330_shanghai), ev(at_0030_shanghai)]
    shanghai = fold([ev(e.occurred_at, tz="Asia/Shanghai") for e in events])
    utc = fold(events)
    assert shanghai.timezone == "Asia/Shanghai"
    assert to_vector(shanghai, now)["active_days_7d"] == 2.0
    assert to_vector(shanghai, now)["events_1d"] == 1.0
    assert to_vector(utc, now)["active_days_7d"] == 1.0
    assert to_vector(utc, now)["events_1d"] == 2.0


def test_unknown_types_count_as_activity_and_internal_ones_do_not() -> None:
    state = fold([ev(T0, "teleported"), ev(T0 + timedelta(days=1), "winback_sent")])
    vector = to_vector(state, (T0 + timedelta(days=1)).timestamp())
    assert vector["events_7d"] == 1.0
    assert vector["winback_sent_90d"] == 1.0
    assert vector["recency_days"] == 1.0  # sending a win-back is not the user being active


def test_counters_sessions_money_friction_and_trend() -> None:
    day = timedelta(days=1)
    events = [ev(T0 - 20 * day + i * day / 2) for i in range(30)]  # steady, then quiet
    events += [
        ev(T0, "session_start"),
        ev(T0, "session_end", duration_s=120),
        ev(T0, "session_end", duration_s=360),
        ev(T0 - 8 * day, "session_start"),
        ev(T0 - 8 * day, "session_start"),
        ev(T0, "purchase", amount=19.99, plan="pro"),
        ev(T0 - 40 * day + day, "payment_failed"),
        ev(T0, "support_ticket"),
        ev(T0, "complaint"),
        ev(T0, "plan_downgraded"),
        ev(T0, "feature_used", feature="export"),
        ev(T0, "feature_used", feature="export"),
        ev(T0, "feature_used", feature="share"),
        ev(T0, "notification_opened", action_id="a1"),
    ]
    vector = to_vector(fold(sorted(events, key=lambda e: e.occurred_at)), T0.timestamp())
    assert vector["sessions_30d"] == 3.0
    assert vector["sessions_change"] == 1.0 - 2.0
    assert vector["mean_session_s"] == 240.0
    assert (vector["purchases_30d"], vector["revenue_30d"], vector["is_paid"]) == (1.0, 19.99, 1.0)
    assert vector["payment_failures_30d"] == 0.0  # 39 days ago: outside 30 days
    assert vector["support_tickets_30d"] == vector["complaints_30d"] == 1.0
    assert vector["downgrades_90d"] == 1.0
    assert vector["distinct_features_30d"] == 2.0
    assert vector["winback_responded_90d"] == 1.0
    assert vector["events_30d"] == 30.0 + 13.0
    assert vector["trend_7d_vs_30d"] == pytest.approx(vector["events_7d"] / (43 * 7 / 30))


def test_no_history_reads_as_a_steady_trend() -> None:
    vector = to_vector(fold([ev(T0)]), (T0 + timedelta(days=60)).timestamp())
    assert vector["trend_7d_vs_30d"] == 1.0
    assert vector["recency_days"] == vector["tenure_days"] == 60.0


def test_uninstall_and_explicit_churn_until_the_user_returns() -> None:
    state = fold([ev(T0), ev(T0 + timedelta(hours=1), "uninstall")])
    vector = to_vector(state, T0.timestamp() + 7200)
    assert vector["uninstalled"] == vector["explicit_churn"] == 1.0
    state = fold([ev(T0 + timedelta(days=3), "login")], state)
    vector = to_vector(state, T0.timestamp() + 3 * 86_400)
    assert vector["uninstalled"] == vector["explicit_churn"] == 0.0


def test_cancelling_ends_the_paid_plan() -> None:
    state = fold([ev(T0, "subscription_started", plan="pro")])
    assert to_vector(state, T0.timestamp())["is_paid"] == 1.0
    state = fold([ev(T0 + timedelta(days=1), "subscription_cancelled")], state)
    assert state.plan is None
    assert to_vector(state, T0.timestamp())["is_paid"] == 0.0


def test_days_since_return_after_a_long_gap() -> None:
    day = timedelta(days=1)
    state = fold([ev(T0 - 40 * day + i * day) for i in range(10)] + [ev(T0 - 2 * day), ev(T0)])
    assert to_vector(state, T0.timestamp())["days_since_return"] == 2.0
    steady = fold([ev(T0 - i * day) for i in range(20, -1, -1)])
    assert to_vector(steady, T0.timestamp())["days_since_return"] == -1.0


def test_old_day_buckets_are_pruned_after_90_days() -> None:
    state = fold([ev(T0), ev(T0 + timedelta(days=5)), ev(T0 + timedelta(days=95))])
    assert sorted(state.days) == [day_index(T0.timestamp(), None) + d for d in (5, 95)]
    # Kept while 90 days behind, but the 90-day window is today and the 89 days before.
    assert to_vector(state, (T0 + timedelta(days=95)).timestamp())["events_90d"] == 1.0
    assert to_vector(state, (T0 + timedelta(days=94)).timestamp())["events_90d"] == 2.0


def test_lifetime_counters_outlive_the_90_day_windows() -> None:
    day = timedelta(days=1)
    buys = [ev(T0 + d * day, "purchase", amount=5.0) for d in (0, 0, 40, 100, 200)]
    state = fold([*buys, ev(T0 + 200 * day, "winback_sent")])
    v = to_vector(state, (T0 + 230 * day).timestamp())
    assert v["purchases_90d"] == v["active_days_90d"] == 1.0  # the windows forgot the rest
    assert v["active_days_total"] == 4.0 and v["purchases_total"] == 5.0
    assert v["revenue_total"] == 25.0 and v["revenue_90d"] == 5.0
    assert v["active_span_days"] == 200.0 and v["mean_gap_days"] == pytest.approx(200 / 3)
    assert v["recency_vs_gap"] == pytest.approx(30 / (200 / 3))
    once = to_vector(fold([ev(T0)]), (T0 + 9 * day).timestamp())
    assert (once["active_days_total"], once["mean_gap_days"]) == (1, 0)
    # No gap seen yet: it counts as one day, so the time away is all "longer than usual".
    assert once["recency_vs_gap"] == once["recency_days"] == 9.0


def test_a_late_event_on_a_new_day_counts_that_day_once() -> None:
    day = timedelta(days=1)
    late_first = fold([ev(T0 + day), ev(T0), ev(T0 + timedelta(hours=1))])
    in_order = fold([ev(T0), ev(T0 + timedelta(hours=1)), ev(T0 + day)])
    assert late_first.active_days_total == in_order.active_days_total == 2


def as_json(state: UserState, version: int = 2) -> bytes:
    """The state as formats 1 and 2 stored it: JSON, the last type by name, the seen
    ids in base64 with two bytes of hours each."""
    packed = msgpack.unpackb(encode_state(state))
    flat = [x for k, hour in state.seen.items() for x in (k, state.last_seen // 3600 - hour)]
    packed[14] = base64.b64encode(struct.pack("<" + "QH" * (len(flat) // 2), *flat)).decode()
    packed[11] = state.last_type
    return orjson.dumps([version, *packed[1 : 15 if version == 1 else 17]])


def test_a_format_1_state_still_decodes() -> None:
    state = _typical_user()
    old = decode_state(as_json(state, 1))
    # Format 1 had no lifetime counters: they are rebuilt from the kept days.
    assert old.active_days_total == state.active_days_total == 10
    assert old.purchases_total == state.purchases_total == 1
    assert old.days == state.days and old.seen == state.seen


def test_a_format_2_state_still_decodes() -> None:
    state = _typical_user()
    assert decode_state(as_json(state, 2)) == state
    assert len(encode_state(state)) < len(as_json(state, 2))


def test_a_format_3_state_decodes_with_the_kept_days_revenue() -> None:
    day = timedelta(days=1)
    state = fold([ev(T0 + d * day, "purchase", amount=5.0) for d in (0, 100)])
    packed = msgpack.unpackb(encode_state(state))
    old = decode_state(msgpack.packb([3, *packed[1:17]]))
    # Format 3 had no lifetime revenue: the kept days' is a lower bound.
    assert (state.revenue_total_c, old.revenue_total_c) == (1000, 500)
    assert old.days == state.days and old.purchases_total == state.purchases_total == 2


_ANY_TYPES = [
    *_TYPES,
    "signup",
    "session_end",
    "subscription_started",
    "subscription_cancelled",
    "uninstall",
    "plan_downgraded",
    "winback_sent",
    "notification_opened",
]


@st.composite
def _messy_events(draw: st.DrawFn) -> list[UserEvent]:
    """Out of order, late past the tolerance, repeated, across zones, plans and months."""
    n = draw(st.integers(min_value=1, max_value=25))
    out: list[UserEvent] = []
    for i in range(n):
        if out and draw(st.integers(min_value=0, max_value=5)) == 0:
            out.append(draw(st.sampled_from(out)))  # a duplicate
            continue
        hours = draw(st.integers(min_value=-100, max_value=24 * 120))
        kind = draw(st.sampled_from(_ANY_TYPES))
        props: dict[str, Any] = {}
        if draw(st.booleans()):
            props["plan"] = draw(st.sampled_from(["free", "pro", "team"]))
        if kind in ("subscription_started", "session_end"):
            props["amount" if kind != "session_end" else "duration_s"] = 30
        if kind == "notification_opened":
            props["action_id"] = "a1"
        tz = draw(st.sampled_from([None, "Asia/Shanghai", "America/New_York"]))
        out.append(ev(T0 + timedelta(hours=hours), kind, id=f"m{i}", tz=tz, **props))
    return out


@settings(max_examples=200, deadline=None)
@given(_messy_events(), st.integers(min_value=0, max_value=24), st.sampled_from([3, 512]))
def test_folding_a_batch_is_updating_event_by_event(
    events: list[UserEvent], split: int, remembered: int
) -> None:
    """The batch fold (one copy of the state, changed in place) gives what one update per
    event gives, late ones set aside and repeats counted, and never changes its input."""
    s = FeatureSettings(max_remembered_ids=remembered)
    start: UserState | None = None
    for e in events[:split]:  # a state that already holds some of them
        with contextlib.suppress(LateEvent):
            start = update_features(start, e, settings=s)
    kept = copy.deepcopy(start)
    state, late, duplicates = start, [], 0
    for e in events[split:]:
        try:
            updated = update_features(state, e, settings=s)
        except LateEvent:
            late.append(e.event_id)
            continue
        duplicates += updated is state
        state = updated
    folded = fold_events(start, events[split:], settings=s)
    assert folded.state == state
    assert [e.event_id for e, _ in folded.late] == late
    assert folded.duplicates == duplicates
    assert start == kept
    if state is start:
        assert folded.state is start  # nothing changed: the same object, nothing to write


def test_remembered_ids_stay_within_the_lateness_window_and_the_cap() -> None:
    state = fold([ev(T0 + timedelta(hours=h)) for h in range(100)])
    assert len(state.seen) <= 50  # about 48 hours' worth, not all 100
    small = FeatureSettings(max_remembered_ids=8)
    capped = None
    for i in range(30):
        capped = update_features(capped, ev(T0 + timedelta(seconds=i)), settings=small)
    assert capped is not None and len(capped.seen) == 8


def test_an_id_forgotten_after_the_window_cannot_count_twice() -> None:
    first = ev(T0, id="x")
    state = fold([first, ev(T0 + timedelta(days=3))])
    with pytest.raises(LateEvent):
        update_features(state, first, settings=S)


def _typical_user() -> UserState:
    """20 events over 10 days: logins, sessions, features, a purchase, a time zone."""
    events = []
    for i in range(20):
        at = T0 + timedelta(days=i // 2, hours=5 * (i % 2), minutes=i)
        kind = ["login", "session_end", "feature_used", "page_view"][i % 4]
        props: dict[str, Any] = {"session_id": f"s{i}"}
        if kind == "session_end":
            props["duration_s"] = 200 + 13 * i
        if kind == "feature_used":
            props["feature"] = ["export", "search", "share"][i % 3]
        if i == 0:
            kind = "signup"
        if i == 11:
            kind, props = "purchase", {"amount": 19.99, "plan": "pro", "currency": "EUR"}
        events.append(ev(at, kind, id=f"evt-{i:04d}-7f3a9c2e-1b4d", tz="Europe/Berlin", **props))
    return fold(events)


def test_encode_decode_round_trip() -> None:
    state = _typical_user()
    data = encode_state(state)
    assert decode_state(data) == state
    assert encode_state(decode_state(data)) == data
    now = state.last_seen + 3600
    assert to_vector(decode_state(data), now) == to_vector(state, now)


def test_encoded_typical_user_is_small() -> None:
    size = len(encode_state(_typical_user()))
    assert size < 350, size


def test_decode_refuses_an_unknown_format_version() -> None:
    data = encode_state(_typical_user())
    with pytest.raises(ValueError, match="format"):
        decode_state(msgpack.packb([99, *msgpack.unpackb(data)[1:]]))
    with pytest.raises(ValueError, match="format"):
        decode_state(b"[99" + as_json(_typical_user(), 2)[2:])


def test_settings_are_validated() -> None:
    with pytest.raises(ValueError):
        FeatureSettings(windows=(7, 30, 90))
    with pytest.raises(ValueError):
        FeatureSettings(lateness_s=-1)
    assert "events_180d" in to_vector(
        fold([ev(T0)]), T0.timestamp(), settings=FeatureSettings(windows=(1, 7, 30, 90, 180))
    )


def test_remembered_ids_older_than_255_hours_round_trip() -> None:
    """Hours back are stored in one byte when they fit, two otherwise (long lateness)."""
    long = FeatureSettings(lateness_s=400 * 3600)
    state = None
    for h in (0, 300, 301):
        state = update_features(state, ev(T0 + timedelta(hours=h)), settings=long)
    assert state is not None and len(state.seen) == 3
    assert decode_state(encode_state(state)) == state

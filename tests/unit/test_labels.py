from __future__ import annotations

import pytest
from hypothesis import assume, given
from hypothesis import strategies as st

from services.common.errors import ConfigError
from services.scorer.core.labels import (
    DAY,
    LabelSettings,
    Snapshot,
    day_of,
    inactivity_churn_ts,
    resolve_by_time,
    resolve_on_churn,
    should_snapshot,
    take_snapshot,
)
from services.scorer.labelling import label_user

S = LabelSettings()  # H = 14 days, N = 30 days


def snap(day: float, **features: float) -> Snapshot:
    return take_snapshot("u1", features, taken_at=day * DAY, raw=0.3, risk=0.2)


def days(resolved: list[tuple[Snapshot, int]]) -> list[tuple[float, int]]:
    return [(s.taken_at / DAY, y) for s, y in resolved]


def test_one_snapshot_per_user_per_day() -> None:
    assert should_snapshot(None, day_of(5.5 * DAY))
    assert not should_snapshot(5, day_of(5.9 * DAY))
    assert not should_snapshot(5, 4)  # a late re-score of an older day
    assert should_snapshot(5, 6)


def test_explicit_churn_labels_the_horizon_1_and_older_snapshots_0() -> None:
    snaps = [snap(d) for d in (0, 10, 16, 29, 30)]
    resolved = resolve_on_churn(snaps, 30 * DAY, settings=S)
    # 30 - 14 = day 16 is the first day whose horizon reaches the churn.
    assert days(resolved) == [(0, 0), (10, 0), (16, 1), (29, 1), (30, 1)]


def test_snapshots_after_the_churn_are_not_learned() -> None:
    resolved = resolve_on_churn([snap(20), snap(31)], 30 * DAY, settings=S)
    assert days(resolved) == [(20, 1)]


def test_survival_resolves_0_once_the_user_is_active_after_the_horizon() -> None:
    snaps = [snap(0), snap(10)]
    resolved, remaining = resolve_by_time(snaps, 15 * DAY, settings=S, last_seen=14.5 * DAY)
    assert days(resolved) == [(0, 0)]
    assert remaining == [snaps[1]]
    resolved, remaining = resolve_by_time(remaining, 13.9 * DAY, settings=S, last_seen=13 * DAY)
    assert resolved == [] and remaining == [snaps[1]]


def test_a_snapshot_silent_for_its_whole_horizon_waits_for_the_verdict() -> None:
    s = snap(0)
    last_seen = 0.0
    # Day 14: horizon over, but silent since the snapshot: not a survivor yet.
    assert resolve_by_time([s], 14 * DAY, settings=S, last_seen=last_seen) == ([], [s])
    assert inactivity_churn_ts(last_seen, 29 * DAY, settings=S) is None
    # Day 30: inactivity churn confirmed; the user left at day 0, inside the horizon.
    confirmed = inactivity_churn_ts(last_seen, 30 * DAY, settings=S)
    assert confirmed == 30 * DAY
    resolved = resolve_on_churn([s], confirmed, settings=S, departed_at=last_seen)
    assert days(resolved) == [(0, 1)]


def test_a_silent_user_who_returns_survives() -> None:
    s = snap(0)
    assert inactivity_churn_ts(0.0, 20 * DAY, settings=S) is None
    resolved, remaining = resolve_by_time([s], 20 * DAY, settings=S, last_seen=20 * DAY)
    assert days(resolved) == [(0, 0)] and remaining == []


def test_inactivity_churn_labels_silent_snapshots_1_and_old_ones_0() -> None:
    # Active until day 40, then silent; snapshots taken daily by the silent-user timer.
    snaps = [snap(d) for d in (20, 26, 40, 45, 69)]
    confirmed = inactivity_churn_ts(40 * DAY, 70 * DAY, settings=S)
    assert confirmed == 70 * DAY
    resolved = resolve_on_churn(snaps, confirmed, settings=S, departed_at=40 * DAY)
    assert days(resolved) == [(20, 0), (26, 1), (40, 1), (45, 1), (69, 1)]


def test_after_an_inactivity_churn_a_snapshot_asks_whether_the_user_stays_gone() -> None:
    """Silent since day 1, churn confirmed on day 31: a snapshot of day 37 learns y=1 once
    its horizon (day 51) passes in silence, never y=0 "stayed" after H + N days."""
    snaps = [snap(0), snap(37)]
    resolved, pending = label_user(snaps, churn_at=0.0, last_active=DAY, now=38 * DAY, settings=S)
    assert days(resolved) == [(0, 1)] and pending == [snaps[1]]
    resolved, pending = label_user(pending, churn_at=0.0, last_active=DAY, now=51 * DAY, settings=S)
    assert days(resolved) == [(37, 1)] and pending == []


def test_a_churned_user_back_within_the_horizon_was_not_gone() -> None:
    back = 45 * DAY  # the day-37 snapshot's horizon ends on day 51
    resolved, pending = label_user(
        [snap(37)], churn_at=0.0, last_active=back, now=52 * DAY, settings=S
    )
    assert resolved == [] and pending  # back, and not yet past t + H with activity after it
    resolved, _ = label_user(
        [snap(37)], churn_at=0.0, last_active=52 * DAY, now=52 * DAY, settings=S
    )
    assert days(resolved) == [(37, 0)]


def test_with_equal_delay_a_survivor_waits_as_long_as_a_churner_can() -> None:
    equal = LabelSettings(equal_delay=True)
    s = snap(0)
    assert resolve_by_time([s], 15 * DAY, settings=equal, last_seen=14.5 * DAY) == ([], [s])
    resolved, _ = resolve_by_time([s], 44 * DAY, settings=equal, last_seen=40 * DAY)
    assert days(resolved) == [(0, 0)]


def test_without_last_seen_a_snapshot_waits_horizon_plus_inactivity() -> None:
    s = snap(0)
    assert resolve_by_time([s], 43.9 * DAY, settings=S) == ([], [s])
    assert days(resolve_by_time([s], 44 * DAY, settings=S)[0]) == [(0, 0)]


def test_inactivity_churn_can_be_disabled() -> None:
    settings = LabelSettings(inactivity_days=None, snapshot_ttl_days=14)
    assert inactivity_churn_ts(0.0, 1000 * DAY, settings=settings) is None
    assert days(resolve_by_time([snap(0)], 14 * DAY, settings=settings)[0]) == [(0, 0)]


def test_ttl_shorter_than_the_longest_wait_is_refused() -> None:
    with pytest.raises(ConfigError, match="snapshot_ttl_days"):
        LabelSettings(snapshot_ttl_days=30)
    assert LabelSettings().snapshot_ttl_s == 60 * 86_400


@given(
    departed_day=st.floats(-29.9, 100),
    silence_days=st.one_of(st.none(), st.floats(0.1, 100)),
)
def test_every_snapshot_gets_the_right_label_before_its_ttl(
    departed_day: float, silence_days: float | None
) -> None:
    """A user active until ``departed_day`` (negative: already silent at the snapshot),
    back after ``silence_days`` or never, checked hourly as the timer does."""
    s = snap(0)
    departed = departed_day * DAY
    back = None if silence_days is None else departed + silence_days * DAY
    # A return within the hour after N days can come before the hourly check confirms
    # the churn: the service then never sees it, and either verdict is right.
    assume(silence_days is None or not 30.0 <= silence_days < 30.0 + 1 / 24)
    churned = silence_days is None or silence_days >= 30.0  # N
    expected = int(churned and departed <= S.horizon_days * DAY)
    resolved: list[tuple[Snapshot, int]] = []
    for hour in range(int(S.snapshot_ttl_days * 24) + 1):
        now = hour * 3600.0
        returned = back is not None and now >= back
        last_seen = now if returned else min(now, departed)
        confirmed = None if returned else inactivity_churn_ts(last_seen, now, settings=S)
        if confirmed is not None:
            resolved = resolve_on_churn([s], confirmed, settings=S, departed_at=last_seen)
            break
        resolved, _ = resolve_by_time([s], now, settings=S, last_seen=last_seen)
        if resolved:
            break
    assert resolved, "snapshot still pending at its TTL"
    assert resolved[0][1] == expected


def test_snapshots_do_not_see_the_future() -> None:
    live = {"recency_days": 1.0, "events_7d": 12.0}
    s = take_snapshot("u1", live, taken_at=3 * DAY, raw=0.1, risk=0.1)
    live["recency_days"] = 20.0
    live["events_7d"] = 0.0
    resolved = resolve_on_churn([s], 10 * DAY, settings=S)
    assert resolved[0][0].features == {"recency_days": 1.0, "events_7d": 12.0}
    assert resolved[0][1] == 1


def test_snapshot_round_trips_through_a_dict() -> None:
    s = snap(3, recency_days=2.0)
    assert Snapshot.from_dict(s.to_dict()) == s

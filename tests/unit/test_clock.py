"""The clock abstraction and local calendar days."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from hypothesis import given
from hypothesis import strategies as st

from services.common import clock as clock_module
from services.common.clock import (
    Clock,
    EventTimeClock,
    ManualClock,
    WallClock,
    crossed_day_boundary,
    day_index,
)

UTC_1530 = datetime(2026, 1, 1, 15, 30, tzinfo=UTC).timestamp()  # 23:30 in Shanghai


def _read(clock: Clock) -> float:
    return clock.now()


def test_every_clock_satisfies_the_protocol() -> None:
    assert abs(_read(WallClock()) - time.time()) < 5
    assert _read(ManualClock(42.0)) == 42.0
    assert _read(EventTimeClock(start=7.0)) == 7.0


def test_manual_clock_moves_only_when_told() -> None:
    clock = ManualClock(100.0)
    assert clock.now() == 100.0
    assert clock.advance(3600) == 3700.0
    clock.set(10.0)
    assert clock.now() == 10.0


def test_event_time_clock_is_a_watermark_behind_the_newest_event() -> None:
    clock = EventTimeClock(allowed_lateness_s=3600)
    assert clock.observe(10_000) == 6_400
    assert clock.observe(9_000) == 6_400  # an older event does not move it
    assert clock.observe(20_000) == 16_400
    assert clock.now() == 16_400


@given(st.lists(st.floats(min_value=0, max_value=4e9), min_size=1, max_size=50))
def test_event_time_clock_never_goes_backwards(times: list[float]) -> None:
    clock = EventTimeClock(allowed_lateness_s=172_800)
    seen = []
    for ts in times:
        seen.append(clock.observe(ts))
    assert seen == sorted(seen)
    assert clock.now() == max(0.0, max(times) - 172_800)


def test_day_index_counts_days_since_the_epoch_in_utc() -> None:
    assert day_index(0.0, None) == 0
    assert day_index(86_399.9, None) == 0
    assert day_index(86_400.0, "UTC") == 1
    assert day_index(UTC_1530, None) == datetime(2026, 1, 1).toordinal() - 719_163


def test_2330_in_shanghai_is_the_same_day_and_0030_the_next() -> None:
    assert day_index(UTC_1530, "Asia/Shanghai") == day_index(UTC_1530, None)
    one_hour_later = UTC_1530 + 3600  # 00:30 on 2 Jan in Shanghai, 16:30 on 1 Jan in UTC
    assert day_index(one_hour_later, "Asia/Shanghai") == day_index(UTC_1530, None) + 1
    assert crossed_day_boundary(UTC_1530, one_hour_later, "Asia/Shanghai")
    assert not crossed_day_boundary(UTC_1530, one_hour_later, "UTC")


def test_zones_west_of_utc_are_a_day_behind_in_the_evening() -> None:
    ts = datetime(2026, 7, 2, 2, 0, tzinfo=UTC).timestamp()  # 22:00 on 1 July in New York
    assert day_index(ts, "America/New_York") == day_index(ts, None) - 1


def test_daylight_saving_change_keeps_local_days() -> None:
    # Berlin springs forward on 29 March 2026; 23:30 local is 21:30 UTC that night.
    ts = datetime(2026, 3, 29, 21, 30, tzinfo=UTC).timestamp()
    local = datetime(2026, 3, 29).toordinal() - 719_163
    assert day_index(ts, "Europe/Berlin") == local
    assert day_index(ts + 3600, "Europe/Berlin") == local + 1


def test_unknown_or_malformed_zones_fall_back_to_utc() -> None:
    for tz in ("Mars/Olympus_Mons", "", "../../etc/passwd", "Not A Zone"):
        assert day_index(UTC_1530 + 3600, tz) == day_index(UTC_1530 + 3600, None)


def test_zone_objects_and_the_days_of_quarter_hours_are_cached() -> None:
    clock_module._zone.cache_clear()
    clock_module._local_day.cache_clear()
    for k in range(100):
        day_index(UTC_1530 + k, "Asia/Shanghai")  # one quarter hour
    assert clock_module._zone.cache_info().misses == 1
    assert clock_module._local_day.cache_info().hits == 99


def test_crossing_is_forward_only() -> None:
    assert not crossed_day_boundary(UTC_1530 + 86_400, UTC_1530, None)
    assert crossed_day_boundary(UTC_1530, UTC_1530 + 86_400, None)


ZONES = ["Europe/Berlin", "America/St_Johns", "Asia/Kathmandu", "Australia/Lord_Howe",
         "Pacific/Chatham", "America/Sao_Paulo", "Africa/Monrovia", "Asia/Kolkata"]  # fmt: skip


@given(
    st.floats(min_value=-2e9, max_value=4e9, allow_nan=False),
    st.sampled_from(ZONES),
)
def test_the_cached_local_day_is_the_zone_conversion_of_that_very_time(ts: float, tz: str) -> None:
    # Half-hour, 45-minute and historic local-mean-time zones, DST included.
    from zoneinfo import ZoneInfo

    expected = datetime.fromtimestamp(ts, ZoneInfo(tz)).toordinal() - 719163
    assert clock_module.day_index(ts, tz) == expected

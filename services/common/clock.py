"""One notion of "now" for features, timers and labels.

Live workers use :class:`WallClock`. Replays use :class:`EventTimeClock`, whose
time is a watermark driven by the events themselves, so a year of history
replays in minutes and gives the same features, timers and labels as live.
Tests use :class:`ManualClock`.

Days are the user's local calendar days: a user in Shanghai who is active at
23:30 local time was active "today" for them, even though it is still
"yesterday" in UTC (and the other way round).

>>> day_index(0.0, None)
0
>>> day_index(16 * 3600.0, "Asia/Shanghai")  # 00:00 on 2 Jan 1970 in UTC+8
1
"""

from __future__ import annotations

import time
from datetime import datetime
from functools import lru_cache
from typing import Protocol
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

__all__ = [
    "Clock",
    "EventTimeClock",
    "ManualClock",
    "WallClock",
    "crossed_day_boundary",
    "day_index",
]

_SECONDS_PER_DAY = 86_400
# date(1970, 1, 1).toordinal(): turns a proleptic ordinal into days since the epoch.
_EPOCH_ORDINAL = 719_163


class Clock(Protocol):
    """Anything that tells the current time as UNIX seconds."""

    def now(self) -> float: ...


class WallClock:
    """The system clock (live mode).

    >>> WallClock().now() > 1.7e9
    True
    """

    def now(self) -> float:
        return time.time()


class EventTimeClock:
    """Replay clock: a watermark at the newest event time minus the allowed lateness.

    The watermark never goes backwards, so timers driven by it fire once, in
    order, and events up to ``allowed_lateness_s`` late are still applied
    before anything that depends on their day is finalised.

    >>> clock = EventTimeClock(allowed_lateness_s=10.0)
    >>> clock.observe(100.0)
    90.0
    >>> clock.observe(50.0)  # an old event does not move time back
    90.0
    >>> clock.now()
    90.0
    """

    __slots__ = ("_watermark", "allowed_lateness_s")

    def __init__(self, *, allowed_lateness_s: float = 0.0, start: float = 0.0) -> None:
        if allowed_lateness_s < 0:
            raise ValueError("allowed_lateness_s must be >= 0")
        self.allowed_lateness_s = allowed_lateness_s
        self._watermark = start

    def observe(self, ts: float) -> float:
        """Advance the watermark with one event time; return the watermark."""
        candidate = ts - self.allowed_lateness_s
        if candidate > self._watermark:
            self._watermark = candidate
        return self._watermark

    def now(self) -> float:
        return self._watermark


class ManualClock:
    """A clock that only moves when told to (tests).

    >>> clock = ManualClock(1000.0)
    >>> clock.advance(60)
    1060.0
    >>> clock.set(5.0)
    >>> clock.now()
    5.0
    """

    __slots__ = ("_now",)

    def __init__(self, start: float = 0.0) -> None:
        self._now = float(start)

    def now(self) -> float:
        return self._now

    def set(self, ts: float) -> None:
        self._now = float(ts)

    def advance(self, seconds: float) -> float:
        self._now += seconds
        return self._now


@lru_cache(maxsize=1024)
def _zone(tz: str) -> ZoneInfo | None:
    # Cached because building a ZoneInfo per event would dominate the hot path;
    # bounded because time zone names come from untrusted event payloads.
    try:
        return ZoneInfo(tz)
    except (ZoneInfoNotFoundError, ValueError, OSError):
        return None


def day_index(ts: float, tz: str | None) -> int:
    """The local calendar day of ``ts`` in ``tz``, as days since 1970-01-01.

    Unknown or missing zones fall back to UTC rather than failing, because a
    wrong zone should cost at most a day boundary, never an event.

    >>> ts = 1767281400.0  # 2026-01-01T15:30:00Z = 23:30 in Shanghai
    >>> day_index(ts, "Asia/Shanghai") == day_index(ts, "UTC")
    True
    >>> day_index(ts + 3600, "Asia/Shanghai") - day_index(ts + 3600, "UTC")
    1
    >>> day_index(ts, "Mars/Olympus_Mons") == day_index(ts, None)
    True
    """
    if tz is None or tz == "UTC" or not isinstance(tz, str):
        return int(ts // _SECONDS_PER_DAY)
    if ts < _QUARTER_HOURS_SINCE:
        zone = _zone(tz)
        if zone is None:
            return int(ts // _SECONDS_PER_DAY)
        return datetime.fromtimestamp(ts, zone).toordinal() - _EPOCH_ORDINAL
    return _local_day(int(ts // _QUARTER_HOUR), tz)


# Since 1973 every UTC offset in the tz database is a whole number of quarter hours
# (Nepal's +05:45 too; before, some zones kept local mean times like -0:44:30), so a
# local date cannot change inside a UTC quarter hour: the day of a quarter hour is
# cached, since converting one time is ~2 µs on the hot path.
_QUARTER_HOUR = 900
_QUARTER_HOURS_SINCE = 94_694_400  # 1973-01-01T00:00:00Z


@lru_cache(maxsize=8192)
def _local_day(quarter: int, tz: str) -> int:
    zone = _zone(tz)
    if zone is None:
        return (quarter * _QUARTER_HOUR) // _SECONDS_PER_DAY
    return datetime.fromtimestamp(quarter * _QUARTER_HOUR, zone).toordinal() - _EPOCH_ORDINAL


def crossed_day_boundary(prev_ts: float, now_ts: float, tz: str | None) -> bool:
    """True when ``now_ts`` falls on a later local day than ``prev_ts``.

    >>> crossed_day_boundary(1767281400.0, 1767281400.0 + 3600, "Asia/Shanghai")
    True
    >>> crossed_day_boundary(1767281400.0, 1767281400.0 + 3600, "UTC")
    False
    """
    return day_index(now_ts, tz) > day_index(prev_ts, tz)

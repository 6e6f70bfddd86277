"""Guardrails: control group, consent, preference, contacts, cap, quiet hours, outcomes."""

from __future__ import annotations

from datetime import datetime
from typing import Any
from zoneinfo import ZoneInfo

import pytest
from hypothesis import given
from hypothesis import strategies as st

from services.notifier.core.guardrails import (
    ConsentRecord,
    Decision,
    frequency_ok,
    in_control_group,
    order_by_preference,
    plan_actions,
    quiet_hours_end,
    won_back,
)
from services.notifier.core.playbook_book import Action, Playbook
from services.notifier.core.playbook_defaults import Defaults

DAY = 86400.0
NY, TOKYO = ZoneInfo("America/New_York"), ZoneInfo("Asia/Tokyo")
ALL_IN = ConsentRecord(channels={"email": True, "sms": True, "push": True})
ALL_CONTACTS = {"email": True, "sms": True, "push": True}
NO_CONTROL = Defaults(control_share=0.0)


def _ts(zone: ZoneInfo, year: int, month: int, day: int, hour: int, minute: int) -> float:
    return datetime(year, month, day, hour, minute, tzinfo=zone).timestamp()


# 14:00 in New York (19:00 UTC), outside quiet hours everywhere we use it below.
NOON_NY = _ts(NY, 2026, 1, 15, 14, 0)


def _alert(tz: str | None = "America/New_York", user_id: str = "u1") -> dict[str, Any]:
    return {"alert_id": "a1", "user_id": user_id, "band": "critical", "timezone": tz}


def _playbook(*actions: tuple[str, str]) -> Playbook:
    return Playbook(
        name="test",
        actions=tuple(Action(channel=ch, template=t, offer="OFF10") for ch, t in actions),  # type: ignore[arg-type]
    )


def _plan(playbook: Playbook, **overrides: Any) -> list[Decision]:
    kwargs: dict[str, Any] = {
        "contacts": ALL_CONTACTS,
        "consent": ALL_IN,
        "recent_sends": [],
        "now": NOON_NY,
        "settings": NO_CONTROL,
    }
    kwargs.update(overrides)
    alert = kwargs.pop("alert", _alert())
    return plan_actions(alert, playbook, **kwargs)


def _summary(decisions: list[Decision]) -> list[tuple[str, str, str | None]]:
    return [(d.channel, d.status, d.reason) for d in decisions]


# -- control group ---------------------------------------------------------------------------


def test_control_share_is_close_to_ten_percent_and_stable() -> None:
    users = [f"user-{i}" for i in range(10_000)]
    first = [in_control_group(u, 0.1) for u in users]
    assert abs(sum(first) / len(users) - 0.1) < 0.01
    assert first == [in_control_group(u, 0.1) for u in users]
    assert first != [in_control_group(u, 0.1, salt="another-experiment") for u in users]


def test_control_users_get_one_control_decision_and_no_contact() -> None:
    user = next(f"u{i}" for i in range(1000) if in_control_group(f"u{i}", 0.1))
    decisions = _plan(
        _playbook(("webhook", "cs_handoff"), ("email", "personal_offer")),
        alert=_alert(user_id=user),
        settings=Defaults(control_share=0.1),
    )
    assert decisions == [Decision("none", None, None, "control", "control group")]


# -- consent, preference, contacts -----------------------------------------------------------


@pytest.mark.parametrize("sms_consent", [{}, {"sms": False}])
def test_no_consent_or_opt_out_suppresses(sms_consent: dict[str, bool]) -> None:
    consent = ConsentRecord(channels={"email": True} | sms_consent)
    decisions = _plan(
        _playbook(("sms", "offer_reminder"), ("email", "coupon_offer")), consent=consent
    )
    assert _summary(decisions) == [
        ("sms", "suppressed", "no consent for sms"),
        ("email", "send", None),
    ]


def test_preferred_channel_goes_first() -> None:
    consent = ConsentRecord(channels=ALL_IN.channels, preferred="sms")
    decisions = _plan(
        _playbook(("email", "coupon_offer"), ("sms", "offer_reminder")), consent=consent
    )
    assert [d.channel for d in decisions] == ["sms", "email"]
    acts = _playbook(("push", "nudge"), ("email", "x"), ("push", "guide")).actions
    assert [a.template for a in order_by_preference(acts, "push")] == ["nudge", "guide", "x"]


def test_missing_contact_falls_through_to_next_action() -> None:
    decisions = _plan(
        _playbook(("push", "welcome_guide"), ("email", "coupon_offer")),
        contacts={"email": True, "push": False},
    )
    assert _summary(decisions) == [
        ("push", "suppressed", "no contact for push"),
        ("email", "send", None),
    ]
    assert decisions[1].template == "coupon_offer" and decisions[1].offer == "OFF10"


def test_webhook_hand_off_needs_no_user_consent() -> None:
    decisions = _plan(_playbook(("webhook", "cs_handoff")), consent=ConsentRecord())
    assert _summary(decisions) == [("webhook", "send", None)]
    off = _plan(_playbook(("webhook", "cs_handoff")), contacts={"webhook": False})
    assert _summary(off) == [("webhook", "suppressed", "no contact for webhook")]


# -- frequency cap ---------------------------------------------------------------------------


def test_frequency_cap_suppresses_user_contacts_but_not_hand_off() -> None:
    recent = [NOON_NY - 1 * DAY, NOON_NY - 3 * DAY, NOON_NY - 6 * DAY]
    decisions = _plan(
        _playbook(("webhook", "cs_handoff"), ("email", "personal_offer")), recent_sends=recent
    )
    assert _summary(decisions) == [
        ("webhook", "send", None),
        ("email", "suppressed", "frequency cap: 3 in 7 days"),
    ]


def test_old_sends_fall_out_of_the_window_and_a_plan_cannot_overbook() -> None:
    recent = [NOON_NY - 8 * DAY, NOON_NY - 2 * DAY, NOON_NY - 1 * DAY]
    decisions = _plan(_playbook(("email", "a"), ("push", "b")), recent_sends=recent)
    assert _summary(decisions) == [
        ("email", "send", None),
        ("push", "suppressed", "frequency cap: 3 in 7 days"),
    ]


def test_frequency_ok_counts_scheduled_contacts() -> None:
    assert frequency_ok([], 0.0, cap=1, window_s=DAY)
    assert not frequency_ok([DAY], 0.0, cap=1, window_s=DAY)


# -- quiet hours -----------------------------------------------------------------------------


def test_late_evening_in_new_york_defers_to_eight_next_morning() -> None:
    now = _ts(NY, 2026, 1, 15, 22, 30)
    decisions = _plan(_playbook(("webhook", "cs_handoff"), ("email", "personal_offer")), now=now)
    assert _summary(decisions) == [
        ("webhook", "send", None),
        ("email", "defer", "quiet hours until 08:00 America/New_York"),
    ]
    assert decisions[1].not_before == _ts(NY, 2026, 1, 16, 8, 0)
    # The very same instant is 12:30 in Tokyo: not quiet, send now.
    tokyo = _plan(_playbook(("email", "personal_offer")), now=now, alert=_alert("Asia/Tokyo"))
    assert _summary(tokyo) == [("email", "send", None)]
    assert quiet_hours_end(now, "Asia/Tokyo") is None


def test_quiet_hours_after_midnight_end_the_same_morning() -> None:
    now = _ts(TOKYO, 2026, 1, 16, 2, 15)
    assert quiet_hours_end(now, "Asia/Tokyo") == _ts(TOKYO, 2026, 1, 16, 8, 0)
    assert quiet_hours_end(_ts(TOKYO, 2026, 1, 16, 8, 0), "Asia/Tokyo") is None
    assert quiet_hours_end(_ts(TOKYO, 2026, 1, 16, 21, 0), "Asia/Tokyo") is not None


@pytest.mark.parametrize(
    ("evening", "hours_left"),
    [((2026, 3, 7), 8.5), ((2026, 10, 31), 10.5)],  # spring forward / fall back nights
)
def test_dst_night(evening: tuple[int, int, int], hours_left: float) -> None:
    now = _ts(NY, *evening, 22, 30)
    end = quiet_hours_end(now, "America/New_York")
    assert end is not None and (end - now) / 3600 == hours_left
    local_end = datetime.fromtimestamp(end, NY)
    assert (local_end.hour, local_end.minute) == (8, 0)


def test_quiet_window_that_does_not_cross_midnight() -> None:
    lunch = _ts(NY, 2026, 6, 1, 12, 30)
    assert quiet_hours_end(lunch, "America/New_York", start="12:00", end="14:00") == _ts(
        NY, 2026, 6, 1, 14, 0
    )
    assert quiet_hours_end(lunch, "America/New_York", start="13:00", end="14:00") is None
    assert quiet_hours_end(lunch, "America/New_York", start="08:00", end="08:00") is None


def test_quiet_end_skipped_by_dst_uses_the_offset_before_the_change() -> None:
    now = _ts(NY, 2026, 3, 8, 1, 30)  # 01:30 EST; 02:00-03:00 does not exist that night
    end = quiet_hours_end(now, "America/New_York", start="01:00", end="02:30")
    assert end == now + 3600  # 02:30 EST == 03:30 EDT


@given(
    ts=st.floats(min_value=1.6e9, max_value=2.0e9),
    tz=st.sampled_from(["America/New_York", "Asia/Tokyo", "Europe/London", "Australia/Sydney"]),
)
def test_quiet_hours_end_property(ts: float, tz: str) -> None:
    end = quiet_hours_end(ts, tz)
    local = datetime.fromtimestamp(ts, ZoneInfo(tz))
    inside = local.hour >= 21 or local.hour < 8
    assert (end is not None) == inside
    if end is not None:
        assert ts < end <= ts + 12 * 3600
        local_end = datetime.fromtimestamp(end, ZoneInfo(tz))
        assert (local_end.hour, local_end.minute, local_end.second) == (8, 0, 0)


def test_delayed_action_is_deferred_and_checked_against_quiet_hours_at_its_time() -> None:
    playbook = Playbook(
        name="t",
        actions=(
            Action(channel="sms", template="r", delay="2h"),
            Action(channel="push", template="n", delay="8h"),
        ),
    )
    decisions = _plan(playbook)
    assert _summary(decisions) == [
        ("sms", "defer", "delay 2h"),
        ("push", "defer", "quiet hours until 08:00 America/New_York"),
    ]
    assert decisions[0].not_before == NOON_NY + 2 * 3600
    assert decisions[1].not_before == _ts(NY, 2026, 1, 16, 8, 0)


def test_unknown_or_missing_zone_uses_the_default() -> None:
    now = _ts(ZoneInfo("UTC"), 2026, 1, 15, 23, 0)
    for tz in (None, "Mars/Olympus_Mons"):
        decisions = _plan(_playbook(("email", "x")), now=now, alert=_alert(tz))
        assert _summary(decisions) == [("email", "defer", "quiet hours until 08:00 UTC")]


# -- outcomes --------------------------------------------------------------------------------


def test_won_back_window() -> None:
    assert won_back(0.0, 14 * DAY, window_days=14)
    assert not won_back(0.0, 14 * DAY + 1, window_days=14)
    assert not won_back(100.0, 50.0, window_days=14)
    assert not won_back(0.0, None, window_days=14)

"""Guardrails: pure decisions on who may be contacted, on which channel, and when.

``plan_actions`` applies them in a fixed order to one alert's playbook: control
group, consent, contact, frequency cap, quiet hours. Webhook actions are the
customer-service hand-off, not a message to the user, so consent, the cap and
quiet hours do not apply to them. Times are UNIX seconds.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, time, timedelta
from typing import Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from services.notifier.core.playbook_book import Action, Playbook
from services.notifier.core.playbook_defaults import Defaults, FrequencyCap

Status = Literal["send", "defer", "suppressed", "control"]
_DAY_S = 86400.0
# Final statuses of an action that did not contact the user: a deferred one leaves the
# cap window it was scheduled into.
UNSCHEDULED = ("suppressed", "failed")


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one action; ``channel`` is "none" for a control-group hold-out."""

    channel: str
    template: str | None
    offer: str | None
    status: Status
    reason: str | None = None
    not_before: float | None = None


@dataclass(frozen=True, slots=True)
class ConsentRecord:
    """Per-channel consent: True opted in, False opted out, absent never asked.

    >>> c = ConsentRecord(channels={"email": True, "sms": False}, preferred="email")
    >>> c.allows("email"), c.allows("sms"), c.allows("push")
    (True, False, False)
    """

    channels: Mapping[str, bool] = field(default_factory=dict)
    preferred: str | None = None

    def allows(self, channel: str) -> bool:
        """Only an explicit opt-in allows marketing contact on a channel."""
        return self.channels.get(channel) is True


def in_control_group(user_id: str, share: float, *, salt: str = "churnwatch-control-v1") -> bool:
    """Stable hold-out: blake2b(salt + user_id) mapped to [0, 1) and compared to ``share``.

    >>> in_control_group("u42", 0.1) == in_control_group("u42", 0.1)
    True
    >>> in_control_group("u42", 0.0), in_control_group("u42", 1.0)
    (False, True)
    """
    digest = hashlib.blake2b((salt + user_id).encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64 < share


def order_by_preference(actions: Sequence[Action], preferred: str | None) -> list[Action]:
    """Actions on the preferred channel first; otherwise the playbook's order is kept.

    >>> acts = [Action(channel="push", template="nudge"), Action(channel="email", template="x")]
    >>> [a.channel for a in order_by_preference(acts, "email")]
    ['email', 'push']
    >>> [a.channel for a in order_by_preference(acts, None)]
    ['push', 'email']
    """
    return sorted(actions, key=lambda a: a.channel != preferred)


def frequency_ok(
    sent_timestamps: Iterable[float], now: float, *, cap: int, window_s: float
) -> bool:
    """True while fewer than ``cap`` contacts fall after ``now - window_s``.

    Contacts scheduled for later count too, so a plan cannot overbook the window.

    >>> day = 86400.0
    >>> frequency_ok([0.0, day, 2 * day], 3 * day, cap=3, window_s=7 * day)
    False
    >>> frequency_ok([0.0, day, 2 * day], 8 * day, cap=3, window_s=7 * day)
    True
    """
    return sum(1 for ts in sent_timestamps if ts > now - window_s) < cap


def over_cap(sends: Iterable[float], now: float, cap: FrequencyCap) -> str | None:
    """Why one more contact at ``now`` is refused by ``cap``, or None if it is not.

    >>> over_cap([0.0, 1.0, 2.0], 3.0, FrequencyCap(max_contacts=3, window_days=7))
    'frequency cap: 3 in 7 days'
    >>> over_cap([0.0], 3.0, FrequencyCap(max_contacts=3, window_days=7)) is None
    True
    """
    if frequency_ok(sends, now, cap=cap.max_contacts, window_s=cap.window_days * _DAY_S):
        return None
    return f"frequency cap: {cap.max_contacts} in {cap.window_days:g} days"


def quiet_hours_end(
    now_ts: float, tz: str, *, start: str = "21:00", end: str = "08:00"
) -> float | None:
    """When quiet hours in zone ``tz`` end, or None if ``now_ts`` is outside them.

    The window may cross midnight and wall-clock times follow DST; an end time
    that DST skips is read with the offset in force before the change (PEP 495).

    >>> quiet_hours_end(1768534200.0, "America/New_York")  # 22:30 EST, Jan 15 2026
    1768568400.0
    >>> quiet_hours_end(1768534200.0, "Asia/Tokyo") is None  # 12:30 JST
    True
    """
    zone = ZoneInfo(tz)
    local = datetime.fromtimestamp(now_ts, zone)
    t0, t1, now_t = time.fromisoformat(start), time.fromisoformat(end), local.time()
    if t0 == t1:
        return None
    crosses_midnight = t0 > t1
    quiet = (now_t >= t0 or now_t < t1) if crosses_midnight else (t0 <= now_t < t1)
    if not quiet:
        return None
    day = local.date() + timedelta(days=1 if crosses_midnight and now_t >= t0 else 0)
    return datetime.combine(day, t1, tzinfo=zone).timestamp()


def won_back(action_ts: float, activity_ts_after: float | None, *, window_days: float) -> bool:
    """True when the first activity after the action came within ``window_days``.

    >>> won_back(0.0, 3 * 86400.0, window_days=14), won_back(0.0, 15 * 86400.0, window_days=14)
    (True, False)
    >>> won_back(0.0, None, window_days=14)
    False
    """
    if activity_ts_after is None:
        return False
    return action_ts < activity_ts_after <= action_ts + window_days * _DAY_S


def plan_actions(
    alert: Mapping[str, Any],
    playbook: Playbook,
    *,
    contacts: Mapping[str, bool],
    consent: ConsentRecord,
    recent_sends: Iterable[float],
    now: float,
    settings: Defaults,
) -> list[Decision]:
    """One Decision per playbook action (a single "control" one for hold-out users).

    ``contacts`` says whether the directory holds an address for each channel
    (a missing webhook entry means the hand-off is available); ``recent_sends``
    are the user's contacts, sent or scheduled. Actions with a delay are
    deferred to ``now + delay``; quiet hours are judged at that time.
    """
    if in_control_group(str(alert["user_id"]), settings.control_share, salt=settings.control_salt):
        return [Decision("none", None, None, "control", "control group")]
    tz = zone_name(alert.get("timezone"), settings.default_timezone)
    sends = list(recent_sends)
    decisions = []
    for action in order_by_preference(playbook.actions, consent.preferred):
        decision = _decide(
            action,
            contacts=contacts,
            consent=consent,
            sends=sends,
            now=now,
            tz=tz,
            settings=settings,
        )
        if decision.channel != "webhook" and decision.status in ("send", "defer"):
            sends.append(decision.not_before or now)
        decisions.append(decision)
    return decisions


def _decide(
    action: Action,
    *,
    contacts: Mapping[str, bool],
    consent: ConsentRecord,
    sends: list[float],
    now: float,
    tz: str,
    settings: Defaults,
) -> Decision:
    ch, cap, quiet = action.channel, settings.frequency_cap, settings.quiet_hours
    to_user = ch != "webhook"

    def decision(status: Status, reason: str | None = None, at: float | None = None) -> Decision:
        return Decision(ch, action.template, action.offer, status, reason, at)

    if to_user and not consent.allows(ch):
        return decision("suppressed", f"no consent for {ch}")
    if not contacts.get(ch, not to_user):
        return decision("suppressed", f"no contact for {ch}")
    if to_user and (capped := over_cap(sends, now, cap)):
        return decision("suppressed", capped)
    due = now + action.delay_s
    quiet_end = quiet_hours_end(due, tz, start=quiet.start, end=quiet.end) if to_user else None
    if quiet_end is not None:
        return decision("defer", f"quiet hours until {quiet.end} {tz}", quiet_end)
    if due > now:
        return decision("defer", f"delay {action.delay}", due)
    return decision("send")


def zone_name(name: Any, default: str) -> str:
    """The alert's IANA zone, or ``default`` when it is missing or unknown."""
    if isinstance(name, str) and name:
        try:
            ZoneInfo(name)
            return name
        except (ZoneInfoNotFoundError, ValueError):
            pass
    return default

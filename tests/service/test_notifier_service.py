"""The Notifier service with the in-memory directory and recording channels.

Plan → guard → render → deliver → record, with every port faked: consent,
fall-through, frequency cap, quiet hours across a time-zone boundary (deferred,
then sent by ``run_deferred``), control group, idempotency and the order of the
high-value hand-off. Times are fixed; nothing here reads the wall clock.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from prometheus_client import REGISTRY

from services.common.errors import DeliveryFailed, StoreUnavailable
from services.common.messages import make_action_id
from services.notifier.adapters.memory_directory import MemoryDirectory
from services.notifier.app import _until_stored
from services.notifier.channels.base import Message, RetryPolicy
from services.notifier.core.guardrails import in_control_group
from services.notifier.core.playbook_book import PlaybookBook
from services.notifier.core.playbook_defaults import FrequencyCap
from services.notifier.core.playbooks import load_playbooks
from services.notifier.core.templates import Brand, Renderer
from services.notifier.service import Notifier
from tests.notifier_data import sample_alert

T = TypeVar("T")
LA = ZoneInfo("America/Los_Angeles")
# 2026-01-15 14:00 in Los Angeles (22:00 UTC): daytime for the users below.
NOW = datetime(2026, 1, 15, 14, 0, tzinfo=LA).timestamp()
BOOK = load_playbooks()
SHARE, SALT = BOOK.defaults.control_share, BOOK.defaults.control_salt


def run(coro: Coroutine[Any, Any, T]) -> T:
    return asyncio.run(coro)


def treated_user(prefix: str) -> str:
    n = 0
    while in_control_group(f"{prefix}-{n}", SHARE, salt=SALT):
        n += 1
    return f"{prefix}-{n}"


def control_user(prefix: str) -> str:
    n = 0
    while not in_control_group(f"{prefix}-{n}", SHARE, salt=SALT):
        n += 1
    return f"{prefix}-{n}"


def make_alert(
    user_id: str, *, tier: str = "medium", band: str = "high", bucket: int = 1
) -> dict[str, Any]:
    return sample_alert(
        user_id,
        tier=tier,
        band=band,
        bucket=bucket,
        occurred_at=datetime.fromtimestamp(NOW, UTC),
        timezone="Europe/London",
    )


class Recorder:
    """Every channel appends to one shared log, so the order across channels is visible."""

    def __init__(self) -> None:
        self.sent: list[tuple[str, Message]] = []
        self.failing: set[str] = set()

    def channel(self, name: str) -> RecordingChannel:
        return RecordingChannel(name, self)

    def on(self, channel: str) -> list[Message]:
        return [m for ch, m in self.sent if ch == channel]


class RecordingChannel:
    def __init__(self, name: str, recorder: Recorder) -> None:
        self.name = name
        self.recorder = recorder
        self.attempts = 0

    async def send(self, message: Message) -> None:
        self.attempts += 1
        if self.name in self.recorder.failing:
            raise DeliveryFailed(f"{self.name}: provider answered 500")
        self.recorder.sent.append((self.name, message))


class Rig:
    def __init__(self, book: PlaybookBook = BOOK) -> None:
        self.directory = MemoryDirectory(clock=lambda: NOW)
        self.recorder = Recorder()
        self.channels = {
            ch: self.recorder.channel(ch) for ch in ("email", "sms", "push", "webhook")
        }
        self.notifier = Notifier(
            book=book,
            directory=self.directory,
            channels=self.channels,
            renderer=Renderer(),
            brand=Brand(name="Acme", url="https://acme.example"),
            retry=RetryPolicy(attempts=3, base_s=0.001, cap_s=0.01),
        )

    def user(
        self,
        uid: str,
        *,
        tz: str = "America/Los_Angeles",
        preferred: str | None = None,
        **consent: bool,
    ) -> str:
        self.directory.set_contact(uid, email=f"{uid}@example.test", timezone=tz, locale="en")
        self.directory.set_consent(uid, preferred=preferred, **consent)
        return uid

    def handle(self, alert: dict[str, Any], *, now: float = NOW) -> list[tuple[str, str, Any]]:
        actions = run(self.notifier.handle_alert(alert, now=now))
        return [(a.channel, a.status, a.reason) for a in actions]


def test_consent_is_honoured_before_any_send() -> None:
    rig = Rig()
    never_asked = rig.user(treated_user("never-asked"))
    opted_out = rig.user(treated_user("opted-out"), email=False)

    assert rig.handle(make_alert(never_asked)) == [("email", "suppressed", "no consent for email")]
    assert rig.handle(make_alert(opted_out)) == [("email", "suppressed", "no consent for email")]
    assert rig.recorder.sent == []
    assert rig.channels["email"].attempts == 0


def test_missing_contact_falls_through_to_the_next_action() -> None:
    book = PlaybookBook.model_validate(
        {
            "defaults": BOOK.defaults.model_dump(),
            "playbooks": [
                {
                    "name": "sms-then-email",
                    "actions": [
                        {"channel": "sms", "template": "offer_reminder", "offer": "SAVE15"},
                        {"channel": "email", "template": "coupon_offer", "offer": "SAVE15"},
                    ],
                }
            ],
        }
    )
    rig = Rig(book)
    uid = rig.user(treated_user("no-phone"), sms=True, email=True)  # consent, but no phone

    assert rig.handle(make_alert(uid)) == [
        ("sms", "suppressed", "no contact for sms"),
        ("email", "sent", None),
    ]
    assert [ch for ch, _ in rig.recorder.sent] == ["email"]
    history = rig.directory.actions[uid]
    assert {(a["channel"], a["status"], a["reason"]) for a in history} == {
        ("sms", "suppressed", "no contact for sms"),
        ("email", "sent", None),
    }


def test_frequency_cap_stops_the_fourth_contact_in_the_window() -> None:
    rig = Rig()
    uid = rig.user(treated_user("capped"), email=True)
    cap = BOOK.defaults.frequency_cap.max_contacts

    for bucket in range(cap):
        assert rig.handle(make_alert(uid, bucket=bucket)) == [("email", "sent", None)]
    [(channel, status, reason)] = rig.handle(make_alert(uid, bucket=cap))

    assert (channel, status) == ("email", "suppressed")
    assert reason.startswith("frequency cap")
    assert len(rig.recorder.on("email")) == cap
    # Once the window has passed, the user may be contacted again.
    later = NOW + BOOK.defaults.frequency_cap.window_days * 86400 + 1
    assert rig.handle(make_alert(uid, bucket=cap + 1), now=later) == [("email", "sent", None)]


def test_quiet_hours_across_a_time_zone_boundary_defer_then_send() -> None:
    rig = Rig()
    uid = rig.user(treated_user("night-owl"), tz="America/Los_Angeles", email=True)
    # 05:30 UTC on Jan 16 is 21:30 on Jan 15 in Los Angeles: already tomorrow in UTC
    # (and daytime in the alert's own Europe/London), but quiet hours for the user.
    now = datetime(2026, 1, 16, 5, 30, tzinfo=UTC).timestamp()
    ends = datetime(2026, 1, 16, 8, 0, tzinfo=LA).timestamp()  # 16:00 UTC

    [(channel, status, reason)] = rig.handle(make_alert(uid), now=now)

    assert (channel, status) == ("email", "deferred")
    assert "quiet hours" in reason and "America/Los_Angeles" in reason
    assert rig.recorder.sent == []
    assert [ts for ts, _ in rig.directory.deferred] == [ends]
    assert run(rig.directory.due(ends - 1)) == []

    [job] = run(rig.directory.due(ends))
    action = run(rig.notifier.run_deferred(job, now=ends))

    assert (action.channel, action.status) == ("email", "sent")
    [mail] = rig.recorder.on("email")
    assert mail.to == f"{uid}@example.test"
    assert mail.idempotency_key == make_action_id(job["alert"]["alert_id"], "email")
    assert run(rig.directory.deferred_depth()) == 0


def test_deferred_action_is_not_sent_after_the_user_opted_out() -> None:
    rig = Rig()
    uid = rig.user(treated_user("changed-mind"), email=True)
    late_evening = datetime(2026, 1, 15, 22, 0, tzinfo=LA).timestamp()
    assert rig.handle(make_alert(uid), now=late_evening)[0][1] == "deferred"

    rig.directory.set_consent(uid, email=False)
    [job] = run(rig.directory.due(late_evening + 86400))
    action = run(rig.notifier.run_deferred(job, now=late_evening + 86400))

    assert (action.status, action.reason) == ("suppressed", "no consent for email")
    assert rig.recorder.sent == []
    assert rig.directory.sends[uid] == {}  # not a contact: out of the cap window


def capped_at_one() -> PlaybookBook:
    defaults = BOOK.defaults.model_copy(
        update={"frequency_cap": FrequencyCap(max_contacts=1, window_days=7)}
    )
    return BOOK.model_copy(update={"defaults": defaults})


def test_a_contact_deferred_for_one_alert_counts_against_the_cap_of_the_next() -> None:
    rig = Rig(capped_at_one())
    uid = rig.user(treated_user("two-alerts"), email=True)
    late_evening = datetime(2026, 1, 15, 22, 0, tzinfo=LA).timestamp()
    assert rig.handle(make_alert(uid, bucket=1), now=late_evening)[0][1] == "deferred"

    # A second alert an hour later: the morning's email already fills the cap of one.
    [(channel, status, reason)] = rig.handle(make_alert(uid, bucket=2), now=late_evening + 3600)
    assert (channel, status, reason) == ("email", "suppressed", "frequency cap: 1 in 7 days")

    # The deferred email itself still goes (its own place in the window is not a rival).
    [job] = run(rig.directory.due(late_evening + 86400))
    action = run(rig.notifier.run_deferred(job, now=late_evening + 86400))
    assert (action.channel, action.status) == ("email", "sent")
    assert len(rig.recorder.on("email")) == 1


def test_an_alert_planned_again_does_not_count_its_own_deferred_contact() -> None:
    """A redelivered alert, or one retried after a Redis error, is planned again: its
    deferred email keeps its place and is not capped by itself."""
    rig = Rig(capped_at_one())
    uid = rig.user(treated_user("redelivered"), email=True)
    late_evening = datetime(2026, 1, 15, 22, 0, tzinfo=LA).timestamp()
    alert = make_alert(uid)
    assert rig.handle(alert, now=late_evening)[0][1] == "deferred"
    assert rig.handle(alert, now=late_evening + 60)[0][1] == "deferred"

    [job] = run(rig.directory.due(late_evening + 86400))  # one job: the same, queued once
    action = run(rig.notifier.run_deferred(job, now=late_evening + 86400))
    assert (action.channel, action.status) == ("email", "sent")


def test_a_deferred_contact_is_capped_when_it_comes_due_and_leaves_the_window() -> None:
    rig = Rig(capped_at_one())
    uid = rig.user(treated_user("filled-meanwhile"), email=True)
    late_evening = datetime(2026, 1, 15, 22, 0, tzinfo=LA).timestamp()
    assert rig.handle(make_alert(uid), now=late_evening)[0][1] == "deferred"
    [job] = run(rig.directory.due(late_evening + 86400))
    # Meanwhile another contact filled the cap (another notifier, a hand-made send).
    rig.directory.sends[uid]["another-action"] = late_evening + 600

    action = run(rig.notifier.run_deferred(job, now=late_evening + 86400))

    assert (action.status, action.reason) == ("suppressed", "frequency cap: 1 in 7 days")
    assert rig.recorder.sent == []
    assert list(rig.directory.sends[uid]) == ["another-action"]  # the capped one left


def test_control_group_users_are_recorded_and_not_contacted() -> None:
    rig = Rig()
    uid = rig.user(control_user("held-out"), email=True, sms=True, push=True)

    actions = run(rig.notifier.handle_alert(make_alert(uid, tier="high", band="critical")))

    assert [(a.channel, a.status, a.reason) for a in actions] == [
        ("none", "control", "control group")
    ]
    assert rig.recorder.sent == []
    assert rig.directory.winback[uid]["group"] == "control"
    assert rig.directory.counters["winback:high-value-critical:control:treated"] == 1
    assert run(rig.directory.already_done(uid, actions[0].action_id)) == "control"


def test_the_same_alert_twice_sends_once() -> None:
    rig = Rig()
    uid = rig.user(treated_user("twice"), email=True)
    alert = make_alert(uid)

    first = rig.handle(alert)
    again = rig.handle(alert)

    assert first == [("email", "sent", None)]
    assert again == [("email", "sent", "already handled")]
    assert len(rig.recorder.on("email")) == 1


def test_a_redelivered_alert_whose_actions_were_published_publishes_nothing() -> None:
    rig = Rig()
    uid = rig.user(treated_user("published"), email=True)
    alert = make_alert(uid)

    first = rig.handle(alert)
    action_id = make_action_id(alert["alert_id"], "email")
    run(rig.directory.mark_published(uid, [action_id]))  # what the agent does after Kafka acks
    again = rig.handle(alert)

    assert first == [("email", "sent", None)]
    assert again == []  # nothing twice on winback-actions, nothing sent twice
    assert len(rig.recorder.on("email")) == 1


def test_failed_delivery_is_recorded_and_retried_on_redelivery() -> None:
    rig = Rig()
    uid = rig.user(treated_user("flaky"), email=True)
    alert = make_alert(uid)
    rig.recorder.failing.add("email")

    [(channel, status, reason)] = rig.handle(alert)

    assert (channel, status) == ("email", "failed")
    assert "500" in reason
    assert rig.channels["email"].attempts == 3  # every attempt of the policy
    rig.recorder.failing.clear()
    assert rig.handle(alert) == [("email", "sent", None)]  # a failure is not a done mark
    assert len(rig.recorder.on("email")) == 1


def test_high_value_critical_hands_off_first_then_emails_the_offer() -> None:
    rig = Rig()
    uid = rig.user(treated_user("vip"), email=True)  # no SMS consent

    alert = make_alert(uid, tier="high", band="critical")

    actions = rig.handle(alert)

    assert actions == [
        ("webhook", "sent", None),
        ("email", "sent", None),
        ("sms", "suppressed", "no consent for sms"),
    ]
    assert [ch for ch, _ in rig.recorder.sent] == ["webhook", "email"]
    [handoff] = rig.recorder.on("webhook")
    [mail] = rig.recorder.on("email")
    assert handoff.to == "retention"
    assert "EXCLUSIVE30" in handoff.text and "No visit for 12 days" in handoff.text
    assert "EXCLUSIVE30" in mail.text
    assert mail.html is not None and "EXCLUSIVE30" in mail.html
    assert f"{uid}@example.test" not in mail.text  # contact data never enters templates
    # The hand-off is not a contact: only the email counts against the cap.
    assert list(rig.directory.sends[uid]) == [make_action_id(alert["alert_id"], "email")]


def test_preferred_channel_moves_to_the_front() -> None:
    rig = Rig()
    uid = rig.user(treated_user("prefers"), email=True, preferred="email")

    actions = rig.handle(make_alert(uid, tier="high", band="critical"))

    assert [(ch, status) for ch, status, _ in actions[:2]] == [
        ("email", "sent"),
        ("webhook", "sent"),
    ]


def test_a_redis_error_is_counted_and_the_call_tried_again() -> None:
    """For ChurnwatchNotifierStoreErrors: a notifier stuck on Redis must show."""
    calls: list[int] = []

    async def flaky() -> str:
        calls.append(1)
        if len(calls) == 1:
            raise StoreUnavailable("redis: connection refused")
        return "stored"

    def errors() -> float:
        return REGISTRY.get_sample_value("churnwatch_notifier_store_errors_total") or 0.0

    before = errors()
    assert run(_until_stored(flaky)) == "stored"
    assert (len(calls), errors() - before) == (2, 1.0)


def erased_skips(source: str) -> float:
    labels = {"source": source}
    return REGISTRY.get_sample_value("churnwatch_notifier_erased_skips_total", labels) or 0.0


def test_an_alert_of_a_user_erased_since_is_dropped_unsent_and_unrecorded() -> None:
    rig = Rig()
    uid = rig.user(treated_user("erased"), email=True)
    rig.directory.erase(uid)  # the alert was raised before the erase, and comes after it
    before = erased_skips("alert")

    # High value and critical: the CS hand-off needs no consent and no address.
    assert rig.handle(make_alert(uid, tier="high", band="critical")) == []

    assert rig.recorder.sent == []
    assert (uid in rig.directory.actions, uid in rig.directory.done) == (False, False)
    assert erased_skips("alert") == before + 1


def test_a_deferred_contact_of_a_user_erased_while_it_waited_is_dropped() -> None:
    rig = Rig()
    uid = rig.user(treated_user("erased-later"), email=True)
    late_evening = datetime(2026, 1, 15, 22, 0, tzinfo=LA).timestamp()
    assert rig.handle(make_alert(uid), now=late_evening)[0][1] == "deferred"
    rig.directory.erase(uid)  # the job was claimed by the deferred timer already

    [job] = run(rig.directory.due(late_evening + 86400))
    assert run(rig.notifier.run_deferred(job, now=late_evening + 86400)) is None

    assert rig.recorder.sent == []
    assert (uid in rig.directory.actions, uid in rig.directory.sends) == (False, False)


class ErasedDuringSend(RecordingChannel):
    """The provider fails every attempt, and the user is erased while it does."""

    def __init__(self, recorder: Recorder, erase: Callable[[], None]) -> None:
        super().__init__("email", recorder)
        self.erase = erase

    async def send(self, message: Message) -> None:
        self.attempts += 1
        self.erase()
        raise DeliveryFailed(f"{self.name}: provider answered 500")


def test_a_user_erased_while_a_delivery_fails_leaves_no_failed_delivery() -> None:
    rig = Rig()
    uid = rig.user(treated_user("erased-midway"), email=True)
    channel = ErasedDuringSend(rig.recorder, lambda: rig.directory.erase(uid))
    rig.notifier.delivery.channels = {**rig.channels, "email": channel}
    before = erased_skips("in_flight")

    assert rig.handle(make_alert(uid)) == []

    assert channel.attempts == 1  # no retry once the user was erased
    assert rig.directory.failed == {}  # the alert, with its reasons, is not kept
    assert uid not in rig.directory.actions
    assert erased_skips("in_flight") == before + 1

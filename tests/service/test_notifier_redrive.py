"""Re-driving failed deliveries (``churnwatch notifier redrive``) with every port faked.

A provider fails every attempt → the delivery is kept as failed → the provider
comes back → a re-drive sends it once and publishes the action; a second
re-drive finds nothing. Also: a delivery that succeeded since is not sent
again, consent, the frequency cap and quiet hours are judged again, a delivery that fails again
stays for the next re-drive, filters and the dry run, and a claim held by
another re-drive. Times are fixed; nothing here reads the wall clock.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from services.common.messages import WinbackAction, make_action_id
from services.notifier.redrive import ERASED, Redriver
from services.notifier.redrive_report import RedriveFilter, RedriveSummary
from tests.service.test_notifier_service import (
    LA,
    NOW,
    Rig,
    capped_at_one,
    make_alert,
    run,
    treated_user,
)


class Sink:
    def __init__(self) -> None:
        self.published: list[WinbackAction] = []

    async def publish(self, actions: list[WinbackAction]) -> None:
        self.published += actions


def failed_once(rig: Rig, prefix: str, **consent: bool) -> tuple[str, dict[str, Any], str]:
    """A user whose e-mail failed after every retry; returns (user, alert, action id)."""
    uid = rig.user(treated_user(prefix), **(consent or {"email": True}))
    alert = make_alert(uid)
    rig.recorder.failing.add("email")
    assert [s for _, s, _ in rig.handle(alert)] == ["failed"]
    rig.recorder.failing.clear()
    return uid, alert, make_action_id(alert["alert_id"], "email")


def redrive(
    rig: Rig, sink: Sink, *, now: float = NOW, dry_run: bool = False, **which: Any
) -> RedriveSummary:
    redriver = Redriver(rig.notifier, rig.directory, sink, clock=lambda: now)
    return run(redriver.run(RedriveFilter(**which), dry_run=dry_run))


def test_failed_delivery_is_redriven_once_then_nothing_is_left() -> None:
    rig, sink = Rig(), Sink()
    uid, _alert, action_id = failed_once(rig, "redrive")
    [job] = run(rig.directory.failed_jobs())
    assert (job["action_id"], job["channel"], job["failures"]) == (action_id, "email", 1)
    assert "500" in job["error"]

    first = redrive(rig, sink)
    second = redrive(rig, sink)

    assert (first.found, first.redriven, first.sent, first.failed_again) == (1, 1, 1, 0)
    [mail] = rig.recorder.on("email")
    assert mail.idempotency_key == action_id and mail.to == f"{uid}@example.test"
    assert [(a.action_id, a.status) for a in sink.published] == [(action_id, "sent")]
    assert run(rig.directory.already_done(uid, action_id)) == "sent"
    assert run(rig.directory.is_published(uid, action_id))
    assert (second.found, second.redriven) == (0, 0)
    assert len(rig.recorder.on("email")) == 1


def test_a_delivery_that_succeeded_since_is_skipped_not_sent_twice() -> None:
    rig, sink = Rig(), Sink()
    uid, alert, action_id = failed_once(rig, "healed")
    assert rig.handle(alert) == [("email", "sent", None)]  # the alert came again
    run(rig.directory.mark_published(uid, [action_id]))

    summary = redrive(rig, sink)

    assert (summary.found, summary.skipped, summary.sent) == (1, 1, 0)
    assert summary.outcomes[0].reason == "already sent"
    assert len(rig.recorder.on("email")) == 1
    assert sink.published == []
    assert run(rig.directory.failed_jobs()) == []  # settled: the next re-drive finds nothing


def test_consent_withdrawn_since_the_failure_suppresses() -> None:
    rig, sink = Rig(), Sink()
    uid, _, action_id = failed_once(rig, "withdrew")
    rig.directory.set_consent(uid, email=False)

    summary = redrive(rig, sink)

    assert (summary.suppressed, summary.sent) == (1, 0)
    assert rig.recorder.sent == []
    assert [(a.status, a.reason) for a in sink.published] == [
        ("suppressed", "no consent for email")
    ]
    assert run(rig.directory.already_done(uid, action_id)) == "suppressed"


def test_a_cap_filled_since_the_failure_suppresses() -> None:
    """A failed delivery held no place in the window: others may have filled it since."""
    rig, sink = Rig(capped_at_one()), Sink()
    uid, _, _ = failed_once(rig, "filled")
    assert rig.handle(make_alert(uid, bucket=2)) == [("email", "sent", None)]

    summary = redrive(rig, sink)

    assert (summary.suppressed, summary.sent) == (1, 0)
    assert [(a.status, a.reason) for a in sink.published] == [
        ("suppressed", "frequency cap: 1 in 7 days")
    ]
    assert len(rig.recorder.on("email")) == 1


def test_quiet_hours_defer_the_redrive_to_the_deferred_queue() -> None:
    rig, sink = Rig(), Sink()
    _uid, _, action_id = failed_once(rig, "asleep")
    night = datetime(2026, 1, 15, 23, 0, tzinfo=LA).timestamp()
    morning = datetime(2026, 1, 16, 8, 0, tzinfo=LA).timestamp()

    summary = redrive(rig, sink, now=night)

    assert (summary.deferred, summary.sent) == (1, 0)
    assert rig.recorder.sent == []
    assert [ts for ts, _ in rig.directory.deferred] == [morning]
    [job] = run(rig.directory.due(morning))
    action = run(rig.notifier.run_deferred(job, now=morning))
    assert action is not None and (action.action_id, action.status) == (action_id, "sent")
    assert len(rig.recorder.on("email")) == 1


def test_a_redrive_that_fails_again_keeps_the_delivery_for_later() -> None:
    rig, sink = Rig(), Sink()
    _uid, _, _action_id = failed_once(rig, "still-down")
    rig.recorder.failing.add("email")

    again = redrive(rig, sink)

    assert (again.redriven, again.failed_again, again.sent) == (1, 1, 0)
    [job] = run(rig.directory.failed_jobs())
    assert job["failures"] == 2
    assert [a.status for a in sink.published] == ["failed"]
    rig.recorder.failing.clear()
    assert redrive(rig, sink).sent == 1
    assert len(rig.recorder.on("email")) == 1


def test_filters_and_dry_run() -> None:
    rig, sink = Rig(), Sink()
    _, _alert_a, id_a = failed_once(rig, "first")
    _, alert_b, id_b = failed_once(rig, "second")

    preview = redrive(rig, sink, dry_run=True)
    assert (preview.found, preview.sent, preview.dry_run) == (2, 2, True)
    assert rig.recorder.sent == [] and sink.published == []
    assert len(run(rig.directory.failed_jobs())) == 2  # a dry run changes nothing

    assert redrive(rig, sink, channel="sms").found == 0
    assert redrive(rig, sink, since=NOW + 1).found == 0
    only_b = redrive(rig, sink, alert_id=alert_b["alert_id"])
    assert (only_b.found, only_b.sent) == (1, 1)
    assert [m.idempotency_key for m in rig.recorder.on("email")] == [id_b]
    assert [j["action_id"] for j in run(rig.directory.failed_jobs())] == [id_a]


def test_a_delivery_claimed_by_another_redrive_is_skipped() -> None:
    rig, sink = Rig(), Sink()
    _, _, action_id = failed_once(rig, "contended")
    assert run(rig.directory.claim_failed(action_id, lease_s=60)) is not None

    summary = redrive(rig, sink)

    assert (summary.skipped, summary.sent) == (1, 0)
    assert rig.recorder.sent == []
    run(rig.directory.release_failed(action_id, settled=False))
    assert redrive(rig, sink).sent == 1


def test_a_failed_delivery_of_a_user_erased_since_is_forgotten_unsent() -> None:
    rig, sink = Rig(), Sink()
    uid, _alert, _ = failed_once(rig, "erased")
    rig.directory.erase(uid)  # the re-drive read the failure before the erase removed it

    summary = redrive(rig, sink)

    assert (summary.found, summary.skipped, summary.sent, summary.suppressed) == (1, 1, 0, 0)
    assert [o.reason for o in summary.outcomes] == [ERASED]
    assert rig.recorder.on("email") == [] and sink.published == []
    assert run(rig.directory.failed_jobs()) == []  # settled: not tried again
    assert uid not in rig.directory.actions

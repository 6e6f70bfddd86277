"""Re-drive failed deliveries: send them again through the normal path.

A delivery that fails after its retries (a provider down for longer than the
backoff) is published on ``winback-actions`` as ``failed`` and kept in the
directory's failed-delivery record (``P:failed``, one entry per action id, with
the alert, the playbook and the decision). The record, not the topic, is what a
re-drive reads: it holds everything needed to render the message again, it
does not depend on the topic's retention, and an entry leaves it only when the
action is settled.

For each failed delivery (oldest first) a re-drive

1. claims it with a lease, so two re-drives never send the same action;
2. skips it, and forgets it, when the user was erased since (the erase removes
   failed deliveries, but a re-drive may hold one it read before); skips it
   when the action is done since (the alert came again and the send
   succeeded, or an earlier re-drive got there): the done mark keeps one
   message per alert and channel; a failure never leaves a done mark, so it
   never blocks its own re-drive;
3. judges consent and the frequency cap again (an opt-out since the failure,
   or a cap filled by other contacts since, suppresses it: a failed delivery
   held no place in the window) and defers it to the deferred queue during the
   user's quiet hours;
4. delivers it with the notifier's channels and retry policy
   (:meth:`~services.notifier.carry_out.CarryOut.carry_out`), publishes the
   resulting action on ``winback-actions`` and forgets the failure, unless it
   failed again (then it stays, with its failure count raised).

Which deliveries to take and what a run reports (the filter, each outcome,
the summary) are in :mod:`services.notifier.redrive_report`; the command line
in :mod:`services.notifier.redrive_command`.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from services.common.messages import WinbackAction
from services.notifier import metrics
from services.notifier.core.guardrails import Decision, quiet_hours_end, zone_name
from services.notifier.redrive_report import Outcome, RedriveFilter, RedriveSummary
from services.notifier.service import Notifier

log = logging.getLogger("churnwatch.notifier.redrive")

ERASED = "user erased since the failure"


class FailedDeliveries(Protocol):
    """What a re-drive needs of the directory, beyond the Notifier's own port."""

    async def failed_jobs(self) -> list[dict[str, Any]]: ...

    async def claim_failed(self, action_id: str, *, lease_s: float) -> dict[str, Any] | None: ...

    async def release_failed(self, action_id: str, *, settled: bool) -> None: ...

    async def mark_published(self, user_id: str, action_ids: list[str]) -> None: ...


class ActionSink(Protocol):
    async def publish(self, actions: list[WinbackAction]) -> None:
        """Put the actions on winback-actions and return once Kafka acknowledged them."""


class Redriver:
    def __init__(
        self,
        notifier: Notifier,
        directory: FailedDeliveries,
        sink: ActionSink,
        *,
        lease_s: float = 600.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.notifier = notifier
        self.directory = directory
        self.sink = sink
        self.lease_s = lease_s
        self.clock = clock

    async def run(
        self,
        which: RedriveFilter,
        *,
        dry_run: bool = False,
        limit: int | None = None,
        progress: Callable[[Outcome], None] | None = None,
    ) -> RedriveSummary:
        jobs = [job for job in await self.directory.failed_jobs() if which.matches(job)]
        summary = RedriveSummary(found=len(jobs), dry_run=dry_run)
        for job in jobs[:limit]:
            outcome = await (self.preview(job) if dry_run else self.redrive(job))
            summary.add(outcome)
            if not dry_run:
                metrics.REDRIVES.labels(job["channel"], outcome.outcome).inc()
                log.info(
                    "redrive",
                    extra={
                        "action_id": job["action_id"],
                        "channel": job["channel"],
                        "outcome": outcome.outcome,
                        "reason": outcome.reason,
                    },
                )
            if progress is not None:
                progress(outcome)
        return summary

    async def preview(self, job: dict[str, Any]) -> Outcome:
        """What :meth:`redrive` would do now, without claiming, sending or recording."""
        skip = await self._skip_reason(job)
        if skip is not None:
            return Outcome(job, "skipped", skip)
        decision = await self._decide(job)
        return Outcome(job, _planned(decision.status), decision.reason)

    async def redrive(self, job: dict[str, Any]) -> Outcome:
        action_id = job["action_id"]
        claimed = await self.directory.claim_failed(action_id, lease_s=self.lease_s)
        if claimed is None:
            return Outcome(job, "skipped", "settled or being re-driven elsewhere")
        settled = False
        try:
            outcome, action = await self._redrive_claimed(claimed)
            if action is not None:
                await self.sink.publish([action])
                await self.directory.mark_published(action.user_id, [action.action_id])
            settled = outcome.outcome not in ("failed",) and not _unconfigured(outcome)
            return outcome
        finally:
            await self.directory.release_failed(action_id, settled=settled)

    async def _redrive_claimed(self, job: dict[str, Any]) -> tuple[Outcome, WinbackAction | None]:
        skip = await self._skip_reason(job)
        now = self.clock()
        if skip is not None:
            action = None
            if skip == ERASED:
                metrics.ERASED.labels("redrive").inc()
            if skip.startswith("already"):  # done, maybe not on the topic yet: carry_out says
                action = await self._carry_out(job, _decision(job), now=now)
            return Outcome(job, "skipped", skip), action
        decision = await self._decide(job)
        action = await self._carry_out(job, decision, now=now)
        if action is None:  # done and published between our check and now, or erased
            erased = await self.notifier.directory.is_erased(job["user_id"])
            return Outcome(job, "skipped", ERASED if erased else "already handled"), None
        return Outcome(job, action.status, action.reason), action

    async def _carry_out(
        self, job: dict[str, Any], decision: Decision, *, now: float
    ) -> WinbackAction | None:
        contact, _, _ = await self.notifier.directory.profile(job["user_id"])
        return await self.notifier.carry_out(
            job["alert"],
            decision,
            playbook=job["playbook"],
            contact=contact,
            now=now,
            failures=int(job.get("failures", 1)),
        )

    async def _skip_reason(self, job: dict[str, Any]) -> str | None:
        if await self.notifier.directory.is_erased(job["user_id"]):
            return ERASED  # settled: the failure is forgotten, nothing sent
        if job["channel"] not in self.notifier.channels:
            return f"channel {job['channel']} is not configured"
        done = await self.notifier.directory.already_done(job["user_id"], job["action_id"])
        return f"already {done}" if done is not None else None

    async def _decide(self, job: dict[str, Any]) -> Decision:
        """Send again, unless consent was withdrawn or the cap filled (suppress) or it is
        quiet hours (defer)."""
        decision = _decision(job)
        if decision.channel == "webhook":  # the CS hand-off: no consent, no quiet hours
            return decision
        contact, consent, sends = await self.notifier.directory.profile(job["user_id"])
        decision = self.notifier.judge_again(
            decision, job["alert"], consent, sends, now=self.clock()
        )
        if decision.status == "suppressed":
            return decision
        defaults = self.notifier.book.defaults
        tz = zone_name(
            contact.get("timezone") or job["alert"].get("timezone"), defaults.default_timezone
        )
        quiet = defaults.quiet_hours
        until = quiet_hours_end(self.clock(), tz, start=quiet.start, end=quiet.end)
        if until is not None:
            return replace(
                decision,
                status="defer",
                reason=f"quiet hours until {quiet.end} {tz}",
                not_before=until,
            )
        return decision


def _decision(job: dict[str, Any]) -> Decision:
    return replace(Decision(**job["decision"]), status="send", reason=None, not_before=None)


def _planned(status: str) -> str:
    return {"send": "sent", "defer": "deferred"}.get(status, status)


def _unconfigured(outcome: Outcome) -> bool:
    return outcome.outcome == "skipped" and "not configured" in (outcome.reason or "")

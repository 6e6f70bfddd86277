"""Turn one churn alert into win-back actions: plan, guard, render, deliver, record.

No Faust here: the agent hands alerts in and publishes the actions returned.
Ports: a directory (:mod:`services.notifier.ports`: contacts, consent, sends,
idempotency, deferred queue, failed deliveries) and one channel per medium, which
:mod:`services.notifier.delivery` renders and sends through. A delivery that fails after its
retries is published as ``failed`` and kept in the directory for
``churnwatch notifier redrive`` (:mod:`services.notifier.redrive`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from dataclasses import asdict, replace
from datetime import UTC, datetime
from typing import Any

from services.common.messages import WinbackAction, make_action_id
from services.notifier import metrics
from services.notifier.channels.base import Channel, RetryPolicy
from services.notifier.core.guardrails import ConsentRecord, Decision, over_cap, plan_actions
from services.notifier.core.playbooks import PlaybookBook
from services.notifier.core.templates import Brand, Renderer
from services.notifier.delivery import Delivery, address_for
from services.notifier.ports import Directory

log = logging.getLogger("churnwatch.notifier")


class Notifier:
    def __init__(
        self,
        *,
        book: PlaybookBook,
        directory: Directory,
        channels: Mapping[str, Channel],
        renderer: Renderer,
        brand: Brand,
        retry: RetryPolicy,
    ) -> None:
        self.book = book
        self.directory = directory
        self.channels = channels  # which channels exist: planning and re-drives read it
        self.delivery = Delivery(channels=channels, renderer=renderer, brand=brand, retry=retry)

    async def handle_alert(
        self, alert: dict[str, Any], *, now: float | None = None
    ) -> list[WinbackAction]:
        now = time.time() if now is None else now
        if await self._erased(alert, "alert"):
            return []
        segment = alert["segment"]
        playbook = self.book.match(segment["stage"], segment["tier"], alert["band"])
        if playbook is None:
            action = self._action(
                alert, "none", "none", "suppressed", reason="no playbook matches", now=now
            )
            await self.directory.record(
                alert["user_id"], action.to_dict(), contacted=False, winback=None
            )
            return [action]
        contact, consent, sends = await self.directory.profile(alert["user_id"])
        contacts = {ch: address_for(ch, contact) is not None for ch in self.channels}
        contacts["webhook"] = "webhook" in self.channels
        alert_view = {**alert, "timezone": contact.get("timezone") or alert.get("timezone")}
        # The alert's own actions aside: planned again (a redelivery, a retry after a
        # Redis error), its deferred contacts must not count against themselves.
        own = {make_action_id(alert["alert_id"], ch) for ch in self.channels}
        decisions = plan_actions(
            alert_view,
            playbook,
            contacts=contacts,
            consent=consent,
            recent_sends=[ts for action_id, ts in sends.items() if action_id not in own],
            now=now,
            settings=self.book.defaults,
        )
        actions = []
        for n, decision in enumerate(decisions):
            if n and await self.directory.is_erased(alert["user_id"]):
                break  # erased while the decisions before were carried out
            taken = await self.carry_out(
                alert, decision, playbook=playbook.name, contact=contact, now=now
            )
            if taken is not None:
                actions.append(taken)
        return actions

    async def carry_out(
        self,
        alert: dict[str, Any],
        decision: Decision,
        *,
        playbook: str,
        contact: Mapping[str, str],
        now: float,
        failures: int = 0,
    ) -> WinbackAction | None:
        """Execute one decision exactly once per alert and channel.

        None when the decision was carried out and its action published before
        (the alert was delivered again): nothing to send, nothing to publish.
        A failed delivery is remembered for a re-drive (``failures`` counts the
        earlier ones of the same action, when this is a re-drive). None too when the
        user was erased while the provider took its time (a message handed over is
        gone; nothing of it is kept). Callers check the erase before calling.
        """
        uid = alert["user_id"]
        action_id = make_action_id(alert["alert_id"], decision.channel)
        done = await self.directory.already_done(uid, action_id)
        if done is not None:
            metrics.REPEATS.inc()
            if await self.directory.is_published(uid, action_id):
                return None  # a redelivered alert: its action is on winback-actions already
            return self._action(
                alert,
                decision.channel,
                playbook,
                done,
                decision=decision,
                reason="already handled",
                now=now,
            )
        status: str = decision.status  # control and suppressed are recorded as they are
        reason = decision.reason
        if decision.status == "defer" and decision.not_before is not None:
            job = {"alert": alert, "playbook": playbook, "decision": asdict(decision)}
            await self.directory.defer(job, decision.not_before)
            if decision.channel != "webhook":  # the cap counts it from now, across alerts
                await self.directory.schedule_contact(uid, action_id, decision.not_before)
            status = "deferred"
        elif decision.status == "send":
            status, reason = await self.delivery.send(
                alert,
                decision,
                contact=contact,
                action_id=action_id,
                before_retry=lambda: self._still_there(uid),
            )
            if await self._erased(alert, "in_flight"):  # during the send and its retries
                return None
            if status == "failed":
                await self.directory.remember_failed(
                    {
                        "action_id": action_id,
                        "alert_id": alert["alert_id"],
                        "user_id": uid,
                        "channel": decision.channel,
                        "playbook": playbook,
                        "alert": alert,
                        "decision": asdict(decision),
                        "error": reason,
                        "failed_at": now,
                        "failures": failures + 1,
                    }
                )
        action = self._action(
            alert, decision.channel, playbook, status, decision=decision, reason=reason, now=now
        )
        winback = None
        if status in ("sent", "control"):
            winback = {
                "alert_id": alert["alert_id"],
                "playbook": playbook,
                "at": now,
                "group": "control" if status == "control" else "treated",
            }
        await self.directory.record(
            uid,
            action.to_dict(),
            winback=winback,
            contacted=status == "sent" and decision.channel != "webhook",
        )
        return action

    async def run_deferred(
        self, job: dict[str, Any], *, now: float | None = None
    ) -> WinbackAction | None:
        """Send a deferred action now that its time has come (quiet hours over, delay done).

        Consent and the frequency cap are judged again: a user who opted out while
        the action waited is not contacted, nor one whose cap was filled meanwhile
        (this action's own place in the window, kept since it was deferred, aside).
        """
        now = time.time() if now is None else now
        alert = job["alert"]
        if await self._erased(alert, "deferred"):
            return None
        decision = replace(Decision(**job["decision"]), status="send", not_before=None)
        contact, consent, sends = await self.directory.profile(alert["user_id"])
        decision = self.judge_again(decision, alert, consent, sends, now=now)
        return await self.carry_out(
            alert, decision, playbook=job["playbook"], contact=contact, now=now
        )

    async def _erased(self, alert: Mapping[str, Any], source: str) -> bool:
        """The user was erased after this alert was raised: it is dropped, unsent, and
        leaves no trace (no action published, nothing recorded, no user id logged)."""
        if not await self.directory.is_erased(alert["user_id"]):
            return False
        metrics.ERASED.labels(source).inc()
        log.info("erased user's alert dropped", extra={"alert_id": alert["alert_id"]})
        return True

    async def _still_there(self, user_id: str) -> bool:
        return not await self.directory.is_erased(user_id)

    def judge_again(
        self,
        decision: Decision,
        alert: Mapping[str, Any],
        consent: ConsentRecord,
        sends: Mapping[str, float],
        *,
        now: float,
    ) -> Decision:
        """A planned contact about to go out later (deferred, or re-driven): suppressed
        if consent was withdrawn or the cap filled since (its own place aside)."""
        if decision.channel == "webhook":  # the CS hand-off: no consent, no cap
            return decision
        if not consent.allows(decision.channel):
            return replace(
                decision, status="suppressed", reason=f"no consent for {decision.channel}"
            )
        own = make_action_id(alert["alert_id"], decision.channel)
        others = [ts for action_id, ts in sends.items() if action_id != own]
        if capped := over_cap(others, now, self.book.defaults.frequency_cap):
            return replace(decision, status="suppressed", reason=capped)
        return decision

    def _action(
        self,
        alert: dict[str, Any],
        channel: str,
        playbook: str,
        status: str,
        *,
        now: float,
        decision: Decision | None = None,
        reason: str | None = None,
    ) -> WinbackAction:
        action = WinbackAction(
            action_id=make_action_id(alert["alert_id"], channel),
            alert_id=alert["alert_id"],
            user_id=alert["user_id"],
            channel=channel,
            playbook=playbook,
            status=status,
            at=datetime.fromtimestamp(now, UTC),
            offer=decision.offer if decision else None,
            template=decision.template if decision else None,
            reason=reason
            if status in ("deferred", "suppressed", "failed", "control") or reason
            else None,
        )
        metrics.ACTIONS.labels(channel, status).inc()
        return action

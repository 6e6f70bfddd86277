"""Carrying out one decision, exactly once per alert and channel (a part of ``Notifier``).

Every contact ends here, whether planned for an alert now
(:meth:`~services.notifier.service.Notifier.handle_alert`), deferred
(``run_deferred``) or re-driven (:mod:`services.notifier.redrive`): the check
for an action done before, the deferred queue, the send through
:mod:`services.notifier.delivery`, the failed-delivery record, the
``WinbackAction`` and its record in the directory; also the drop of an erased
user's alert, which every path checks. Apart from :mod:`services.notifier.service`,
which plans the decisions and judges them again.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import asdict
from datetime import UTC, datetime
from typing import Any

from services.common.messages import WinbackAction, make_action_id
from services.notifier import metrics
from services.notifier.core.guardrails import Decision
from services.notifier.delivery import Delivery
from services.notifier.ports import Directory

log = logging.getLogger("churnwatch.notifier")


class CarryOut:
    """Decisions carried out and recorded (a part of ``Notifier``, which sets these)."""

    directory: Directory
    delivery: Delivery

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

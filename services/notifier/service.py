"""Turn one churn alert into win-back actions: plan, guard, render, deliver, record.

No Faust here: the agent hands alerts in and publishes the actions returned.
Ports: a directory (:mod:`services.notifier.ports`: contacts, consent, sends,
idempotency, deferred queue, failed deliveries) and one channel per medium, which
:mod:`services.notifier.delivery` renders and sends through. A delivery that fails after its
retries is published as ``failed`` and kept in the directory for
``churnwatch notifier redrive`` (:mod:`services.notifier.redrive`).

Here: the plan of an alert's contacts, and the judging again of one that goes
out later (deferred, re-driven). Carrying a decision out (the send, the
failed-delivery record, the action and its record) is in
:mod:`services.notifier.carry_out`, a part of :class:`Notifier`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

from services.common.messages import WinbackAction, make_action_id
from services.notifier.carry_out import CarryOut
from services.notifier.channels.base import Channel, RetryPolicy
from services.notifier.core.guardrails import ConsentRecord, Decision, over_cap, plan_actions
from services.notifier.core.playbook_book import PlaybookBook
from services.notifier.core.templates import Brand, Renderer
from services.notifier.delivery import Delivery, address_for
from services.notifier.ports import Directory


class Notifier(CarryOut):
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

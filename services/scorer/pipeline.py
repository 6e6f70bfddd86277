"""One micro-batch through the scorer: decode → features → score → policy → write.

This module holds the orchestration and nothing that knows Kafka or Faust: the
worker's batch handler (:mod:`services.scorer.app`) hands it raw records and publishes what it
returns. The store is a port, so the fast tests run it on a fake. The steps it
runs live beside it: :mod:`~services.scorer.decoding` (records to events by
user), :mod:`~services.scorer.batch_users` (events to scores and writes) and
:mod:`~services.scorer.outcome` (what a batch gives back, the store port).
"""

from __future__ import annotations

import asyncio
import time

from services.common.clock import Clock
from services.common.errors import StoreUnavailable
from services.common.events import UserEvent
from services.common.messages import DeadLetter, Record, dead_record
from services.scorer.batch_users import score_users
from services.scorer.core.features import FeatureSettings
from services.scorer.decoding import Ahead, Decoded, Scored, decode_batch
from services.scorer.outcome import Outcome, UserStore
from services.scorer.rows import StoredUser, UserWrite
from services.scorer.scoring import ScoringCore


class BatchScorer:
    def __init__(
        self,
        *,
        store: UserStore,
        core: ScoringCore,
        clock: Clock,
        features: FeatureSettings,
        rescore_every_s: float = 0.0,
        rescore_spread: float = 0.0,
        winback_window_s: float = 14 * 86_400,
    ) -> None:
        self.store = store
        self.core = core
        self.clock = clock
        self.features = features
        self.rescore_every_s = rescore_every_s
        self.rescore_spread = rescore_spread
        self.winback_window_s = winback_window_s
        # Bumped after every write to users' rows outside the batches (the live sweep's
        # re-scores): users scored ahead from rows read before it are scored again.
        self.epoch = 0
        self._next: Ahead | None = None  # the latest batch's, let go when one's write is out
        # No batch in hand, or it has sent its write: the next batch prepared may be
        # scored at once (it takes this; a later one waits for that one's write).
        self._free = True

    def score_ahead(self, decoded: Decoded, *, skip: set[str]) -> None:
        """Start reading the rows of ``decoded``'s users, but those in ``skip``, and scoring them.

        The consumer decodes the next batch while the one in hand is handled,
        which spends a third of its time waiting on Redis (its read, and its
        write, which Redis runs on its own core). Scoring the next batch's users
        during that write fills the wait with work. ``skip`` is the
        batch in hand: its users' rows change when it saves, so they are read
        and scored at their turn. Rows of other users change only by the live
        sweep's re-scores (they take ``state_lock`` and bump :attr:`epoch`;
        users scored from rows read before are then scored again) or by other
        processes (the notifier's win-back mark, an erase through the API),
        whose writes a batch could already miss between its read and its
        write; scoring ahead widens that window by the batch before's handling.
        What is scored ahead is written with its batch, or dropped with it.

        The rows are read at once, but the scoring waits for ``go``: set when
        the batch in hand has sent its write (scored then, the users fill the
        write's wait rather than hold up the batch's own work), at the latest
        when that batch is done, or when a later batch is prepared (this one
        was dropped), or at this batch's turn. Under light load the batch in
        hand may be past its write when this one is prepared (or there is
        none): its users are then scored as soon as their rows are in. They
        are scored at the clock's time when ``go`` is set, a batch's handling
        earlier than at their turn. A batch dropped after its users were
        scored has fed them to the RFM quantiles' sample, as will their
        scoring by the batch's next owner (a few users more in a running
        sample; the same happens to any redelivered batch).
        """
        if self._next is not None:
            self._next.go.set()  # a batch prepared and never handled: let its task end
        users = [u for u in decoded.by_user if u not in skip]
        if users:
            go = asyncio.Event()
            if self._free:
                self._free = False
                go.set()
            scored = asyncio.ensure_future(self._score_read(decoded.by_user, users, go))
            scored.add_done_callback(_quiet)  # a batch dropped by a rebalance never awaits it
            decoded.ahead = self._next = Ahead(scored, self.epoch, go)

    async def _score_read(
        self,
        by_user: dict[str, list[tuple[Record, UserEvent]]],
        users: list[str],
        go: asyncio.Event,
    ) -> Scored:
        rows = await self.store.load(users)
        await go.wait()
        out = Outcome()
        writes = self._score({u: by_user[u] for u in users}, rows, self.clock.now(), out)
        return Scored(frozenset(users), writes, out)

    async def _scored_ahead(self, decoded: Decoded) -> Scored | None:
        """The users scored ahead, if their rows are still current (else None); used once:
        a batch retried after a failed write reads and scores every user again (the
        write may have landed in part, and what did land must not be written twice)."""
        ahead, decoded.ahead = decoded.ahead, None
        if ahead is None:
            return None
        ahead.go.set()
        try:
            scored = await ahead.scored
        except StoreUnavailable:
            return None  # read again in the batch, where an outage is the batch's to wait out
        return scored if ahead.epoch == self.epoch else None

    def _dead(self, record: Record, exc: Exception) -> DeadLetter:
        return dead_record(record, exc, stage="scorer")

    async def handle(self, records: list[Record], decoded: Decoded | None = None) -> Outcome:
        """Score one micro-batch; ``decoded`` is :func:`decode_batch` of ``records`` when the
        consumer decoded it ahead, with those of its users scored ahead (:meth:`score_ahead`).
        """
        decoded = decoded or decode_batch(records)
        out = Outcome(events=len(records), dead=list(decoded.dead))
        by_user = decoded.by_user
        observe = getattr(self.clock, "observe", None)
        if observe is not None:
            for items in by_user.values():
                for _, event in items:
                    observe(event.ts)
        if not by_user:
            return out
        started = time.perf_counter()
        writes: list[UserWrite] = []
        rest = by_user
        own = decoded.ahead
        ahead = await self._scored_ahead(decoded)
        if ahead is not None:
            writes += ahead.writes
            out.add(ahead.out)
            rest = {u: items for u, items in by_user.items() if u not in ahead.users}
        rows = await self.store.load(list(rest)) if rest else {}
        out.redis_s["load"] = time.perf_counter() - started
        writes += self._score(rest, rows, self.clock.now(), out)
        out.users = len(writes)
        released = False
        try:
            if writes:
                started = time.perf_counter()
                saved = asyncio.ensure_future(self.store.save(writes))
                await asyncio.sleep(0)  # the write's first step: out on the socket
                self._release(own)  # the next batch's users are scored meanwhile
                released = True
                await saved
                out.redis_s["save"] = time.perf_counter() - started
        finally:
            if not released:
                self._release(own)
        return out

    def _release(self, own: Ahead | None) -> None:
        """The batch in hand (``own``: what of it was scored ahead) needs the CPU no more:
        the batch prepared after it is scored now, or, if none is yet, the next one
        prepared is scored at once."""
        nxt, self._next = self._next, None
        if nxt is not None and nxt is not own:
            nxt.go.set()
        else:
            self._free = True

    def _score(
        self,
        by_user: dict[str, list[tuple[Record, UserEvent]]],
        rows: dict[str, StoredUser],
        now: float,
        out: Outcome,
    ) -> list[UserWrite]:
        """:func:`~services.scorer.batch_users.score_users` with this scorer's settings."""
        return score_users(
            by_user,
            rows,
            now,
            out,
            core=self.core,
            features=self.features,
            rescore_every_s=self.rescore_every_s,
            rescore_spread=self.rescore_spread,
            winback_window_s=self.winback_window_s,
        )


def _quiet(future: asyncio.Future[Scored]) -> None:
    """Retrieve a score-ahead's error, so that one nobody awaits is not logged as lost."""
    if not future.cancelled():
        future.exception()

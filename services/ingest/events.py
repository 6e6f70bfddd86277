"""What ``POST /v1/events`` does, from the request to the answer.

Read the body within its limit, parse and check it (:mod:`services.ingest.core`),
leave out the event ids produced lately, publish the rest and wait for Kafka's
acknowledgements, then say what was taken: 200, 207 (some items rejected), 422
(all rejected), or 503 with ``Retry-After`` and ``not_taken`` when Kafka did not
take some. The route itself is declared in :mod:`services.ingest.app`.
"""

from __future__ import annotations

import logging
import time
from collections import OrderedDict
from typing import Any

from fastapi import Request
from fastapi.concurrency import run_in_threadpool

from services.ingest import metrics
from services.ingest.config import IngestSettings
from services.ingest.core import BadRequest, Checked, check_items, parse_body
from services.ingest.ports import EventPublisher
from services.ingest.responses import ORJSONResponse, error

log = logging.getLogger("churnwatch.ingest")

# BadRequest's status -> the reason churnwatch_ingest_events_rejected_total counts.
REJECTED_REASONS = {400: "bad_json", 413: "too_many", 415: "content_type"}


class RecentIds:
    """Event ids produced in the last ``window_s`` seconds (bounded LRU).

    >>> recent = RecentIds(60)
    >>> recent.add("e-1", now=0.0)
    >>> recent.seen("e-1", now=59.0), recent.seen("e-1", now=60.0)
    (True, False)
    """

    def __init__(self, window_s: float, *, max_size: int = 1_000_000) -> None:
        self.window_s = window_s
        self.max_size = max_size
        self._seen: OrderedDict[str, float] = OrderedDict()

    def seen(self, event_id: str, now: float) -> bool:
        expiry = self._seen.get(event_id)
        return expiry is not None and expiry > now

    def add(self, event_id: str, now: float) -> None:
        self._seen[event_id] = now + self.window_s
        self._seen.move_to_end(event_id)
        while len(self._seen) > self.max_size or (
            self._seen and next(iter(self._seen.values())) <= now
        ):
            self._seen.popitem(last=False)


class EventIntake:
    """Takes the requests of ``POST /v1/events``; one per app (it holds the recent ids)."""

    def __init__(self, settings: IngestSettings, publisher: EventPublisher) -> None:
        self.settings = settings
        self.publisher = publisher
        self.recent = RecentIds(settings.ingest_dedup_window_s)
        # A publisher that can wait for Kafka on the event loop (librdkafka's) does;
        # one that blocks (kafka-python's, the fakes) waits in the thread pool.
        self._publish_async = getattr(publisher, "publish_async", None)

    async def handle(self, request: Request) -> ORJSONResponse:
        metrics.IN_FLIGHT.inc()
        try:
            return await self._handle(request)
        finally:
            metrics.IN_FLIGHT.dec()

    async def _handle(self, request: Request) -> ORJSONResponse:
        limit = self.settings.ingest_max_body_bytes
        body = await read_limited(request, limit)
        if body is None:
            metrics.REJECTED.labels("too_large").inc()
            return error(413, f"body over {limit} bytes; split it")
        try:
            content_type = request.headers.get("content-type", "")
            items = parse_body(body, content_type, max_events=self.settings.ingest_max_events)
        except BadRequest as exc:
            metrics.REJECTED.labels(REJECTED_REASONS.get(exc.status, "bad_request")).inc()
            return error(exc.status, str(exc))
        checked = check_items(items)
        if checked.rejected:
            metrics.REJECTED.labels("invalid").inc(len(checked.rejected))
        return await self._produce(checked)

    async def _produce(self, checked: Checked) -> ORJSONResponse:
        now = time.monotonic()
        fresh: list[tuple[int, bytes, bytes]] = []
        fresh_ids: list[str] = []
        in_batch: set[str] = set()
        for record, eid in zip(checked.records, checked.event_ids, strict=True):
            # A retry inside the window, or the same id twice in this body: produce once.
            if eid in in_batch or self.recent.seen(eid, now):
                continue
            in_batch.add(eid)
            fresh.append(record)
            fresh_ids.append(eid)
        duplicates = len(checked.records) - len(fresh)
        if duplicates:
            metrics.DUPLICATES.inc(duplicates)
        started = time.perf_counter()
        batch = [(k, v) for _, k, v in fresh]
        if self._publish_async is not None:
            results = await self._publish_async(batch)
        else:
            results = await run_in_threadpool(self.publisher.publish, batch)
        metrics.PRODUCE_LATENCY.observe(time.perf_counter() - started)
        not_taken = [
            {"index": i, "error": str(err) or type(err).__name__}
            for (i, _, _), err in zip(fresh, results, strict=True)
            if err is not None
        ]
        for eid, err in zip(fresh_ids, results, strict=True):
            if err is None:
                self.recent.add(eid, now)
        return self._answer(checked, duplicates=duplicates, not_taken=not_taken)

    def _answer(
        self, checked: Checked, *, duplicates: int, not_taken: list[dict[str, Any]]
    ) -> ORJSONResponse:
        accepted = len(checked.records) - len(not_taken)
        metrics.ACCEPTED.inc(accepted - duplicates)
        body_out: dict[str, Any] = {
            "accepted": accepted,
            "duplicates": duplicates,
            "rejected": checked.rejected,
        }
        if not_taken:
            metrics.KAFKA_DOWN.inc()
            log.warning("kafka did not take events", extra={"not_taken": len(not_taken)})
            body_out["not_taken"] = not_taken
            body_out["error"] = (
                "Kafka is unavailable: the items in not_taken were not stored; "
                "send them again after Retry-After seconds"
            )
            return ORJSONResponse(
                body_out,
                status_code=503,
                headers={"Retry-After": str(self.settings.ingest_retry_after_s)},
            )
        status = 200 if not checked.rejected else (207 if accepted else 422)
        return ORJSONResponse(body_out, status_code=status)


async def read_limited(request: Request, limit: int) -> bytes | None:
    """The body, or None when it is over ``limit`` bytes: as declared, or as it streams."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit:
        return None
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
    return b"".join(chunks)

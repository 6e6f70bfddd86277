"""The HTTP load of ``churnwatch bench e2e-latency``: background traffic and probes.

:func:`load` posts background events to ingest's ``/v1/events`` on an open
loop and, after the warm-up, a probe (:func:`probe_events`) every 100 ms, and
returns when each probe's request was sent and answered; :func:`percentile`
reads latencies.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson

from bench.lean_http import HttpError, LoadClient
from services.sim.generator import DAY, SimUser, event

HEADERS = {"Content-Type": "application/x-ndjson", "Authorization": "Bearer dev-key"}


def probe_events(user_id: str, now: float) -> list[dict[str, Any]]:
    user = SimUser(user_id, "fading", "UTC", "premium", 1.0)
    start = now - 41 * DAY
    events = [event(user, "signup", start, 0)]
    events += [event(user, "session_start", start + d * DAY, d + 1) for d in range(21)]
    return events


Sent = dict[str, tuple[float, float]]  # probe user -> (request sent, answer received)


def load(
    url: str,
    *,
    rate: float,
    duration: float,
    run: str,
    warmup: float = 0.0,
    httpx_client: bool = False,
) -> tuple[Sent, float]:
    """Background traffic, and a probe every 100 ms once ``warmup`` seconds have passed.

    Open loop: a request is sent every 10 ms whether or not the earlier ones
    were answered (up to ``MAX_IN_FLIGHT`` at once), so a slow answer shows up
    as latency, not as a lower rate. Returns probe user -> when its request was
    sent and answered, and the background rate achieved (events acknowledged
    per second).
    """
    return asyncio.run(
        _load(url, rate=rate, duration=duration, run=run, warmup=warmup, httpx_client=httpx_client)
    )


MAX_IN_FLIGHT = 64


async def _load(
    url: str, *, rate: float, duration: float, run: str, warmup: float, httpx_client: bool
) -> tuple[Sent, float]:
    accepted: Sent = {}
    background = [SimUser(f"bg-{run}-{i}", "loyal", "UTC", "basic", 2.0) for i in range(5000)]
    tick, per_tick = 0.01, max(1, int(rate * 0.01))
    done = {"events": 0}
    answers: list[float] = []
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    client = LoadClient(
        url, size=MAX_IN_FLIGHT, headers=HEADERS, timeout=10, use_httpx=httpx_client
    )
    try:

        async def post(body: bytes, count: int, probe: str | None) -> None:
            async with slots:
                sent = time.time()
                try:
                    status, _ = await client.post(body)
                except HttpError:
                    return
                if status != 200:
                    return
                answered = time.time()
                answers.append(answered - sent)
                done["events"] += count
                if probe is not None:
                    accepted[probe] = (sent, answered)

        tasks: set[asyncio.Task[None]] = set()
        seq = n = ticks = 0
        start = time.monotonic()
        while time.monotonic() - start < duration:
            now = time.time()
            batch = []
            for _ in range(per_tick):
                seq += 1
                batch.append(event(background[seq % len(background)], "page_view", now, seq))
            bodies: list[tuple[bytes, int, str | None]] = [
                (b"\n".join(map(orjson.dumps, batch)), len(batch), None)
            ]
            ticks += 1
            if ticks % 10 == 0 and ticks * tick > warmup:
                n += 1
                uid = f"probe-{run}-{n}"
                probe = probe_events(uid, now)
                bodies.append((b"\n".join(map(orjson.dumps, probe)), 0, uid))
            for body, count, probe_id in bodies:
                task = asyncio.create_task(post(body, count, probe_id))
                tasks.add(task)
                task.add_done_callback(tasks.discard)
            await asyncio.sleep(max(0.0, start + ticks * tick - time.monotonic()))
        await asyncio.gather(*tasks)
    finally:
        await client.close()
    if answers:
        print(
            f"ingest answered {len(answers)} requests: p50 {percentile(answers, 0.5) * 1000:.1f} "
            f"ms, p99 {percentile(answers, 0.99) * 1000:.1f} ms; the load fell "
            f"{max(0.0, time.monotonic() - start - duration):.1f} s behind its schedule",
            flush=True,
        )
    return accepted, done["events"] / duration


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]

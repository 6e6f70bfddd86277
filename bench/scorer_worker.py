"""The scorer worker process of ``churnwatch bench scorer``, and what its metrics say.

:func:`measure_scorer` runs one ``churnwatch scorer`` and reads its
``/metrics`` (:func:`counter`) until every event is counted; it prints the
worker's micro-batches (:func:`batch_summary`), its CPU time
(:func:`cpu_seconds`) and the labels it learned (:func:`labels_settled`), and
returns its rate.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path

import httpx

from services.common.settings import CommonSettings
from services.launcher import Services


def counter(url: str, name: str) -> float | None:
    try:
        text = httpx.get(url, timeout=2.0).text
    except httpx.HTTPError:
        return None
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def measure_scorer(
    settings: CommonSettings,
    env: dict[str, str],
    *,
    port: int,
    total: int,
    logs: Path,
    on_first_event: Callable[[], None] = lambda: None,
) -> float:
    services = Services(settings, env, names=("scorer",), logs=logs)
    services.start()
    url = f"http://127.0.0.1:{port}/metrics"
    pid = services.procs["scorer"].pid
    try:
        first: tuple[float, float] | None = None
        cpu_first = 0.0
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline:
            services.check()
            count = counter(url, "churnwatch_scorer_events_total") or 0.0
            now = time.perf_counter()
            if count and first is None:
                first, cpu_first = (now, count), cpu_seconds(pid)
                on_first_event()
            if count >= total and first is not None:
                print(batch_summary(url))
                cpu = cpu_seconds(pid) - cpu_first
                print(
                    f"worker CPU: {cpu * 1e6 / (count - first[1]):.1f} µs an event, "
                    f"{cpu / (now - first[0]):.0%} of a core (all its threads; not the "
                    "learning process)"
                )
                learned, end = labels_settled(url, since=now)
                late = end - now
                print(f"labels learned: {learned:,.0f}, the last {late:.1f} s after the last event")
                end = max(end, now)
                return (total - first[1]) / (end - first[0]) if end > first[0] else float("nan")
            time.sleep(0.2)  # scraping /metrics costs the worker CPU: not too often
        raise RuntimeError(f"the scorer did not process {total} events in time; see {logs}")
    finally:
        services.stop()


def cpu_seconds(pid: int) -> float:
    """User and system CPU seconds of a process so far (Linux ``/proc``; 0 elsewhere)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def labels_settled(url: str, *, since: float, quiet_s: float = 3.0) -> tuple[float, float]:
    """The worker's learned labels once no more come for ``quiet_s`` (three of its
    sweeps), and the ``perf_counter`` time the count last grew (``since`` at the latest)."""
    learned, changed = labels_learned(url), since
    while time.perf_counter() - changed < quiet_s:
        time.sleep(0.2)
        now_learned = labels_learned(url)
        if now_learned != learned:
            learned, changed = now_learned, time.perf_counter()
    return learned, changed


def labels_learned(url: str) -> float:
    return sum(
        counter(url, f'churnwatch_scorer_labels_total{{label="{y}"}}') or 0.0 for y in ("0", "1")
    )


def batch_summary(url: str) -> str:
    """Mean micro-batch size and time, from the worker's histograms."""
    n = counter(url, "churnwatch_scorer_batch_events_count") or 0.0
    size = counter(url, "churnwatch_scorer_batch_events_sum") or 0.0
    secs = counter(url, "churnwatch_scorer_batch_seconds_sum") or 0.0
    if not n:
        return "no batches"
    redis_ms = {
        op: (counter(url, f'churnwatch_scorer_redis_seconds_sum{{op="{op}"}}') or 0.0) / n * 1000
        for op in ("load", "save")
    }
    return (
        f"{n:.0f} batches, {size / n:.0f} events and {secs / n * 1000:.1f} ms each on average "
        f"(waiting on Redis: load {redis_ms['load']:.1f} ms, save {redis_ms['save']:.1f} ms, "
        "during which the next batch's users are scored)"
    )

"""What ``churnwatch bench scorer`` measures its scorer worker against.

:func:`bare_loop` is a bare aiokafka consume → produce → commit loop on the
same topic (the result line's baseline); :func:`faust_ceiling` runs a Faust
agent that does nothing (:mod:`bench.faust_ceiling`) as a process of its own.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import uuid

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer

from services.common.kafka_security import aiokafka_options
from services.common.settings import CommonSettings


async def bare_loop(settings: CommonSettings, source: str, sink: str, *, total: int) -> float:
    """Events/s of consume → produce each value → commit, first to last record."""
    bootstrap, security = settings.kafka_bootstrap, aiokafka_options(settings)
    consumer = AIOKafkaConsumer(
        source,
        bootstrap_servers=bootstrap,
        **security,
        group_id=f"bench-bare-{uuid.uuid4().hex[:8]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        max_poll_records=2000,
    )
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", linger_ms=5, **security)
    await consumer.start()
    await producer.start()
    seen, started = 0, 0.0
    try:
        while seen < total:
            batches = await consumer.getmany(timeout_ms=1000, max_records=2000)
            if not batches:
                continue
            if not started:
                started = time.perf_counter()
            pending = []
            for records in batches.values():
                for rec in records:
                    pending.append(await producer.send(sink, rec.value, key=rec.key))
                seen += len(records)
            await asyncio.gather(*pending)
            await consumer.commit()
        return total / (time.perf_counter() - started)
    finally:
        await consumer.stop()
        await producer.stop()


def faust_ceiling(env: dict[str, str], topic: str, *, total: int, group: str) -> float:
    """Events/s of a Faust agent that does nothing (:mod:`bench.faust_ceiling`), or NaN."""
    command = [sys.executable, "-m", "bench.faust_ceiling", "--topic", topic]
    try:
        done = subprocess.run(
            [*command, "--total", str(total), "--group", group],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
    except subprocess.TimeoutExpired:
        print("faust alone: did not finish in 300 s")
        return float("nan")
    rate = ceiling_from(done.stdout)
    if rate != rate:  # NaN
        print(f"faust alone: no figure (exit {done.returncode}): {done.stderr[-500:]}")
    return rate


def ceiling_from(stdout: str) -> float:
    """The figure :mod:`bench.faust_ceiling` printed, after whatever terminal codes Faust wrote.

    >>> ceiling_from("\\x1b[?25l\\x1b[?25hfaust-ceiling 14335\\n")
    14335.0
    >>> ceiling_from("nothing")
    nan
    """
    for line in stdout.splitlines():
        if "faust-ceiling " in line:
            return float(line.rsplit(" ", 1)[1])
    return float("nan")

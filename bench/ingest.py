"""Ingest throughput: ``churnwatch bench ingest`` (DESIGN §10: >= 50,000 events/s).

One ingest process (``churnwatch ingest``, development mode, the real local
Kafka via the stack, a topic of its own) and, as the baseline, one process
serving a FastAPI endpoint that reads and discards the body. A separate load
process sends batches of unique events (a JSON array of ``--batch`` events)
over ``--connections`` keep-alive connections, first to the baseline, then to
ingest, ``--duration`` seconds each after a short warm-up. The last line
printed is one JSON object::

    {"name": "ingest", "value": <events/s>, "unit": "events/s",
     "baseline_value": <events/s>, "ratio": <value / baseline_value>}

Events/s counts only events the target acknowledged (for ingest: after Kafka's
acks). After the run the events on the bench topic are counted and must equal
what ingest acknowledged.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any

import httpx
import orjson
from fastapi import FastAPI, Request
from fastapi.responses import ORJSONResponse

from bench.lean_http import LoadClient

ROOT = Path(__file__).resolve().parents[1]
WARMUP_S = 2.0
EVENT = (
    b'{"event_id":"%s-%d","user_id":"u-%d","type":"page_view",'
    b'"occurred_at":"2026-11-23T09:15:00.250+01:00",'
    b'"properties":{"session_id":"s-%d","duration_s":12,"plan":"premium"},'
    b'"context":{"platform":"web","app_version":"5.2.0","country":"DE",'
    b'"timezone":"Europe/Berlin"}}'
)


def make_body(tag: bytes, start: int, size: int) -> bytes:
    """A JSON array of ``size`` distinct events.

    >>> len(orjson.loads(make_body(b"t", 0, 3)))
    3
    """
    return (
        b"["
        + b",".join(EVENT % (tag, n, n % 100_000, n // 20) for n in range(start, start + size))
        + b"]"
    )


async def _load(
    url: str, *, duration: float, connections: int, batch: int, tag: str, use_httpx: bool
) -> dict[str, Any]:
    headers = {"Content-Type": "application/json", "Authorization": "Bearer dev-key"}
    totals = {"events": 0, "requests": 0, "errors": 0}
    client = LoadClient(url, size=connections, headers=headers, timeout=60, use_httpx=use_httpx)
    try:

        async def worker(w: int, until: float, count: bool) -> None:
            seq = 0
            wtag = f"{tag}-{w}-{int(count)}".encode()
            while time.monotonic() < until:
                body = make_body(wtag, seq, batch)
                seq += batch
                status, content = await client.post(body)
                if not count:
                    continue
                totals["requests"] += 1
                if status == 200:
                    totals["events"] += int(orjson.loads(content).get("accepted", batch))
                else:
                    totals["errors"] += 1

        warm = time.monotonic() + WARMUP_S
        await asyncio.gather(*(worker(w, warm, False) for w in range(connections)))
        started = time.monotonic()
        until = started + duration
        await asyncio.gather(*(worker(w, until, True) for w in range(connections)))
        elapsed = time.monotonic() - started
    finally:
        await client.close()
    return totals | {"seconds": elapsed, "rate": totals["events"] / elapsed}


def load(
    url: str, duration: float, connections: int, batch: int, tag: str, use_httpx: bool = False
) -> dict[str, Any]:
    """Run in the separate load process (:mod:`bench.lean_http`, or httpx as before
    2026-12-06 with ``use_httpx``)."""
    return asyncio.run(
        _load(
            url,
            duration=duration,
            connections=connections,
            batch=batch,
            tag=tag,
            use_httpx=use_httpx,
        )
    )


def discard_app() -> FastAPI:
    """The baseline: accept the body, read it, throw it away."""
    app = FastAPI(default_response_class=ORJSONResponse)

    @app.get("/healthz")
    def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @app.post("/v1/events")
    async def events(request: Request) -> ORJSONResponse:
        await request.body()
        return ORJSONResponse({"status": "discarded"})

    return app


def serve_discard(port: int) -> None:
    import uvicorn

    uvicorn.run(discard_app(), host="127.0.0.1", port=port, log_config=None, access_log=False)


def _wait(url: str, proc: subprocess.Popen[bytes], timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{url} exited with {proc.returncode}")
        try:
            if httpx.get(url, timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{url} did not answer within {timeout:.0f} s")


def _on_topic(settings: Any, topic: str) -> int:
    from kafka import TopicPartition

    from services.common.kafka import make_consumer

    consumer = make_consumer(settings)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        return sum(consumer.end_offsets(parts).values()) - sum(
            consumer.beginning_offsets(parts).values()
        )
    finally:
        consumer.close()


def run_bench(*, duration: float, connections: int, batch: int, use_httpx: bool = False) -> int:
    from bench.scratch import free_port
    from services.common.kafka import ensure_topics, make_admin
    from services.common.settings import CommonSettings, env_for, load_settings
    from services.stack.local import LocalStack

    base = load_settings(CommonSettings)
    LocalStack(base).up()
    run = uuid.uuid4().hex[:8]
    topic = f"bench-{run}.user-events"
    settings = base.model_copy(update={"topic_events": topic, "key_prefix": f"bench-{run}"})
    ensure_topics(settings, [topic])
    ports = {"ingest": free_port(), "discard": free_port()}
    env = env_for(settings) | {
        "CHURNWATCH_ENV": "development",
        "CHURNWATCH_INGEST_PORT": str(ports["ingest"]),
        "CHURNWATCH_LOG_LEVEL": "warning",
        "PYTHONPATH": str(ROOT),
    }
    logs = settings.home.resolve() / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    procs = {
        "ingest": [sys.executable, "-m", "services.cli", "ingest"],
        "discard": [
            sys.executable,
            "-m",
            "bench.ingest",
            "discard",
            "--port",
            str(ports["discard"]),
        ],
    }
    running: dict[str, subprocess.Popen[bytes]] = {}
    results: dict[str, dict[str, Any]] = {}
    try:
        for name, cmd in procs.items():
            out = (logs / f"bench-{name}.log").open("ab")
            running[name] = subprocess.Popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, env=env, cwd=ROOT
            )
        for name, proc in running.items():
            _wait(f"http://127.0.0.1:{ports[name]}/healthz", proc)
        with ProcessPoolExecutor(1, mp_context=get_context("spawn")) as pool:
            for name in ("discard", "ingest"):
                url = f"http://127.0.0.1:{ports[name]}/v1/events"
                results[name] = pool.submit(
                    load, url, duration, connections, batch, run, use_httpx
                ).result()
                print(f"{name:8} {orjson.dumps(results[name]).decode()}", flush=True)
    finally:
        for proc in running.values():
            proc.terminate()
        for proc in running.values():
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
    on_topic = _on_topic(settings, topic)
    print(
        f"events on {topic}: {on_topic} (ingest acknowledged {results['ingest']['events']} "
        f"in the measured window, plus the warm-up)",
        flush=True,
    )
    admin = make_admin(settings)
    try:
        admin.delete_topics([topic])
    finally:
        admin.close()
    value, baseline = results["ingest"]["rate"], results["discard"]["rate"]
    summary = {
        "name": "ingest",
        "value": round(value),
        "unit": "events/s",
        "baseline_value": round(baseline),
        "ratio": round(value / baseline, 4) if baseline else None,
    }
    print(orjson.dumps(summary).decode(), flush=True)
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ingest")
    sub = parser.add_subparsers(dest="what", required=True)
    discard = sub.add_parser("discard", help="serve the baseline endpoint")
    discard.add_argument("--port", type=int, required=True)
    run = sub.add_parser("run", help="the whole benchmark")
    run.add_argument("--duration", type=float, default=15.0)
    run.add_argument("--connections", type=int, default=4)
    run.add_argument("--batch", type=int, default=500)
    run.add_argument("--httpx", action="store_true", help="send with httpx, as before 2026-12-06")
    args = parser.parse_args(argv)
    if args.what == "discard":
        serve_discard(args.port)
        return 0
    return run_bench(
        duration=args.duration,
        connections=args.connections,
        batch=args.batch,
        use_httpx=args.httpx,
    )


if __name__ == "__main__":
    os.environ.setdefault("PYTHONPATH", str(ROOT))
    sys.exit(main())

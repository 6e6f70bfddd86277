"""Where simulated events go: a JSONL file, the ingest HTTP API, or Kafka.

Each sink takes events one at a time in event-time order; the live ones pace
themselves to ``rate`` events per second and send in batches.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import IO, Any, Protocol

import orjson

from services.common.errors import ChurnwatchError

BATCH = 500


class Sink(Protocol):
    def send(self, ev: dict[str, Any]) -> None: ...
    def close(self) -> None: ...


class FileSink:
    """``events.jsonl``: one schema-v1 event per line."""

    def __init__(self, path: Path) -> None:
        self.fh: IO[bytes] = path.open("wb")

    def send(self, ev: dict[str, Any]) -> None:
        self.fh.write(orjson.dumps(ev) + b"\n")

    def close(self) -> None:
        self.fh.close()


class Pacer:
    """Sleeps so that the n-th event goes out no earlier than ``n / rate`` seconds in."""

    def __init__(self, rate: float | None) -> None:
        self.rate, self.n, self.t0 = rate, 0, time.monotonic()

    def tick(self, k: int) -> None:
        self.n += k
        if self.rate:
            ahead = self.n / self.rate - (time.monotonic() - self.t0)
            if ahead > 0:
                time.sleep(ahead)


class IngestSink:
    """POST NDJSON batches to ingest's ``/v1/events`` with the development key."""

    def __init__(self, url: str, *, rate: float | None, key: str = "dev-key") -> None:
        import httpx

        self.url = url.rstrip("/") + (
            "" if url.rstrip("/").endswith("/v1/events") else "/v1/events"
        )
        self.client = httpx.Client(timeout=30.0)
        self.headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {key}"}
        self.batch: list[bytes] = []
        self.pacer = Pacer(rate)
        self.size = BATCH if not rate else max(1, min(BATCH, int(rate / 10)))

    def send(self, ev: dict[str, Any]) -> None:
        self.batch.append(orjson.dumps(ev))
        if len(self.batch) >= self.size:
            self._flush()

    def _flush(self) -> None:
        import httpx

        if not self.batch:
            return
        body = b"\n".join(self.batch)
        for _ in range(30):
            try:
                r = self.client.post(self.url, content=body, headers=self.headers)
            except httpx.TransportError:
                time.sleep(1.0)
                continue
            if r.status_code == 503:
                time.sleep(float(r.headers.get("Retry-After", "1")))
                continue
            if r.status_code >= 400 and r.status_code != 207:
                raise ChurnwatchError(
                    f"ingest at {self.url} answered {r.status_code}: {r.text[:200]}"
                )
            break
        else:
            raise ChurnwatchError(f"ingest at {self.url} did not take the events for 30 tries")
        self.pacer.tick(len(self.batch))
        self.batch = []

    def close(self) -> None:
        self._flush()
        self.client.close()


class KafkaSink:
    """Produce straight to the events topic (key = user_id), as a product service would."""

    def __init__(self, *, rate: float | None) -> None:
        from services.common.kafka import make_producer
        from services.common.settings import CommonSettings, load_settings

        settings = load_settings(CommonSettings)
        self.topic = settings.topic_events
        self.producer = make_producer(settings)
        self.pacer = Pacer(rate)

    def send(self, ev: dict[str, Any]) -> None:
        self.producer.send(self.topic, key=ev["user_id"].encode(), value=orjson.dumps(ev))
        self.pacer.tick(1)

    def close(self) -> None:
        self.producer.flush()
        self.producer.close()


class Progress:
    """A one-line progress bar on stderr, redrawn at most five times a second."""

    def __init__(self, total: float, *, enabled: bool = True, stream: IO[str] = sys.stderr) -> None:
        self.total, self.enabled, self.stream = total, enabled, stream
        self.t0 = self.last = time.monotonic()

    def show(self, done: float, count: int, *, final: bool = False) -> None:
        now = time.monotonic()
        if not self.enabled or (not final and now - self.last < 0.2):
            return
        self.last = now
        frac = min(1.0, max(0.0, done / self.total)) if self.total else 1.0
        bar = "#" * int(frac * 30)
        speed = count / max(now - self.t0, 1e-9)
        self.stream.write(f"\r[{bar:<30}] {frac:4.0%} {count:,} events {speed:,.0f}/s")
        if final:
            self.stream.write("\n")
        self.stream.flush()

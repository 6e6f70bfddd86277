"""The broker and the store go away mid-stream, on the private stack only.

- Kafka: the broker process is killed (SIGKILL through its pid file, as a crash
  would) while a client keeps posting to ingest. Ingest answers 503 with
  Retry-After while the broker is gone and accepts again once it is back,
  without being restarted; every event it acknowledged is on the topic. The
  scorer, running throughout, consumes all of them afterwards.
- Redis (append-only file): killed and started again while events stream to
  the scorer. The scorer waits, retries and resumes; afterwards every user's
  features equal a recount of the events.
- Rebalance: two scorer workers in one group over four partitions, the second
  started mid-stream and the first stopped (SIGTERM) later; the features equal
  the recount, as with a single worker.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import httpx
import orjson
import pytest

from services.launcher import Services, wait_http
from tests.chaos.conftest import (
    PrivateStack,
    Streamer,
    by_user_id,
    compare_features,
    free_port,
    make_stream,
    read_topic,
    scrape,
    wait_caught_up,
)
from tests.conftest import Isolated

pytestmark = pytest.mark.chaos


class Poster(threading.Thread):
    """A client posting NDJSON batches to ingest without pause, noting what was acknowledged."""

    def __init__(self, url: str, *, batch: int = 100) -> None:
        super().__init__(daemon=True)
        self.url, self.batch = url, batch
        self.acked: set[str] = set()
        self.log: list[tuple[float, int, str | None]] = []  # (time, status, Retry-After)
        self.errors: list[str] = []
        self.stopping = threading.Event()
        self.seq = 0

    def events(self) -> list[dict[str, Any]]:
        out = []
        for _ in range(self.batch):
            self.seq += 1
            uid = f"kr-{self.seq % 500:04d}"
            out.append(
                {
                    "event_id": f"kr-{self.seq:07d}",
                    "user_id": uid,
                    "type": "page_view",
                    "occurred_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
                    "context": {"timezone": "UTC"},
                }
            )
        return out

    def run(self) -> None:
        with httpx.Client(timeout=60) as client:
            while not self.stopping.is_set():
                sent = self.events()
                body = b"\n".join(orjson.dumps(e) for e in sent)
                try:
                    reply = client.post(
                        self.url,
                        content=body,
                        headers={
                            "Content-Type": "application/x-ndjson",
                            "Authorization": "Bearer dev-key",
                        },
                    )
                except httpx.HTTPError as exc:  # ingest itself must stay up
                    self.errors.append(repr(exc))
                    time.sleep(0.5)
                    continue
                self.log.append(
                    (time.monotonic(), reply.status_code, reply.headers.get("Retry-After"))
                )
                if reply.status_code == 200:
                    self.acked.update(e["event_id"] for e in sent)
                elif reply.status_code == 503:
                    data = reply.json()
                    not_taken = {item["index"] for item in data.get("not_taken", [])}
                    self.acked.update(
                        e["event_id"] for i, e in enumerate(sent) if i not in not_taken
                    )
                    time.sleep(min(float(reply.headers.get("Retry-After", "1")), 1.0))
                else:
                    self.errors.append(f"{reply.status_code}: {reply.text[:300]}")

    def statuses(self, start: float, end: float) -> list[int]:
        return [status for t, status, _ in self.log if start <= t < end]


def test_ingest_survives_a_broker_crash(chaos: Isolated, private_stack: PrivateStack) -> None:
    env = chaos.env | {"CHURNWATCH_INGEST_PRODUCE_TIMEOUT_S": "3"}
    ingest = Services(chaos.settings, env, names=("ingest",), logs=chaos.out / "logs")
    scorer = Services(chaos.settings, env, names=("scorer",), logs=chaos.out / "logs")
    ingest.start()
    poster = Poster(chaos.url("ingest") + "/v1/events")
    try:
        wait_http(chaos.url("ingest") + "/healthz", 60, ingest)
        scorer.start()
        poster.start()
        deadline = time.monotonic() + 60  # the worker is up and consuming before the crash
        while events_total(chaos.url("scorer") + "/metrics") == 0:
            scorer.check()
            assert time.monotonic() < deadline, "the scorer did not start consuming"
            time.sleep(0.5)
        assert poster.acked, f"nothing acknowledged before the crash: {poster.errors[:3]}"
        killed = time.monotonic()
        private_stack.kill_kafka()
        # Longer than the producer's delivery timeout (30 s): its buffered batches expire,
        # which is what once left ingest unable to send again until restarted.
        time.sleep(35)
        down = [(s, ra) for t, s, ra in poster.log if t > killed + 4]
        restarted = time.monotonic()
        private_stack.start_kafka()
        back = time.monotonic()
        deadline = back + 90
        while time.monotonic() < deadline and 200 not in poster.statuses(back, time.monotonic()):
            ingest.check()
            time.sleep(0.5)
        time.sleep(3)
        ingest.check()  # never restarted: the same process answered throughout
        poster.stopping.set()
        poster.join(timeout=90)
        # The Faust worker rode out the outage too and consumed everything afterwards.
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_SCORER_GROUP"],
            chaos.settings.topic_events,
            timeout=120,
            check=scorer.check,
        )
    finally:
        poster.stopping.set()
        poster.join(timeout=90)
        ingest.stop()
        scorer.stop()

    assert not poster.errors, f"ingest failed other than 503: {poster.errors[:5]}"
    assert down, "no answer at all while the broker was down"
    assert {s for s, _ in down} == {503}, f"while down: {sorted({s for s, _ in down})}"
    assert all(ra is not None and int(ra) > 0 for _, ra in down), "503 without Retry-After"
    after = poster.statuses(back, time.monotonic())
    assert 200 in after, f"ingest did not accept again after the restart: {after[-10:]}"
    on_topic = {
        orjson.loads(m.value)["event_id"]
        for m in read_topic(chaos.settings, chaos.settings.topic_events)
    }
    lost = poster.acked - on_topic
    assert not lost, f"{len(lost)} acknowledged events are not on the topic"
    print(
        f"acked {len(poster.acked)}, on topic {len(on_topic)}; "
        f"broker down {restarted - killed:.0f} s, back in {back - restarted:.0f} s; "
        f"{len(down)} answers while down"
    )


def test_scorer_waits_out_a_redis_restart(chaos: Isolated, private_stack: PrivateStack) -> None:
    now = time.time()
    events = make_stream(now, 400, seed=5, days=14, prefix="rr")
    scorer = Services(chaos.settings, chaos.env, names=("scorer",), logs=chaos.out / "logs")
    streamer = Streamer(chaos, events, rate=len(events) / 24)
    try:
        scorer.start()
        streamer.start()
        time.sleep(8)
        private_stack.kill_redis()
        time.sleep(5)  # the scorer meets a dead store for a while
        private_stack.start_redis()
        streamer.join(timeout=120)
        assert streamer.error is None, f"streaming failed: {streamer.error!r}"
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_SCORER_GROUP"],
            chaos.settings.topic_events,
            timeout=120,
            check=scorer.check,
        )
        retried = scrape(chaos.url("scorer") + "/metrics")["churnwatch_scorer_store_errors_total"]
    finally:
        scorer.stop()
    assert retried > 0, "the scorer never met the Redis outage: the test proved nothing"
    mismatches = compare_features(chaos.settings, by_user_id(events), now)
    assert not mismatches, f"{len(mismatches)} feature mismatches, e.g. {mismatches[:5]}"
    print(f"{len(events)} events; the scorer retried {retried:.0f} times during the outage")


def test_rebalance_between_two_workers(chaos: Isolated) -> None:
    """A second worker joins mid-stream, the first leaves (SIGTERM) later: same features."""
    now = time.time()
    events = make_stream(now, 600, seed=8, days=14, prefix="rb")
    logs = chaos.out / "logs"
    port2 = free_port()
    first = Services(chaos.settings, chaos.env, names=("scorer",), logs=logs / "w1")
    second = Services(
        chaos.settings,
        chaos.env
        | {
            "CHURNWATCH_SCORER_METRICS_PORT": str(port2),
            "CHURNWATCH_SCORER_WORKER_NAME": f"t{chaos.run}-w2",
        },
        names=("scorer",),
        logs=logs / "w2",
    )
    streamer = Streamer(chaos, events, rate=len(events) / 30)
    url2 = f"http://127.0.0.1:{port2}/metrics"
    try:
        first.start()
        streamer.start()
        time.sleep(8)
        second.start()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and events_total(url2) == 0:
            first.check()
            second.check()
            time.sleep(0.5)
        assert events_total(url2) > 0, "the second worker never got a partition"
        time.sleep(4)
        by_first = events_total(chaos.url("scorer") + "/metrics")
        first.stop()  # SIGTERM: a clean leave, partitions move to the second
        assert first.procs["scorer"].returncode is not None
        streamer.join(timeout=120)
        assert streamer.error is None, f"streaming failed: {streamer.error!r}"
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_SCORER_GROUP"],
            chaos.settings.topic_events,
            timeout=120,
            check=second.check,
        )
        by_second = events_total(url2)
    finally:
        first.stop()
        second.stop()
    mismatches = compare_features(chaos.settings, by_user_id(events), now)
    assert not mismatches, f"{len(mismatches)} feature mismatches, e.g. {mismatches[:5]}"
    print(f"{len(events)} events: first worker took {by_first:.0f}, second {by_second:.0f}")


def events_total(url: str) -> float:
    try:
        return scrape(url).get("churnwatch_scorer_events_total", 0.0)
    except httpx.HTTPError:
        return 0.0

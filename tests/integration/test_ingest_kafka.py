"""The ingest app on the real local Kafka and Redis (uvicorn in a thread of this process).

What is not covered here: the broker going away *after* the producer connected,
and coming back. Issue 9 (chaos) restarts the real broker for that; this file
must not stop the broker that other tests share. Instead, the outage test points
ingest at a bootstrap address where nothing listens, then opens a TCP proxy to
the real broker on that address: the same publisher, without a restart, then
produces (Kafka's metadata sends the client on to the broker itself).
"""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import orjson
import pytest
import uvicorn
from kafka import KafkaConsumer
from kafka.partitioner.default import murmur2

from services.common.auth import RedisKeyStore, create_key
from services.ingest.adapters import make_publisher
from services.ingest.app import create_app
from services.ingest.config import IngestSettings
from tests.conftest import Isolated, free_port

pytestmark = pytest.mark.integration


@pytest.fixture(params=["librdkafka", "kafka-python"])
def producer(request: pytest.FixtureRequest) -> str:
    """Both publishers keep the same promises."""
    return str(request.param)


def event(n: int, **changes: Any) -> dict[str, Any]:
    e = {
        "event_id": f"it-{n}",
        "user_id": f"user-{n % 5}",
        "type": "page_view",
        "occurred_at": "2026-11-23T09:15:00Z",
    }
    return e | changes


@contextmanager
def serve(settings: IngestSettings) -> Iterator[str]:
    app = create_app(settings, make_publisher(settings))
    config = uvicorn.Config(
        app, host="127.0.0.1", port=settings.ingest_port, log_config=None, access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield f"http://127.0.0.1:{settings.ingest_port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def ingest_settings(isolated: Isolated, producer: str, **changes: Any) -> IngestSettings:
    base = isolated.settings.model_dump()
    return IngestSettings(
        **base
        | {
            "ingest_port": isolated.ports["ingest"],
            "ingest_produce_timeout_s": 5.0,
            "ingest_producer": producer,
        }
        | changes
    )


def read_topic(
    isolated: Isolated, topic: str, *, partitions: dict[bytes, set[int]] | None = None
) -> list[tuple[bytes, dict[str, Any]]]:
    """The records on ``topic``; ``partitions`` collects the partitions each key was on."""
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=isolated.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=5_000,
        enable_auto_commit=False,
    )
    try:
        records = []
        for msg in consumer:
            records.append((msg.key, orjson.loads(msg.value)))
            if partitions is not None:
                partitions.setdefault(msg.key, set()).add(msg.partition)
        return records
    finally:
        consumer.close()


def test_accepted_events_are_on_the_topic_once_keyed_by_user(
    isolated: Isolated, producer: str
) -> None:
    settings = ingest_settings(isolated, producer)
    key = create_key(
        RedisKeyStore(settings.redis_url, key_prefix=settings.key_prefix), scopes=["ingest"]
    )
    headers = {"Authorization": f"Bearer {key}"}
    good = [event(n) for n in range(40)]
    bad = [event(100, type="Not A Type"), event(101, occurred_at="2026-02-30T00:00:00Z")]
    with serve(settings) as url, httpx.Client(base_url=url, headers=headers, timeout=30) as http:
        first = http.post("/v1/events", content=orjson.dumps(good[:20] + bad))
        assert first.status_code == 207, first.text
        assert first.json()["accepted"] == 20
        assert [r["index"] for r in first.json()["rejected"]] == [20, 21]
        # A retry of the first half and the second half, as NDJSON.
        second = http.post(
            "/v1/events",
            content=b"\n".join(orjson.dumps(e) for e in good),
            headers={"Content-Type": "application/x-ndjson"},
        )
        assert second.json() == {"accepted": 40, "duplicates": 20, "rejected": []}
        assert http.get("/readyz").status_code == 200

    partitions: dict[bytes, set[int]] = {}
    on_topic = read_topic(isolated, settings.topic_events, partitions=partitions)
    ids = [value["event_id"] for _, value in on_topic]
    assert sorted(ids) == sorted(e["event_id"] for e in good)  # each exactly once, no bad ones
    assert all(k == v["user_id"].encode() for k, v in on_topic)
    # Both clients partition like the Java default (murmur2), so a user's events
    # stay on one partition whichever producer wrote them.
    count = settings.topic_partitions
    assert partitions == {k: {(murmur2(k) & 0x7FFFFFFF) % count} for k in partitions}
    assert all(v["received_at"].endswith("Z") for _, v in on_topic)


class Proxy:
    """Forwards 127.0.0.1:<port> to the real broker, in a thread, once started."""

    def __init__(self, port: int, target: str) -> None:
        self.port = port
        host, _, tport = target.split(",")[0].rpartition(":")
        self.target = (host, int(tport))
        self.loop = asyncio.new_event_loop()
        self.ready = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> Proxy:
        self.thread.start()
        assert self.ready.wait(10)
        return self

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        server = self.loop.run_until_complete(
            asyncio.start_server(self._pipe, "127.0.0.1", self.port)
        )
        self.ready.set()
        self.loop.run_forever()
        server.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        up_reader, up_writer = await asyncio.open_connection(*self.target)

        async def copy(src: asyncio.StreamReader, dst: asyncio.StreamWriter) -> None:
            try:
                while data := await src.read(65536):
                    dst.write(data)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(copy(reader, up_writer), copy(up_reader, writer))

    def stop(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(timeout=10)


def test_unreachable_broker_is_503_then_recovers_without_restart(
    isolated: Isolated, producer: str
) -> None:
    port = free_port()  # nothing listens here yet
    settings = ingest_settings(isolated, producer, kafka_bootstrap=f"127.0.0.1:{port}")
    headers = {"Authorization": "Bearer dev-key"}
    proxy = Proxy(port, isolated.settings.kafka_bootstrap)
    with serve(settings) as url, httpx.Client(base_url=url, headers=headers, timeout=60) as http:
        down = http.post("/v1/events", content=orjson.dumps([event(1), event(2)]))
        assert down.status_code == 503, down.text
        assert int(down.headers["Retry-After"]) >= 1
        assert [t["index"] for t in down.json()["not_taken"]] == [0, 1]
        assert down.json()["error"]
        assert http.get("/readyz").status_code == 503

        proxy.start()  # the broker is reachable at the bootstrap address from now on
        try:
            up = http.post("/v1/events", content=orjson.dumps([event(1), event(2)]))
            assert up.status_code == 200, up.text
            assert up.json() == {"accepted": 2, "duplicates": 0, "rejected": []}
            assert http.get("/readyz").status_code == 200
        finally:
            proxy.stop()

    ids = sorted(v["event_id"] for _, v in read_topic(isolated, settings.topic_events))
    assert ids == ["it-1", "it-2"]


def test_librdkafka_publisher_async_and_blocking_paths_answer_alike(isolated: Isolated) -> None:
    """The app awaits ``publish_async`` (no thread per request); ``publish`` blocks.

    Both give one answer per record, in order; nothing to send answers at once;
    a broker that never answers gives every record an error once the produce
    timeout has passed, instead of a request that never returns.
    """
    from services.ingest.adapters.rdkafka_publisher import RdKafkaPublisher

    settings = ingest_settings(isolated, "librdkafka")
    publisher = RdKafkaPublisher(settings, topic=settings.topic_events, timeout_s=5.0)
    records = [(b"user-%d" % (n % 7), orjson.dumps(event(n))) for n in range(300)]
    try:
        assert asyncio.run(publisher.publish_async(records[:200])) == [None] * 200
        assert publisher.publish(records[200:]) == [None] * 100
        assert asyncio.run(publisher.publish_async([])) == []
    finally:
        publisher.close()
    ids = sorted(value["event_id"] for _, value in read_topic(isolated, settings.topic_events))
    assert ids == sorted(orjson.loads(v)["event_id"] for _, v in records)

    nowhere = settings.model_copy(update={"kafka_bootstrap": f"127.0.0.1:{free_port()}"})
    lost = RdKafkaPublisher(nowhere, topic=settings.topic_events, timeout_s=1.0)
    try:
        answers = asyncio.run(publisher_async_with_deadline(lost, records[:3], within_s=15))
    finally:
        lost.close()
    assert len(answers) == 3 and all(a is not None for a in answers), answers


async def publisher_async_with_deadline(publisher: Any, records: Any, *, within_s: float) -> Any:
    return await asyncio.wait_for(publisher.publish_async(records), within_s)


def test_a_late_acknowledgement_after_the_loop_closed_leaves_the_publisher_working() -> None:
    """A request that stopped waiting, on a loop that is gone by the time librdkafka
    gives up on its records: the callback must not end the poller thread."""
    from services.ingest.adapters.rdkafka_publisher import DeliveryFailed, RdKafkaPublisher

    settings = IngestSettings(kafka_bootstrap=f"127.0.0.1:{free_port()}")
    publisher = RdKafkaPublisher(settings, topic="nowhere", timeout_s=1.0)
    records = [(b"u", b"{}")]
    try:
        with pytest.raises(TimeoutError):
            asyncio.run(publisher_async_with_deadline(publisher, records, within_s=0.1))
        time.sleep(2.0)  # the record expires now, its callback finds the loop closed
        # The poller still serves callbacks: the record expires with librdkafka's own
        # error, not with "no acknowledgement in time" after the wait gave up.
        answers = publisher.publish(records)
        assert len(answers) == 1 and isinstance(answers[0], DeliveryFailed), answers
    finally:
        publisher.close()


def test_ingest_creates_its_topics_at_start(isolated_each: Isolated) -> None:
    """With auto-creation off, events would be refused until a worker had started once."""
    from services.common.kafka import make_admin
    from services.ingest.__main__ import make_topics

    names = {f"topic_{k}": f"mk{isolated_each.run}.{k}" for k in ("events", "alerts", "dlq")}
    settings = IngestSettings(**names)  # type: ignore[arg-type]
    assert make_topics(settings, sleep=lambda s: pytest.fail("no retry with Kafka up"))
    admin = make_admin(settings)
    try:
        assert set(names.values()) <= set(admin.list_topics())
        admin.delete_topics(list(names.values()))
    finally:
        admin.close()

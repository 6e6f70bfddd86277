"""When the probes of ``churnwatch bench e2e-latency`` reach their topics.

:class:`Follower` reads the topics in a process of its own and records when
each probe key first appears on each; :func:`append_time_topics` has the
broker stamp their records with its append time, which is the time recorded.
"""

from __future__ import annotations

import multiprocessing
import time
import uuid
from typing import Any

from services.common.kafka import make_admin
from services.common.kafka_security import librdkafka_options
from services.common.settings import CommonSettings


class Follower:
    """Records when each probe key first shows up on some topics, in a process of its own.

    A separate process with librdkafka's consumer (C), so that reading every
    background event (to find the probes among them) neither shares the load
    generator's GIL nor lags behind it: in a thread with kafka-python it did,
    and its lag was most of the "transport" figure.
    """

    def __init__(self, settings: CommonSettings, topics: list[str]) -> None:
        options = {"bootstrap.servers": settings.kafka_bootstrap, **librdkafka_options(settings)}
        self._ready, self._stop = multiprocessing.Event(), multiprocessing.Event()
        self._results, child = multiprocessing.Pipe(duplex=False)
        self._process = multiprocessing.Process(
            target=_follow, args=(options, topics, self._ready, self._stop, child), daemon=True
        )

    def start(self, timeout: float = 30.0) -> None:
        self._process.start()
        if not self._ready.wait(timeout):
            raise RuntimeError("the probe follower did not get its partitions in time")

    def stop(self) -> dict[str, dict[str, float]]:
        """Topic -> probe key -> when it was first seen."""
        self._stop.set()
        seen: dict[str, dict[str, float]] = self._results.recv() if self._results.poll(30) else {}
        self._process.join(10)
        return seen


def _follow(options: dict[str, Any], topics: list[str], ready: Any, stop: Any, out: Any) -> None:
    from confluent_kafka import OFFSET_END, TIMESTAMP_LOG_APPEND_TIME, Consumer
    from confluent_kafka import TopicPartition as Partition

    consumer = Consumer(
        options
        | {"group.id": f"bench-follow-{uuid.uuid4().hex[:8]}", "enable.auto.commit": False}
        | {"fetch.wait.max.ms": 5}
    )
    listed = consumer.list_topics(timeout=10).topics
    consumer.assign([Partition(t, p, OFFSET_END) for t in topics for p in listed[t].partitions])
    consumer.consume(num_messages=1, timeout=1.0)  # the end offsets are resolved now
    ready.set()
    seen: dict[str, dict[str, float]] = {t: {} for t in topics}
    while not stop.is_set():
        for msg in consumer.consume(num_messages=1000, timeout=0.05):
            key = msg.key()
            if msg.error() is None and key and key.startswith(b"probe-"):
                # The broker's append time (the topics are LogAppendTime, see
                # append_time_topics): when the record was on its topic, to the
                # millisecond, however late this loop reads it.
                kind, millis = msg.timestamp()
                at = millis / 1000 if kind == TIMESTAMP_LOG_APPEND_TIME else time.time()
                topic = msg.topic()
                assert topic is not None  # a record without an error has its topic
                seen[topic].setdefault(key.decode(), at)
    consumer.close()
    out.send(seen)


def append_time_topics(settings: CommonSettings, topics: list[str]) -> None:
    """Make the broker stamp each record of ``topics`` with its own append time."""
    from kafka.admin import ConfigResource, ConfigResourceType

    admin = make_admin(settings)
    try:
        admin.alter_configs(
            [
                ConfigResource(
                    ConfigResourceType.TOPIC,
                    topic,
                    configs={"message.timestamp.type": "LogAppendTime"},
                )
                for topic in topics
            ]
        )
    finally:
        admin.close()

"""Raw garbage straight on user-events: dead-lettered with a reason, counted, stream goes on.

Messages that skip ingest's validation (a service producing to Kafka itself)
reach the scorer as they are. Each bad one must come out on the dead-letter
topic with a reason and its source offset, be counted in
``churnwatch_scorer_dead_letters_total`` (scraped from the scorer's metrics
port), and the valid events sent after all of them must still be applied.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
import redis
from kafka import KafkaProducer

from services.launcher import Services
from services.scorer.adapters.redis_store import user_key
from tests.chaos.conftest import read_topic, scrape
from tests.conftest import Isolated

pytestmark = pytest.mark.chaos

MIB = 1024 * 1024


def valid(n: int, uid: str) -> dict[str, Any]:
    return {
        "event_id": f"ok-{uid}-{n}",
        "user_id": uid,
        "type": "login",
        "occurred_at": "2026-11-20T10:00:00Z",
        "context": {"timezone": "UTC"},
    }


def bad_messages() -> list[tuple[str, bytes, bytes, str]]:
    """(name, key, value, what the reason must mention)."""
    good = valid(0, "bad-user")
    return [
        ("invalid JSON", b"bad-user", b'{"event_id": "x", "user_id": ', "JSON"),
        ("not an object", b"bad-user", b'["a", "list"]', ""),
        ("wrong types", b"bad-user", orjson.dumps({**good, "user_id": 42}), "user_id"),
        ("bad time", b"bad-user", orjson.dumps({**good, "occurred_at": "yesterday"}), ""),
        (
            "missing field",
            b"bad-user",
            orjson.dumps({k: v for k, v in good.items() if k != "type"}),
            "type",
        ),
        (
            "unknown schema_version",
            b"bad-user",
            orjson.dumps({**good, "event_id": "v9", "schema_version": 9}),
            "schema_version",
        ),
        ("1 MiB of garbage", b"bad-user", b"\xff" * MIB, ""),
        (
            "1 MiB event",
            b"bad-user",
            orjson.dumps({**good, "event_id": "big", "properties": {"blob": "x" * MIB}}),
            "",
        ),
        ("empty key", b"", orjson.dumps({**good, "event_id": "nokey", "user_id": ""}), "user_id"),
        ("empty value", b"bad-user", b"", "empty"),
    ]


def dead_letter_count(url: str) -> float:
    samples = scrape(url + "/metrics")
    return sum(
        v for k, v in samples.items() if k.startswith("churnwatch_scorer_dead_letters_total{")
    )


def test_bad_messages_go_to_the_dead_letter_topic(chaos: Isolated) -> None:
    bad = bad_messages()
    producer = KafkaProducer(
        bootstrap_servers=chaos.settings.kafka_bootstrap,
        acks="all",
        max_request_size=2 * MIB,
    )
    topic = chaos.settings.topic_events
    # Everything on one partition (same key), valid events after the garbage.
    for _, key, value, _ in bad:
        producer.send(topic, value, key=key, partition=0)
    after = [valid(i, f"after-{i}") for i in range(20)]
    for e in after:
        producer.send(topic, orjson.dumps(e), key=e["user_id"].encode())
    producer.flush(timeout=60)
    producer.close()

    scorer = Services(chaos.settings, chaos.env, names=("scorer",), logs=chaos.out / "logs")
    scorer.start()
    r = redis.Redis.from_url(chaos.settings.redis_url)
    try:
        deadline = time.monotonic() + 90
        missing = after
        while missing and time.monotonic() < deadline:
            scorer.check()
            missing = [
                e
                for e in after
                if not r.exists(user_key(chaos.settings.key_prefix, e["user_id"], "s"))
            ]
            time.sleep(0.5)
        assert not missing, f"{len(missing)} valid events after the bad ones were not applied"
        counted = dead_letter_count(chaos.url("scorer"))
    finally:
        scorer.stop()
        r.close()

    dead = [orjson.loads(m.value) for m in read_topic(chaos.settings, chaos.settings.topic_dlq)]
    by_offset = {d["source"]["offset"]: d for d in dead if d["source"]["partition"] == 0}
    problems = []
    for offset, (name, _, value, mention) in enumerate(bad):
        d = by_offset.get(offset)
        if d is None:
            problems.append(f"{name}: not dead-lettered")
            continue
        if not d["reason"] or (mention and mention.lower() not in d["reason"].lower()):
            problems.append(f"{name}: reason {d['reason']!r} does not mention {mention!r}")
        if d["stage"] != "scorer" or d["source"]["topic"] != topic:
            problems.append(f"{name}: wrong stage or source {d['stage']} {d['source']}")
        if len(value) > 64 * 1024 and not d.get("truncated"):
            problems.append(f"{name}: payload of {len(value)} bytes not marked truncated")
    assert not problems, "\n".join(problems)
    assert len(dead) == len(bad), f"{len(dead)} dead letters for {len(bad)} bad messages"
    assert counted == len(bad), f"dead_letters_total says {counted}, {len(bad)} were sent"

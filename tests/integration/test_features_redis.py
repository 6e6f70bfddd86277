"""The scorer worker's features on real Kafka and Redis equal a straightforward recount.

100,000 events of 10,000 users, shuffled within the lateness tolerance and with
1 % re-sent (same ``event_id``), go to the test's own topic; one scorer process
consumes them. Then every user's stored state is decoded and its vector
compared with an independent computation over the raw events written here
(no code from ``core.features``). Events later than the tolerance, sent once
everything else is in, must come out on the dead-letter topic with the reason.

The test runs twice: on the single Redis, and on a three-master Redis Cluster
(``CHURNWATCH_REDIS_CLUSTER=true``), where the scorer writes each user's keys
atomically per slot instead of one transaction per batch.
"""

from __future__ import annotations

import random
import time
from collections import defaultdict
from datetime import UTC, datetime
from typing import Any
from zoneinfo import ZoneInfo

import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer

from services.common.redis_client import sync_redis
from services.launcher import Services
from services.scorer.adapters.redis_store import split_user, user_key
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.sim.generator import ZONES
from tests.conftest import Isolated, scraped

pytestmark = pytest.mark.integration

N_USERS = 10_000
N_EVENTS = 100_000
N_LATE = 25
DAY = 86_400
END = 1_795_000_000  # 2026-11-18, fixed so runs are reproducible
NOW = END + 5 * 3600
SPREAD_S = 40 * 3600  # shuffle within 40 h: less than the 48 h tolerance
FEATURES = ("search", "playlist", "share", "export", "offline", "profile")
TYPES = (
    ["session_start"] * 8
    + ["session_end"] * 6
    + ["feature_used"] * 6
    + ["page_view"] * 5
    + ["login"] * 4
    + ["purchase"] * 2
    + ["payment_failed", "support_ticket", "complaint", "plan_downgraded", "made_up_type"]
)
PAYMENTS = {"purchase", "subscription_started", "subscription_renewed"}


def make_events(rng: random.Random) -> list[dict[str, Any]]:
    zones = {f"fu-{i:05d}": rng.choice(ZONES) for i in range(N_USERS)}
    events = []
    for i in range(N_EVENTS):
        uid = f"fu-{i % N_USERS:05d}"
        ts = END - rng.randrange(0, 80 * DAY) if i >= N_USERS else END - 85 * DAY
        kind = "signup" if i < N_USERS else rng.choice(TYPES)
        props: dict[str, Any] = {}
        if kind == "signup":
            props["plan"] = rng.choice(("free", "basic", "premium"))
        elif kind == "purchase":
            props["amount"] = round(rng.uniform(1, 80), 2)
        elif kind == "session_end":
            props["duration_s"] = rng.randrange(30, 4000)
        elif kind == "feature_used":
            props["feature"] = rng.choice(FEATURES)
        events.append(
            {
                "event_id": f"fe-{i:06d}",
                "user_id": uid,
                "type": kind,
                "occurred_at": datetime.fromtimestamp(ts, UTC).isoformat().replace("+00:00", "Z"),
                "properties": props,
                "context": {"timezone": zones[uid], "platform": "web"},
            }
        )
    return events


def send_order(events: list[dict[str, Any]], rng: random.Random) -> list[dict[str, Any]]:
    """Event-time order jittered by up to 40 h, plus 1 % duplicates within the same jitter."""
    keyed = [(ts_of(e) + rng.uniform(0, SPREAD_S), e) for e in events]
    keyed += [(ts_of(e) + rng.uniform(0, SPREAD_S), e) for e in rng.sample(events, N_EVENTS // 100)]
    keyed.sort(key=lambda pair: pair[0])
    return [e for _, e in keyed]


def ts_of(event: dict[str, Any]) -> int:
    return int(datetime.fromisoformat(event["occurred_at"]).timestamp())


def expected_vector(events: list[dict[str, Any]], now: int) -> dict[str, float]:
    """A plain recount: per local calendar day of the user, windows ending today."""
    unique = {e["event_id"]: e for e in events}.values()
    zone = ZoneInfo(next(iter(unique))["context"]["timezone"])
    today = datetime.fromtimestamp(now, zone).date()

    def age(e: dict[str, Any]) -> int:
        return (today - datetime.fromtimestamp(ts_of(e), zone).date()).days

    def within(days: int) -> list[dict[str, Any]]:
        return [e for e in unique if age(e) < days]

    def count(days: int, *types: str) -> float:
        return float(sum(1 for e in within(days) if not types or e["type"] in types))

    w30 = within(30)
    ends = [e["properties"]["duration_s"] for e in w30 if e["type"] == "session_end"]
    e7, e30 = count(7), count(30)
    times = [ts_of(e) for e in unique]
    plan = next(e["properties"]["plan"] for e in unique if e["type"] == "signup")
    return {
        "recency_days": (now - max(times)) / DAY,
        "tenure_days": (now - min(times)) / DAY,
        **{f"events_{n}d": count(n) for n in (1, 7, 30, 90)},
        **{f"active_days_{n}d": float(len({age(e) for e in within(n)})) for n in (1, 7, 30, 90)},
        "sessions_30d": count(30, "session_start"),
        "mean_session_s": sum(ends) / len(ends) if ends else 0.0,
        "distinct_features_30d": float(
            len({e["properties"]["feature"] for e in w30 if e["type"] == "feature_used"})
        ),
        "purchases_30d": count(30, *PAYMENTS),
        "purchases_90d": count(90, *PAYMENTS),
        "revenue_30d": sum(e["properties"].get("amount", 0) for e in w30),
        "revenue_90d": sum(e["properties"].get("amount", 0) for e in within(90)),
        "is_paid": float(plan != "free"),
        "payment_failures_30d": count(30, "payment_failed"),
        "support_tickets_30d": count(30, "support_ticket"),
        "complaints_30d": count(30, "complaint"),
        "downgrades_90d": count(90, "plan_downgraded"),
        "trend_7d_vs_30d": e7 / (e30 * 7 / 30) if e30 else 1.0,
        "sessions_change": count(7, "session_start")
        - sum(1 for e in within(14) if e["type"] == "session_start" and age(e) >= 7),
        "uninstalled": 0.0,
        "explicit_churn": 0.0,
    }


def produce(isolated: Isolated, events: list[dict[str, Any]]) -> None:
    producer = KafkaProducer(
        bootstrap_servers=isolated.settings.kafka_bootstrap, acks="all", linger_ms=20
    )
    for e in events:
        producer.send(isolated.settings.topic_events, orjson.dumps(e), key=e["user_id"].encode())
    producer.flush(timeout=120)
    producer.close()


def processed(isolated: Isolated) -> float:
    return scraped(isolated.url("scorer"), "churnwatch_scorer_events_total")


def wait_processed(isolated: Isolated, services: Services, total: int) -> None:
    deadline = time.monotonic() + 400  # a bound on a hang, not a performance claim
    while processed(isolated) < total:
        services.check()
        assert time.monotonic() < deadline, f"only {processed(isolated)} of {total} processed"
        time.sleep(0.5)


def dead_letters(isolated: Isolated, want: int) -> list[dict[str, Any]]:
    consumer = KafkaConsumer(
        isolated.settings.topic_dlq,
        bootstrap_servers=isolated.settings.kafka_bootstrap,
        auto_offset_reset="earliest",
        consumer_timeout_ms=2000,
    )
    found: list[dict[str, Any]] = []
    deadline = time.monotonic() + 120
    while len(found) < want and time.monotonic() < deadline:
        found += [orjson.loads(m.value) for m in consumer]
    consumer.close()
    return found


@pytest.fixture(params=["redis", "redis-cluster"])
def on_redis(request: pytest.FixtureRequest) -> Isolated:
    """The usual isolated settings, on the single Redis and then on a Redis Cluster."""
    name = "isolated" if request.param == "redis" else "isolated_cluster"
    iso: Isolated = request.getfixturevalue(name)
    return iso


def test_features_match_an_independent_recount(on_redis: Isolated) -> None:
    isolated = on_redis
    rng = random.Random(20261123)
    events = make_events(rng)
    stream = send_order(events, rng)
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    late_users = rng.sample(sorted(by_user), N_LATE)
    late = [
        {
            **by_user[uid][0],
            "event_id": f"late-{i}",
            "type": "login",
            "occurred_at": datetime.fromtimestamp(
                max(ts_of(e) for e in by_user[uid]) - 3 * DAY, UTC
            ).isoformat(),
        }
        for i, uid in enumerate(late_users)
    ]

    services = Services(isolated.settings, isolated.env, names=("scorer",), logs=isolated.out)
    services.start()
    try:
        produce(isolated, stream)
        wait_processed(isolated, services, len(stream))
        produce(isolated, late)  # only now: every later event of these users is applied
        wait_processed(isolated, services, len(stream) + N_LATE)
        dead = dead_letters(isolated, N_LATE)
    finally:
        services.stop()

    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    prefix = isolated.settings.key_prefix
    uids = sorted(by_user)
    pipe = r.pipeline(transaction=False)
    for uid in uids:
        pipe.get(user_key(prefix, uid, "s"))
    found = zip(uids, pipe.execute(), strict=True)
    stored = {uid: split_user(blob).features if blob else b"" for uid, blob in found}
    assert all(stored.values()), "some users have no stored features"

    mismatches = []
    nonzero: dict[str, int] = defaultdict(int)
    for uid in uids:
        got = to_vector(decode_state(stored[uid]), NOW)
        want = expected_vector(by_user[uid], NOW)
        for key, value in want.items():
            nonzero[key] += value != 0
            if got[key] != pytest.approx(value, abs=1e-6):
                mismatches.append((uid, key, got[key], value))
    assert not mismatches, f"{len(mismatches)} mismatches, e.g. {mismatches[:5]}"
    # The comparison means something only if the data exercise the features.
    trivial = {k for k, n in nonzero.items() if n < 100} - {"uninstalled", "explicit_churn"}
    assert not trivial, f"features hardly ever non-zero in this data: {sorted(trivial)}"

    assert sorted(d["source"]["key"] for d in dead) == sorted(late_users)
    for d in dead:
        assert d["stage"] == "scorer"
        assert d["error_path"] == "occurred_at"
        assert "older than" in d["reason"] and "tolerance 48 h" in d["reason"]
        assert orjson.loads(d["payload"])["event_id"].startswith("late-")

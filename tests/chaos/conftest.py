"""Fixtures of the chaos tests: a private Kafka + Redis that the tests may break.

Other people run tests against the shared local stack at the same time, so the
chaos tests never touch it: ``private_stack`` runs its own :class:`LocalStack`
(the same code as ``churnwatch stack up``) under a temporary
``CHURNWATCH_HOME``, Kafka on a free port pair (broker, controller = broker + 1)
and Redis on another free port, with Kafka's jars linked from the repository's
``.churnwatch/kafka/libs`` (no Maven). It is stopped at the end of the session.

``chaos`` gives each test its own topics and key prefix on that stack
(:class:`tests.conftest.Isolated`). The helpers below read topics to their end,
scrape metrics, wait for a consumer group to catch up, and recount features
from raw events without any code of ``core.features``.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import orjson
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from services.common.settings import CommonSettings, load_settings
from services.sim.generator import history, make_users
from services.stack.local import LocalStack
from services.stack.processes import pid_alive
from tests.conftest import Isolated

REPO = Path(__file__).resolve().parents[2]
DAY = 86_400


def free_port_pair() -> int:
    """A port p with p and p + 1 both free (Kafka's broker and controller)."""
    for _ in range(100):
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = int(s.getsockname()[1])
        if port >= 65535:
            continue
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port + 1))
            except OSError:
                continue
        return port
    raise RuntimeError("no free port pair found")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def link_kafka_jars(home: Path) -> None:
    """Reuse the jars the shared stack fetched, so no test run needs Maven."""
    shared_home = load_settings(CommonSettings).home
    for candidate in (shared_home.resolve() / "kafka" / "libs", REPO / ".churnwatch/kafka/libs"):
        if (candidate / ".complete").exists():
            (home / "kafka").mkdir(parents=True, exist_ok=True)
            (home / "kafka" / "libs").symlink_to(candidate, target_is_directory=True)
            return
    # Not fetched yet: LocalStack fetches them with Maven into the private home.


def _running(pid: int) -> bool:
    """False once the process is gone; LocalStack spawned it from here, so reap it."""
    try:
        if os.waitpid(pid, os.WNOHANG)[0] == pid:
            return False
    except ChildProcessError:
        pass
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


@dataclass
class PrivateStack:
    settings: CommonSettings
    local: LocalStack

    def _kill(self, pid_file: Path, marker: str, sig: signal.Signals) -> None:
        pid = pid_alive(pid_file, marker)
        assert pid is not None, f"{marker} of the private stack is not running"
        os.kill(pid, sig)
        deadline = time.monotonic() + 30
        while _running(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _running(pid), f"{marker} (pid {pid}) did not stop"

    def kill_kafka(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self._kill(self.local.kafka.pid_file, "kafka.Kafka", sig)

    def start_kafka(self) -> None:
        self.local.kafka.start()

    def kill_redis(self, sig: signal.Signals = signal.SIGKILL) -> None:
        self._kill(self.local.redis.pid_file, "redis-server", sig)

    def start_redis(self) -> None:
        self.local.redis.start()


@pytest.fixture(scope="session")
def private_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PrivateStack]:
    home = tmp_path_factory.mktemp("chaos-home")
    link_kafka_jars(home)
    settings = CommonSettings(
        home=home,
        kafka_bootstrap=f"127.0.0.1:{free_port_pair()}",
        redis_url=f"redis://127.0.0.1:{free_port()}/0",
    )
    local = LocalStack(settings, say=lambda line: print(f"[private stack] {line}"))
    try:
        local.up()
        yield PrivateStack(settings, local)
    finally:
        local.down()


@pytest.fixture
def chaos(private_stack: PrivateStack, tmp_path: Path) -> Isolated:
    """Own topics, key prefix, groups and ports on the private stack."""
    from services.common.kafka import ensure_topics

    iso = Isolated(private_stack.settings, tmp_path)
    ensure_topics(iso.settings)
    return iso


# -- streaming simulated users ----------------------------------------------------


def make_stream(
    now: float, n_users: int, *, seed: int, days: int, prefix: str
) -> list[dict[str, Any]]:
    """The simulated users' last ``days`` days of history, in event-time order."""
    users = make_users(n_users, seed=seed, prefix=prefix)
    events = [e for u in users for e in history(u, start=now - days * DAY, days=days, seed=seed)]
    events.sort(key=lambda e: e["occurred_at"])  # RFC 3339 in UTC with Z sorts by time
    return events


class Streamer(threading.Thread):
    """Sends the events to the topic at a steady rate, keyed by user id."""

    def __init__(self, iso: Isolated, events: list[dict[str, Any]], rate: float) -> None:
        super().__init__(daemon=True)
        self.settings, self.events, self.rate = iso.settings, events, rate
        self.sent = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            producer = KafkaProducer(
                bootstrap_servers=self.settings.kafka_bootstrap,
                acks="all",
                linger_ms=10,
                batch_size=256 * 1024,
            )
            started = time.monotonic()
            topic = self.settings.topic_events
            for i, e in enumerate(self.events):
                producer.send(topic, encode(e), key=e["user_id"].encode())
                self.sent = i + 1
                if i % 500 == 0:
                    ahead = i / self.rate - (time.monotonic() - started)
                    if ahead > 0:
                        time.sleep(ahead)
            producer.flush(timeout=120)
            producer.close()
        except BaseException as exc:  # surfaced by the test
            self.error = exc


# -- reading what the services did ------------------------------------------------


def read_topic(settings: CommonSettings, topic: str, *, idle_ms: int = 3000) -> list[Any]:
    """Every message of ``topic`` from the beginning to its current end."""
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap,
        enable_auto_commit=False,
        consumer_timeout_ms=idle_ms,
        max_partition_fetch_bytes=4 * 1024 * 1024,
        fetch_max_bytes=16 * 1024 * 1024,
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        consumer.assign(parts)
        consumer.seek_to_beginning(*parts)
        ends = consumer.end_offsets(parts)
        out = []
        deadline = time.monotonic() + 120
        while any(consumer.position(tp) < ends[tp] for tp in parts):
            assert time.monotonic() < deadline, f"could not read {topic} to its end"
            for msg in consumer:
                out.append(msg)
                if all(consumer.position(tp) >= ends[tp] for tp in parts):
                    break
        return out
    finally:
        consumer.close()


def topic_size(settings: CommonSettings, topic: str) -> int:
    consumer = KafkaConsumer(bootstrap_servers=settings.kafka_bootstrap)
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        starts = consumer.beginning_offsets(parts)
        return sum(ends[tp] - starts[tp] for tp in parts)
    finally:
        consumer.close()


def group_lag(settings: CommonSettings, group: str, topic: str) -> int | None:
    """Messages of ``topic`` not yet committed by ``group`` (None: nothing committed yet)."""
    # A consumer with the group's id that never subscribes reads its offsets, no rebalance.
    consumer = KafkaConsumer(
        bootstrap_servers=settings.kafka_bootstrap, group_id=group, enable_auto_commit=False
    )
    try:
        parts = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
        ends = consumer.end_offsets(parts)
        done = {tp: consumer.committed(tp) for tp in parts}
        if all(v is None for v in done.values()):
            return None
        return sum(ends[tp] - (done[tp] or 0) for tp in parts)
    finally:
        consumer.close()


def wait_caught_up(
    settings: CommonSettings, group: str, topic: str, *, timeout: float, check: Any = None
) -> float:
    """Wait until ``group`` committed every offset of ``topic``; the seconds it took."""
    started = time.monotonic()
    lag: int | None = None
    while time.monotonic() - started < timeout:
        if check is not None:
            check()
        lag = group_lag(settings, group, topic)
        if lag == 0:
            return time.monotonic() - started
        time.sleep(1.0)
    raise AssertionError(f"group {group} still {lag} messages behind on {topic}")


def scrape(url: str) -> dict[str, float]:
    """A Prometheus text page as {sample with labels: value}."""
    out: dict[str, float] = {}
    for line in httpx.get(url, timeout=5).text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            out[name] = float(value)
    return out


# -- an independent recount of the features --------------------------------------

PAYMENTS = {"purchase", "subscription_started", "subscription_renewed"}
CHURNS = {"subscription_cancelled", "account_deleted", "uninstall"}


def ts_of(event: dict[str, Any]) -> float:
    return datetime.fromisoformat(event["occurred_at"].replace("Z", "+00:00")).timestamp()


def recount(events: Iterable[dict[str, Any]], now: float) -> dict[str, float]:
    """The feature vector at ``now`` from a user's raw events, written from the contract.

    Each event_id counts once; windows are the user's local calendar days
    ending with the day of ``now``. Written here, without ``core.features``.
    """
    unique = list({e["event_id"]: e for e in events}.values())
    unique.sort(key=ts_of)
    zone = ZoneInfo(unique[-1]["context"]["timezone"])
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
    plan: str | None = None
    for e in unique:  # the newest plan-bearing event wins; a cancellation ends the plan
        if e["type"] == "subscription_cancelled":
            plan = None
        elif e["properties"].get("plan"):
            plan = e["properties"]["plan"]
    engaged = max((ts_of(e) for e in unique if e["type"] not in CHURNS), default=0.0)
    churned = max((ts_of(e) for e in unique if e["type"] in CHURNS), default=0.0)
    return {
        "recency_days": (now - int(max(times))) / DAY,
        "tenure_days": (now - int(min(times))) / DAY,
        **{f"events_{n}d": count(n) for n in (1, 7, 30, 90)},
        **{f"active_days_{n}d": float(len({age(e) for e in within(n)})) for n in (1, 7, 30, 90)},
        "sessions_30d": count(30, "session_start"),
        "mean_session_s": sum(round(d) for d in ends) / len(ends) if ends else 0.0,
        "distinct_features_30d": float(
            len({e["properties"]["feature"] for e in w30 if e["type"] == "feature_used"})
        ),
        "purchases_30d": count(30, *PAYMENTS),
        "purchases_90d": count(90, *PAYMENTS),
        "revenue_30d": sum(round(e["properties"].get("amount", 0) * 100) for e in w30) / 100,
        "revenue_90d": sum(round(e["properties"].get("amount", 0) * 100) for e in within(90)) / 100,
        "is_paid": float(plan not in (None, "free")),
        "payment_failures_30d": count(30, "payment_failed"),
        "support_tickets_30d": count(30, "support_ticket"),
        "complaints_30d": count(30, "complaint"),
        "downgrades_90d": count(90, "plan_downgraded"),
        "trend_7d_vs_30d": e7 / (e30 * 7 / 30) if e30 else 1.0,
        "sessions_change": count(7, "session_start")
        - sum(1 for e in within(14) if e["type"] == "session_start" and age(e) >= 7),
        "explicit_churn": float(int(churned) > int(engaged)),
        "uninstalled": 0.0,
    }


def compare_features(
    settings: CommonSettings, by_user: dict[str, list[dict[str, Any]]], now: float
) -> list[tuple[str, str, float, float]]:
    """(user, feature, stored, expected) for every difference; a missing user is one too."""
    import redis

    from services.scorer.adapters.redis_store import split_user, user_key
    from services.scorer.core.state_codec import decode_state
    from services.scorer.core.vector import to_vector

    r = redis.Redis.from_url(settings.redis_url)
    uids = sorted(by_user)
    pipe = r.pipeline(transaction=False)
    for uid in uids:
        pipe.get(user_key(settings.key_prefix, uid, "s"))
    found = zip(uids, pipe.execute(), strict=True)
    stored = {uid: split_user(blob).features if blob else b"" for uid, blob in found}
    r.close()
    out: list[tuple[str, str, float, float]] = []
    for uid in uids:
        if not stored[uid]:
            out.append((uid, "<no features stored>", 0.0, 1.0))
            continue
        got = to_vector(decode_state(stored[uid]), now)
        for key, want in recount(by_user[uid], now).items():
            if abs(got[key] - want) > 1e-6 * max(1.0, abs(want)):
                out.append((uid, key, got[key], want))
    return out


def by_user_id(events: Iterable[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    out: dict[str, list[dict[str, Any]]] = {}
    for e in events:
        out.setdefault(e["user_id"], []).append(e)
    return out


def encode(event: dict[str, Any]) -> bytes:
    return orjson.dumps(event)

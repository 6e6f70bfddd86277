"""``churnwatch replay EVENTS.jsonl --out DIR [--as-of TIME ...]``.

Feeds a file of schema-v1 events, in event-time order, through the real
pipeline (Kafka → scorer worker → Redis → churn-alerts) with the scorer's clock
in replay mode, then writes what came out:

    DIR/alerts.jsonl          every alert as published (event-time occurred_at)
    DIR/scores.csv            user_id,as_of,risk,score,band,stage,tier at the end
    DIR/scores-<AS_OF>.csv    the same, as scores stood at each --as-of time
    DIR/model.ckpt            the model the replay learned, for
                              ``churnwatch scorer model load`` (a live start from history)

A replay uses its own single-partition topics and its own Redis key prefix, so
it starts from an empty state and never touches a live deployment's data; they
are removed at the end unless ``--keep``.
"""

from __future__ import annotations

import csv
import sys
import time
import uuid
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from kafka import TopicPartition

from services.common.errors import ChurnwatchError
from services.common.events import parse_time
from services.common.kafka import ensure_topics, make_admin, make_consumer, make_producer
from services.common.redis_client import sync_redis
from services.common.settings import CommonSettings, env_for, load_settings, scratch_settings
from services.launcher import Services
from services.scorer.adapters.redis_layout import index_keys
from services.scorer.adapters.redis_store import user_fields, user_key
from services.scorer.adapters.redis_worker import checkpoint_key
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.policy import PolicySettings, band_for
from services.scorer.core.records import decode_record
from services.scorer.core.segments import SegmentSettings, lifecycle_stage
from services.scorer.core.state_codec import decode_state
from services.scorer.core.vector import to_vector
from services.scorer.wiring import policy_settings

SCORE_COLUMNS = ("user_id", "as_of", "risk", "score", "band", "stage", "tier")


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def read_sorted(path: Path) -> list[tuple[float, bytes]]:
    """Every line with its event time, in event-time order (file order among equals)."""
    out = []
    with path.open("rb") as fh:
        for n, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                ts = parse_time(orjson.loads(line)["occurred_at"], path="occurred_at").timestamp()
            except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
                ts = float("-inf")  # still replayed, so the scorer dead-letters it with a reason
            out.append((ts, line.rstrip(b"\n")))
            if n % 200_000 == 0:
                say(f"  read {n:,} lines")
    out.sort(key=lambda pair: pair[0])
    return out


# The scorer settings of a replay, besides its topics, keys and names: the same for the
# worker this module starts and for the in-process replay (``services.offline_replay``).
REPLAY_SCORER: dict[str, Any] = {
    "scorer_clock": "replay",
    "scorer_metrics_port": 0,
    "scorer_sweep_interval_s": 3600.0,
    "scorer_batch_size": 1000,
}


class Replay:
    """A scorer worker in replay mode on topics of its own, and what it left in Redis.

    ``key_prefix``: where the users' state goes; by default a prefix of the
    replay's own (``churnwatch backfill`` gives the deployment's).
    """

    def __init__(
        self,
        base: CommonSettings,
        *,
        run: str | None = None,
        name: str = "replay",
        key_prefix: str | None = None,
    ) -> None:
        self.run = run or uuid.uuid4().hex[:8]
        self.name = f"{name}-{self.run}"
        self.settings = scratch_settings(base, self.name, topic_partitions=1)
        if key_prefix is not None:
            self.settings = self.settings.model_copy(update={"key_prefix": key_prefix})
        self.group = f"{self.name}-scorer"
        scorer = REPLAY_SCORER | {
            "scorer_group": self.group,
            "scorer_worker_name": self.name,  # its model checkpoint's name too
            "log_level": "warning",
        }
        self.env = env_for(self.settings) | {
            f"CHURNWATCH_{name.upper()}": str(value) for name, value in scorer.items()
        }
        self.redis = sync_redis(self.settings.redis_url, cluster=self.settings.redis_cluster)
        # The bands of scores.csv by the policy the worker runs (CHURNWATCH_SCORER_BAND_*).
        self.policy = policy_settings(load_settings(ScorerSettings, **REPLAY_SCORER))

    def produce(self, lines: list[tuple[float, bytes]]) -> None:
        producer = make_producer(self.settings, linger_ms=20)
        for n, (_, line) in enumerate(lines, start=1):
            producer.send(self.settings.topic_events, value=line)
            if n % 100_000 == 0:
                say(f"  produced {n:,} events")
        producer.flush()
        producer.close()

    def wait_consumed(self, services: Services, *, stall_s: float = 600) -> None:
        """Until the scorer's group has committed the end of the events topic; an error
        when it has committed nothing new for ``stall_s`` (however long the whole takes)."""
        tp = TopicPartition(self.settings.topic_events, 0)
        # Never subscribes, so it only reads the group's committed offset.
        consumer = make_consumer(
            self.settings,
            group_id=self.group,
            enable_auto_commit=False,
        )
        end = consumer.end_offsets([tp])[tp]
        shown, last, moved = 0.0, -1, time.monotonic()
        try:
            while True:
                services.check()
                done = consumer.committed(tp) or 0
                if done >= end:
                    return
                if done != last:
                    last, moved = done, time.monotonic()
                elif time.monotonic() - moved > stall_s:
                    raise ChurnwatchError(
                        f"the replay's scorer committed nothing for {stall_s:.0f} s, at "
                        f"{done:,} of {end:,} events: see its log in {services.logs}"
                    )
                if time.monotonic() - shown >= 5:  # progress every 5 s
                    shown = time.monotonic()
                    say(f"  scored {done:,} / {end:,} events ({done / max(end, 1):.0%})")
                time.sleep(0.5)
        finally:
            consumer.close()

    def checkpoint(self, services: Services) -> ChurnModel:
        """Ask the scorer for a checkpoint (through Redis) and load it."""
        key = f"{self.settings.key_prefix}:control:checkpoint"
        request = uuid.uuid4().hex
        self.redis.set(key, request)
        while self.redis.get(f"{key}:done") != request.encode():
            services.check()
            time.sleep(0.2)
        data = self.redis.get(checkpoint_key(self.settings.key_prefix, self.name))
        assert isinstance(data, bytes)
        return ChurnModel.from_bytes(data)

    def scores_at(self, as_of: float, model: ChurnModel) -> list[dict[str, Any]]:
        """Every user's score as of ``as_of``, from its stored state and the model of then."""
        index = f"{self.settings.key_prefix}:lastseen"
        pipe = self.redis.pipeline(transaction=False)
        for key in index_keys(index, self.settings.redis_index_shards):
            pipe.zrange(key, 0, -1)
        found = [u for part in pipe.execute() for u in part]
        users = list(dict.fromkeys(u.decode() for u in found if isinstance(u, bytes)))
        rows = []
        for start in range(0, len(users), 2000):
            chunk = users[start : start + 2000]
            pipe = self.redis.pipeline(transaction=False)
            for uid in chunk:
                pipe.get(user_key(self.settings.key_prefix, uid, "s"))
                pipe.hmget(user_key(self.settings.key_prefix, uid), "f", "r")
            found = pipe.execute()
            stored = [
                (uid, *user_fields(blob, old))
                for uid, blob, old in zip(chunk, found[::2], found[1::2], strict=True)
            ]
            rows += score_rows(stored, as_of=as_of, model=model, policy=self.policy)
        return rows

    def alerts(self) -> list[bytes]:
        return self.read_all(self.settings.topic_alerts)

    def read_all(self, topic: str) -> list[bytes]:
        """Every record of one of its (single-partition) topics."""
        tp = TopicPartition(topic, 0)
        consumer = make_consumer(
            self.settings,
            enable_auto_commit=False,
            consumer_timeout_ms=2000,
        )
        consumer.assign([tp])
        consumer.seek_to_beginning(tp)
        end = consumer.end_offsets([tp])[tp]
        out = []
        for msg in consumer:
            out.append(msg.value)
            if msg.offset + 1 >= end:
                break
        consumer.close()
        return out

    def clean(self) -> None:
        """Its topics, and every key under its prefix."""
        self.drop_topics()
        for key in self.redis.scan_iter(match=f"{self.settings.key_prefix}:*", count=5000):
            self.redis.unlink(key)

    def drop_topics(self) -> None:
        admin = make_admin(self.settings)
        # its topics (<name>.*) and the scorer's Faust leader topic (<name>-scorer-...)
        mine = (f"{self.name}.", f"{self.name}-")
        admin.delete_topics([t for t in admin.list_topics() if t.startswith(mine)])
        admin.close()


def score_rows(
    stored: Iterable[tuple[str, bytes | None, bytes | None]],
    *,
    as_of: float,
    model: ChurnModel,
    policy: PolicySettings | None = None,
) -> list[dict[str, Any]]:
    """Score rows (``SCORE_COLUMNS``) of users given as (id, feature state, score record).

    The replay's scores at an ``--as-of`` time, through Kafka and Redis or in
    process (``services.offline_replay``): the features as of then, scored by
    the model checkpointed then, banded by ``policy`` (the scorer's settings).
    Users without a feature state are left out.
    """
    policy, segments = policy or PolicySettings(), SegmentSettings()
    rows = []
    for uid, features, record in stored:
        if features is None:
            continue
        before = decode_record(record) if record else {}
        vector = to_vector(decode_state(features), as_of)
        stage = lifecycle_stage(vector, previous_stage=before.get("stage"), settings=segments)
        risk = model.score(vector).risk
        score = round(risk * 100)
        rows.append(
            {
                "user_id": uid,
                "as_of": stamp(as_of),
                "risk": round(risk, 6),
                "score": score,
                "band": band_for(score, policy, stage=stage),
                "stage": stage,
                "tier": before.get("tier", "low"),
            }
        )
    return rows


def stamp(ts: float) -> str:
    """An RFC 3339 UTC stamp, also used in file names.

    >>> stamp(0.0)
    '1970-01-01T00:00:00Z'
    """
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(ts))


def write_scores(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=SCORE_COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def run_replay(events: Path, *, out: Path, as_of: list[str], keep: bool = False) -> dict[str, Any]:
    from services.stack.local import LocalStack

    base = load_settings(CommonSettings)
    LocalStack(base, say=say).up()
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    say(f"reading {events} ...")
    lines = read_sorted(events)
    replay = Replay(base)
    ensure_topics(replay.settings)
    services = Services(replay.settings, replay.env, names=("scorer",), logs=out / "logs")
    cuts = sorted(parse_time(t, path="--as-of").timestamp() for t in as_of)
    say(f"replaying {len(lines):,} events (run {replay.run}) ...")
    services.start()
    try:
        done = 0
        for cut in [*cuts, float("inf")]:
            phase = [pair for pair in lines[done:] if pair[0] < cut]
            replay.produce(phase)
            done += len(phase)
            replay.wait_consumed(services)
            model = replay.checkpoint(services)
            if cut != float("inf"):
                write_scores(out / f"scores-{stamp(cut)}.csv", replay.scores_at(cut, model))
        end = max((ts for ts, _ in lines if ts != float("-inf")), default=0.0)
        write_scores(out / "scores.csv", replay.scores_at(end, model))
        (out / "model.ckpt").write_bytes(model.to_bytes())
        alerts = replay.alerts()
        (out / "alerts.jsonl").write_bytes(b"".join(a + b"\n" for a in alerts))
    finally:
        services.stop()
        if not keep:
            replay.clean()
    seconds = time.monotonic() - started
    return {
        "events": len(lines),
        "alerts": len(alerts),
        "seconds": round(seconds, 1),
        "events_per_s": round(len(lines) / seconds, 1),
        "out": str(out),
    }

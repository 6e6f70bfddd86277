"""The scorer worker of a replay: its topics, Redis keys and settings, and what it left.

:class:`Replay` gives a scorer worker in replay mode single-partition topics, a
key prefix and a consumer group of its own, feeds it events, waits until it has
scored them, and reads back its model, its users' scores and its alerts. Both
``churnwatch replay`` (``services.replay``) and ``churnwatch backfill``
(``services.backfill``) run one, so it is apart from either command; ``say`` is
their progress line on stderr.
"""

from __future__ import annotations

import sys
import time
import uuid
from typing import Any

from kafka import TopicPartition

from services.common.errors import ChurnwatchError
from services.common.kafka import make_admin, make_consumer, make_producer
from services.common.redis_client import sync_redis
from services.common.settings import CommonSettings, env_for, load_settings, scratch_settings
from services.launcher import Services
from services.replay_scores import score_rows
from services.scorer.adapters.redis_layout import index_keys
from services.scorer.adapters.redis_store import user_fields, user_key
from services.scorer.adapters.redis_worker import checkpoint_key
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.wiring import policy_settings


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# The scorer settings of a replay, besides its topics, keys and names: the same for the
# worker of ``Replay`` and for the in-process replay (``services.offline_replay``).
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

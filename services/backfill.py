"""``churnwatch backfill EVENTS.jsonl [--worker NAME ...]``: a deployment starts from its history.

Without it a new deployment knows nothing of the users it already has: each
looks new at its first event, none can be seen fading for a month, and the
model learns its first labels from that truncated view. On simulated
histories (BENCHMARKS.md, "backfill") the month after such a start raised
twice the alerts, in waves, with 22-36 % of the backfilled start's share of
alerts that came before the user churned.

It replays the history (schema-v1 events, any order) through the real scorer
in replay mode, as ``churnwatch replay`` does, with the deployment's own Redis
key prefix: every user's features, score, alert state and pending label
snapshots are there at the end, as if the scorer had been running all along.
The replay's topics are its own and are removed at the end, so the alerts the
history would have raised reach no notifier (they stay in each user's alert
history). The model it learned becomes the checkpoint of each live worker
named by ``--worker`` (default: ``CHURNWATCH_SCORER_WORKER_NAME``), which
restores it at start.

Refused while the deployment's scorer group has members (two writers of one
user would overwrite each other) and when the deployment already has users,
unless ``--force`` (a backfill stopped half way, run again: each user's events
before its last stored one are left out, as applied). The procedure, in operations.md: start ingest
first (new events wait on Kafka), export the history up to then, backfill,
start the scorer workers.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from kafka.errors import KafkaError
from redis.exceptions import RedisClusterException, RedisError

from services.backfill_history import to_apply
from services.common.errors import ConfigError, StoreUnavailable
from services.common.kafka import ensure_topics, make_admin, unavailable
from services.common.settings import load_settings
from services.launcher import Services
from services.replay import read_sorted
from services.replay_worker import Replay, say
from services.scorer.adapters.redis_layout import StoreKeys, index_keys
from services.scorer.adapters.redis_worker import checkpoint_key
from services.scorer.config import ScorerSettings

PARTS = ("", "rfm", "quality")  # what a worker's checkpoint is made of


def run_backfill(events: Path, *, workers: list[str], force: bool = False) -> dict[str, Any]:
    settings = load_settings(ScorerSettings)
    workers = workers or [settings.scorer_worker_name]
    if not events.is_file():
        raise ConfigError(f"{events}: no such file")
    refuse_running_scorer(settings)
    replay = Replay(settings, name="backfill", key_prefix=settings.key_prefix)
    users = count_users(replay.redis, settings)
    if users and not force:
        raise ConfigError(
            f"the deployment already has {users:,} users under the key prefix "
            f"{settings.key_prefix!r}: a backfill is for a new one (--force to finish a "
            "backfill that stopped: a stored user gets only its events from its last stored "
            "one on)"
        )
    started = time.monotonic()
    say(f"reading {events} ...")
    lines, erased, applied = to_apply(read_sorted(events), replay.redis, settings.key_prefix)
    ensure_topics(replay.settings)
    logs = settings.home.resolve() / "logs" / replay.name
    services = Services(replay.settings, replay.env, names=("scorer",), logs=logs)
    say(f"backfilling {len(lines):,} events into {settings.key_prefix!r} (run {replay.run}) ...")
    services.start()
    try:
        replay.produce(lines)
        replay.wait_consumed(services)
        model = replay.checkpoint(services)
        dead = replay.read_all(replay.settings.topic_dlq)
        (logs / "dead-letters.jsonl").write_bytes(b"".join(d + b"\n" for d in dead))
        services.stop()
        kept = keep_checkpoints(replay, workers, logs)
        hand_over(replay, workers)
    finally:
        services.stop()
        tidy(replay)
    summary = {
        "events": len(lines),
        "dead_lettered": len(dead),
        "skipped_erased": erased,
        "skipped_applied": applied,
        "users": count_users(replay.redis, settings),
        "model_version": model.version,
        "workers": workers,
        "replaced_checkpoints": kept,
        "seconds": round(time.monotonic() - started, 1),
    }
    say(
        f"{summary['users']:,} users backfilled from {len(lines):,} events "
        f"({len(dead):,} dead-lettered, with reasons: {logs / 'dead-letters.jsonl'}); "
        f"model {model.version} is the checkpoint of "
        f"{', '.join(workers)}: start the scorer workers now"
    )
    return summary


def refuse_running_scorer(settings: ScorerSettings) -> None:
    """A live worker would write the same users as the backfill: both lose writes."""
    group = describe_group(settings)
    error = group.get("error")
    if error and "GroupIdNotFound" not in str(error):  # a group never started is fine
        raise ConfigError(
            f"cannot tell whether scorer workers run (group {settings.scorer_group!r}: "
            f"{error}): a backfill is refused until Kafka can say"
        )
    if members := group.get("members"):
        raise ConfigError(
            f"the scorer group {settings.scorer_group!r} has {len(members)} running "
            "member(s): stop the scorer workers before a backfill"
        )


def describe_group(settings: ScorerSettings, *, patience_s: float = 30.0) -> dict[str, Any]:
    """The scorer group as Kafka describes it. A coordinator not ready yet (a broker just
    started, a group it has not placed) is asked again for up to ``patience_s``."""
    deadline = time.monotonic() + patience_s
    admin = make_admin(settings)
    try:
        while True:
            try:
                found: dict[str, Any] = admin.describe_groups([settings.scorer_group])
                group = dict(found[settings.scorer_group])
                if "Coordinator" not in str(group.get("error")) or time.monotonic() > deadline:
                    return group
            except KafkaError as exc:
                if not getattr(exc, "retriable", False) or time.monotonic() > deadline:
                    raise unavailable(exc, settings) from None
            except OSError as exc:
                raise unavailable(exc, settings) from None
            time.sleep(0.5)
    finally:
        admin.close()


def count_users(redis: Any, settings: ScorerSettings) -> int:
    """Users in the deployment's last-seen index (every shard, and the unsharded set)."""
    index = StoreKeys.of(settings.key_prefix, "").lastseen
    try:
        pipe = redis.pipeline(transaction=False)
        for key in index_keys(index, settings.redis_index_shards):
            pipe.zcard(key)
        return int(sum(pipe.execute()))
    except (RedisError, RedisClusterException) as exc:
        raise StoreUnavailable(f"Redis: {exc}") from None


def keep_checkpoints(replay: Replay, workers: list[str], logs: Path) -> list[str]:
    """Named workers that have a model already (``--force``): theirs is written to a
    file in ``logs`` before the backfill's replaces it (``churnwatch scorer model load``
    takes it back)."""
    kept = []
    for worker in workers:
        data = replay.redis.get(checkpoint_key(replay.settings.key_prefix, worker))
        if data is not None:
            path = logs / f"{worker}-before-backfill.ckpt"
            try:
                path.write_bytes(data if isinstance(data, bytes) else str(data).encode())
            except OSError as exc:
                raise ConfigError(
                    f"cannot keep {worker}'s model in {path}: {exc.strerror}"
                ) from None
            say(f"{worker} had a model: kept in {path}")
            kept.append(str(path))
    return kept


def hand_over(replay: Replay, workers: list[str]) -> None:
    """The backfill's checkpoint becomes each named worker's."""
    prefix, redis = replay.settings.key_prefix, replay.redis
    for part in PARTS:
        data = redis.get(checkpoint_key(prefix, replay.name, part))
        for worker in workers:
            if data is not None:
                redis.set(checkpoint_key(prefix, worker, part), data)


def tidy(replay: Replay) -> None:
    """Its topics and its worker's keys go, each step on its own: a backfill stopped by
    Kafka or Redis going away says what it could not remove, and still raises its own
    error."""
    for what, step in (
        ("topics", replay.drop_topics),
        ("worker's keys", lambda: forget_worker(replay)),
    ):
        try:
            step()
        except Exception as exc:
            say(f"could not remove the backfill's {what} ({exc}): run it again, or remove them")


def forget_worker(replay: Replay) -> None:
    """Nothing of the backfill's own worker stays, whether it ended or stopped."""
    prefix, redis = replay.settings.key_prefix, replay.redis
    control = f"{prefix}:control:checkpoint"
    keys = [checkpoint_key(prefix, replay.name, part) for part in PARTS]
    for key in [*keys, StoreKeys.of(prefix, replay.name).outbox, control, f"{control}:done"]:
        redis.delete(key)  # one by one: on a cluster they are in different slots

"""``churnwatch scorer model list|export|load``: the workers' models, kept and replaced.

    churnwatch scorer model list                       each worker's checkpoint and quality
    churnwatch scorer model export WORKER FILE         a worker's model to a file (a backup)
    churnwatch scorer model load FILE --all            every running worker runs that model
    churnwatch scorer model load --fresh --worker W    W starts again from the prior

``load`` is how a model is rolled back (to a file ``export`` wrote before the
quality fell), reset (``--fresh``: the rule-based prior, learning from
nothing), or taken from history (``churnwatch replay`` writes the model it
learned to ``DIR/model.ckpt``). The model goes to each worker through Redis
(``P:control:model:{<worker>}``); the running worker takes it between two
learning rounds, checkpoints it at once and answers with the version it runs
(a worker of another model kind refuses it and says why). ``--all`` means the
workers that saved a checkpoint in the last ``--active-within`` seconds (10
minutes, or three checkpoint intervals if that is longer; they save one every
minute by default): a worker retired long ago is
left out, and named. A worker that is not running takes it when it starts,
if that is within the hour; after that the request lapses. The workers go on
learning from the loaded model.

A checkpoint is a pickle: load only files that churnwatch wrote.
Human-readable lines go to stderr, one JSON summary to stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
from redis.exceptions import RedisClusterException, RedisError

from services.common.errors import ConfigError, StoreUnavailable
from services.scorer.adapters.redis_worker import (
    checkpoint_key,
    model_request_key,
    quality_pattern,
    read_quality,
    request_id,
    worker_of,
)
from services.scorer.config import ScorerSettings
from services.scorer.core.checkpoint import CheckpointError
from services.scorer.core.model import ChurnModel
from services.scorer.core.river_pipeline import ModelSettings

REQUEST_TTL_S = 3600  # a load request a worker has not taken by then lapses


def run_model_command(args: argparse.Namespace) -> int:
    from services.common.redis_client import sync_redis
    from services.common.settings import load_settings

    settings = load_settings(ScorerSettings)
    client = sync_redis(settings.redis_url, cluster=settings.redis_cluster)
    try:
        return _run(args, settings, client)
    except (RedisError, RedisClusterException) as exc:
        raise StoreUnavailable(f"Redis: {exc}") from None
    finally:
        client.close()


def _run(args: argparse.Namespace, settings: ScorerSettings, client: Any) -> int:
    prefix = settings.key_prefix
    if args.model_action == "list":
        return show(list_models(client, prefix))
    if args.model_action == "export":
        return show(export_model(client, prefix, args.worker, args.file))
    data = fresh_model(settings) if args.fresh else read_model(args.file)
    within = args.active_within or max(600.0, 3 * settings.scorer_checkpoint_interval_s)
    workers = args.worker or running_workers(client, prefix, within_s=within)
    answer = load_model(client, prefix, data, workers, timeout=args.timeout, say=_say)
    show(answer)
    return 0 if len(answer["taken"]) == len(workers) else 1


def running_workers(client: Any, prefix: str, *, within_s: float) -> list[str]:
    """``--all``: the workers that saved a checkpoint lately (they do every minute, by
    default); the others are named, and left out."""
    rows = list_models(client, prefix, quiet=True)
    fresh = [row["worker"] for row in rows if row["age_s"] is not None and row["age_s"] <= within_s]
    stale = [row["worker"] for row in rows if row["worker"] not in fresh]
    if stale:
        _say(
            f"left out, no checkpoint for over {within_s:.0f} s (not running?): {', '.join(stale)}"
        )
    if not fresh:
        raise ConfigError(
            f"no worker saved a checkpoint in the last {within_s:.0f} s: name them with --worker"
        )
    return fresh


def list_models(client: Any, prefix: str, *, quiet: bool = False) -> list[dict[str, Any]]:
    """Each worker's last checkpoint, from its quality record, by worker name."""
    rows = []
    for key in client.scan_iter(match=quality_pattern(prefix), count=1000):
        quality = read_quality(client.get(key))
        if quality is None:
            _say(f"{worker_of(prefix, key)}: its quality record cannot be read; left out")
            continue
        rows.append(
            {
                "worker": worker_of(prefix, key),
                "model_version": quality.get("model_version"),
                "saved_at": _stamp(quality.get("saved_at")),
                "age_s": _age(quality.get("saved_at")),
                "labels": quality.get("positives", 0) + quality.get("negatives", 0),
                "roc_auc": (quality.get("metrics") or {}).get("roc_auc"),
            }
        )
    rows.sort(key=lambda row: row["worker"])
    for row in [] if quiet else rows:
        _say(
            f"{row['worker']:24} {row['model_version']}  saved {row['saved_at']}  "
            f"labels {row['labels']}  roc_auc {row['roc_auc']}"
        )
    return rows


def export_model(client: Any, prefix: str, worker: str, path: Path) -> dict[str, Any]:
    """Write the worker's model checkpoint to ``path`` (whole, or not at all)."""
    data = client.get(checkpoint_key(prefix, worker))
    if data is None:
        known = ", ".join(row["worker"] for row in list_models(client, prefix)) or "none"
        raise ConfigError(f"no model checkpoint for worker {worker!r} (workers: {known})")
    model = _checked(bytes(data), what=f"worker {worker}'s checkpoint")
    partial = path.with_name(path.name + ".partial")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        partial.write_bytes(data)
        partial.replace(path)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    _say(f"{worker}: model {model.version} written to {path} ({len(data):,} bytes)")
    return {"worker": worker, "model_version": model.version, "file": str(path)}


def read_model(path: Path) -> bytes:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {exc.strerror}") from None
    _checked(data, what=str(path))
    return data


def fresh_model(settings: ScorerSettings) -> bytes:
    """A model that has learned nothing: the rule-based prior alone, as at first start."""
    return ChurnModel(ModelSettings(kind=settings.scorer_model)).to_bytes()


def load_model(
    client: Any,
    prefix: str,
    data: bytes,
    workers: list[str],
    *,
    timeout: float,
    say: Any = lambda text: None,
    poll_s: float = 0.2,
) -> dict[str, Any]:
    """Leave ``data`` for each worker and wait up to ``timeout`` for their answers."""
    version = _checked(data, what="the model").version
    rid = request_id(data)
    for worker in workers:
        key = model_request_key(prefix, worker)
        client.delete(f"{key}:done")
        client.set(key, data, ex=REQUEST_TTL_S)
    say(f"model {version} left for {', '.join(workers)}; waiting up to {timeout:.0f} s ...")
    taken: dict[str, str] = {}
    refused: dict[str, str] = {}
    deadline = time.monotonic() + timeout
    while True:
        for worker in set(workers) - set(taken) - set(refused):
            raw = client.get(f"{model_request_key(prefix, worker)}:done")
            answer = orjson.loads(raw) if raw else {}
            if answer.get("request") != rid:
                continue
            if answer.get("error"):
                refused[worker] = answer["error"]
                say(f"{worker}: refused it: {answer['error']}")
            else:
                taken[worker] = answer.get("was", "")
                say(f"{worker}: runs {version} now (was {taken[worker]})")
        if len(taken) + len(refused) == len(workers) or time.monotonic() >= deadline:
            break
        time.sleep(poll_s)
    pending = [w for w in workers if w not in taken and w not in refused]
    for worker in pending:
        say(
            f"{worker}: not taken within {timeout:.0f} s. Is it running? A worker takes it "
            f"when it starts, within {REQUEST_TTL_S // 60} minutes; after that it lapses"
        )
    return {
        "model_version": version,
        "taken": sorted(taken),
        "refused": refused,
        "pending": pending,
    }


def show(result: Any) -> int:
    print(orjson.dumps(result).decode())
    return 0


def _checked(data: bytes, *, what: str) -> ChurnModel:
    try:
        return ChurnModel.from_bytes(data)
    except CheckpointError as exc:
        raise ConfigError(f"{what}: {exc}") from None


def _age(ts: float | None) -> float | None:
    return None if ts is None else round(time.time() - ts, 1)


def _stamp(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)

"""Backing up, rolling back and resetting the workers' models, on real Redis and Kafka.

``churnwatch scorer model export`` writes a worker's checkpoint to a file and
``... load`` hands a model to running workers through Redis; the worker takes it
between two learning rounds, checkpoints it and answers. Once with the real
worker process and the real command; then the runtime's side directly
(a refused model, a worker that is not running, learning going on from the
loaded model).
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import orjson
import pytest

from services.common.clock import ManualClock
from services.common.redis_client import sync_redis
from services.launcher import Services
from services.scorer.adapters.redis_worker import checkpoint_key, model_request_key
from services.scorer.config import ScorerSettings
from services.scorer.core.model import ChurnModel
from services.scorer.core.river_pipeline import ModelSettings
from services.scorer.model_command import export_model, list_models, load_model, running_workers
from services.scorer.runtime import Runtime
from tests.conftest import Isolated
from tests.integration.test_model_lifecycle import T0

pytestmark = pytest.mark.integration


def learned(n: int, *, kind: str = "logreg") -> ChurnModel:
    """A model that learned ``n`` labels: a version no worker starts with."""
    model = ChurnModel(ModelSettings(kind=kind))
    for i in range(n):
        model.learn({"recency_days": float(i % 30), "events_30d": float(30 - i % 30)}, i % 3 == 0)
    return model


def churnwatch(env: dict[str, str], *args: str) -> tuple[int, Any, str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "scorer", "model", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    out = done.stdout.strip().splitlines()
    return done.returncode, orjson.loads(out[-1]) if out else None, done.stderr


def test_the_running_worker_takes_a_loaded_model_and_keeps_it(
    isolated_each: Isolated, tmp_path: Path
) -> None:
    """On one Redis and on a Redis Cluster (the request and its answer share a slot)."""
    isolated = isolated_each
    worker = isolated.env["CHURNWATCH_SCORER_WORKER_NAME"]
    backup = learned(40)
    (tmp_path / "backup.ckpt").write_bytes(backup.to_bytes())
    services = Services(isolated.settings, isolated.env, names=("scorer",), logs=tmp_path)
    try:
        services.start()
        code, answer, err = churnwatch(
            isolated.env, "load", str(tmp_path / "backup.ckpt"), "--worker", worker
        )
        assert code == 0, err
        assert answer["taken"] == [worker] and answer["model_version"] == backup.version
        assert f"{worker}: runs {backup.version} now" in err

        # Checkpointed at once: listed, and exported as it was loaded.
        code, rows, err = churnwatch(isolated.env, "list")
        assert code == 0, err
        assert [(r["worker"], r["model_version"]) for r in rows] == [(worker, backup.version)]
        code, _, err = churnwatch(isolated.env, "export", worker, str(tmp_path / "again.ckpt"))
        assert code == 0, err
        assert ChurnModel.from_bytes((tmp_path / "again.ckpt").read_bytes()).version == (
            backup.version
        )

        # A reset: the prior alone, as at the first start.
        code, answer, err = churnwatch(isolated.env, "load", "--fresh", "--all")
        assert code == 0, err
        assert answer["taken"] == [worker] and answer["model_version"].startswith("logreg-0-")
        services.check()
    finally:
        services.stop()


def test_bad_input_is_refused_with_a_message(isolated: Isolated, tmp_path: Path) -> None:
    (tmp_path / "junk.ckpt").write_bytes(b"not a model")
    code, _, err = churnwatch(isolated.env, "load", str(tmp_path / "junk.ckpt"), "--all")
    assert code == 2 and "not a churnwatch model checkpoint" in err and "Traceback" not in err
    code, _, err = churnwatch(isolated.env, "load", "--fresh", "--all")
    assert code == 2 and "no worker saved a checkpoint in the last 600 s" in err
    code, _, err = churnwatch(isolated.env, "export", "nobody", str(tmp_path / "x.ckpt"))
    assert code == 2 and "no model checkpoint for worker 'nobody'" in err
    assert not (tmp_path / "x.ckpt").exists()


def test_a_model_of_another_kind_is_refused_and_nothing_changes(isolated_each: Isolated) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    client = redis_of(isolated)

    async def scenario() -> dict[str, Any]:
        runtime = worker_for(isolated)
        await runtime.scorer()
        await runtime.checkpoint()
        before = runtime.core.model.version
        forest = learned(5, kind="forest").to_bytes()
        answer = await answered(runtime, client, prefix, forest)
        assert runtime.core.model.version == before
        saved = client.get(checkpoint_key(prefix, runtime_name(runtime)))
        assert ChurnModel.from_bytes(saved).version == before
        return answer

    answer = asyncio.run(scenario())
    assert answer["taken"] == [] and answer["pending"] == []
    [(worker, reason)] = answer["refused"].items()
    assert "forest model" in reason and "CHURNWATCH_SCORER_MODEL=logreg" in reason
    assert client.get(model_request_key(prefix, worker)) is None  # answered: taken away


def test_a_worker_not_running_leaves_the_request_pending(isolated: Isolated) -> None:
    prefix = isolated.settings.key_prefix
    client = redis_of(isolated)
    data = learned(3).to_bytes()
    answer = load_model(client, prefix, data, ["asleep"], timeout=0.3, poll_s=0.05)
    assert answer == {
        "model_version": ChurnModel.from_bytes(data).version,
        "taken": [],
        "refused": {},
        "pending": ["asleep"],
    }
    assert 0 < client.ttl(model_request_key(prefix, "asleep")) <= 3600  # it lapses


def test_learning_goes_on_from_the_loaded_model(isolated_each: Isolated, tmp_path: Path) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    client = redis_of(isolated)
    loaded = learned(25)

    async def scenario() -> tuple[str, str]:
        runtime = worker_for(isolated)
        await runtime.scorer()
        await runtime.checkpoint()
        runtime.quality.update(0.9, 1)  # the old model's figures
        answer = await answered(runtime, client, prefix, loaded.to_bytes())
        assert answer["taken"] == [runtime_name(runtime)]
        assert runtime.quality.counts == {"positive": 0, "negative": 0}  # they start over
        runtime.core.model.learn({"recency_days": 40.0}, True)  # what a round does
        await runtime.checkpoint()
        runtime.close()
        return runtime.core.model.version, runtime_name(runtime)

    version, worker = asyncio.run(scenario())
    assert version.startswith("logreg-26-")  # the loaded 25 labels, and one more
    row = next(r for r in list_models(client, prefix) if r["worker"] == worker)
    assert row["model_version"] == version
    export_model(client, prefix, worker, tmp_path / "w.ckpt")
    assert ChurnModel.from_bytes((tmp_path / "w.ckpt").read_bytes()).version == version


def test_all_means_the_workers_that_checkpointed_lately(isolated: Isolated) -> None:
    prefix = isolated.settings.key_prefix
    client = redis_of(isolated)
    for worker, age in (("w-live", 30.0), ("w-retired", 86_400.0)):
        quality = {"model_version": "logreg-1-00", "saved_at": time.time() - age}
        client.set(checkpoint_key(prefix, worker, "quality"), orjson.dumps(quality))
    assert running_workers(client, prefix, within_s=600) == ["w-live"]


def redis_of(isolated: Isolated) -> Any:
    return sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)


def worker_for(isolated: Isolated) -> Runtime:
    """A scorer runtime of its own on the test's Redis (single or cluster)."""
    settings = ScorerSettings(
        redis_url=isolated.settings.redis_url,
        redis_cluster=isolated.settings.redis_cluster,
        key_prefix=isolated.settings.key_prefix,
        scorer_worker_name=f"{isolated.run}-w",
    )
    runtime = Runtime(settings)
    runtime.clock = ManualClock(T0)
    return runtime


def runtime_name(runtime: Any) -> str:
    return str(runtime.settings.scorer_worker_name)


async def answered(runtime: Any, client: Any, prefix: str, data: bytes) -> dict[str, Any]:
    """``load_model`` from a thread, as the command runs, while the worker's timer looks."""
    result: dict[str, Any] = {}

    def command() -> None:
        result.update(
            load_model(client, prefix, data, [runtime_name(runtime)], timeout=10, poll_s=0.05)
        )

    thread = threading.Thread(target=command)
    thread.start()
    while thread.is_alive():
        await runtime.load_model_if_requested()
        await asyncio.sleep(0.02)
    thread.join()
    return result


def test_a_new_worker_starts_from_the_model_another_saved_last(isolated_each: Isolated) -> None:
    """A scale-up's new worker (or one named after a backfill) is not cold."""
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    client = redis_of(isolated)
    for worker, n, age in (("w-old", 5, 3600.0), ("w-last", 12, 60.0)):
        client.set(checkpoint_key(prefix, worker), learned(n).to_bytes())
        client.set(checkpoint_key(prefix, worker, "rfm"), b"junk" if n == 5 else b"")
        quality = {"model_version": learned(n).version, "saved_at": time.time() - age}
        client.set(checkpoint_key(prefix, worker, "quality"), orjson.dumps(quality))

    async def scenario() -> str:
        runtime = worker_for(isolated)  # a name with no checkpoint of its own
        await runtime.scorer()
        runtime.close()
        return runtime.core.model.version

    assert asyncio.run(scenario()) == learned(12).version

"""``churnwatch backfill`` on the real stack: a new deployment starts from its history.

The command replays a simulated history into the test's own key prefix (the
"deployment"), hands the model it learned to the named worker, and leaves no
topic or key of its own behind; then the deployment's real scorer worker
starts, restores that model and goes on with each user's features where the
history left them. A second backfill is refused, as is one while the scorer
runs.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer, TopicPartition

from services.common.events import parse_time
from services.common.kafka import make_admin, make_consumer
from services.common.redis_client import async_redis, sync_redis
from services.launcher import Services
from services.scorer.adapters.redis_store import user_fields, user_key
from services.scorer.adapters.redis_worker import checkpoint_key
from services.scorer.api.commands import AdminCommands
from services.scorer.core.features import UserState
from services.scorer.core.model import ChurnModel
from services.scorer.core.state_codec import decode_state
from services.sim.generator import event, history, make_users
from tests.conftest import Isolated

pytestmark = pytest.mark.e2e
DAY = 86_400.0


def backfill(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "backfill", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    out = done.stdout.strip().splitlines()
    return done.returncode, orjson.loads(out[-1]) if out else {}, done.stderr


def stored_state(r: Any, prefix: str, uid: str) -> UserState:
    blob = r.get(user_key(prefix, uid, "s"))
    features, _ = user_fields(blob, r.hmget(user_key(prefix, uid), "f", "r"))
    assert features is not None, f"{uid} has no stored state"
    return decode_state(features)


def test_a_deployment_starts_from_its_backfilled_history(
    isolated: Isolated, tmp_path: Path
) -> None:
    prefix, worker = isolated.settings.key_prefix, isolated.env["CHURNWATCH_SCORER_WORKER_NAME"]
    start = time.time() - 30 * DAY  # a history that ends now
    users = make_users(25, seed=3)
    lines = [e for user in users for e in history(user, start=start, days=30, seed=3)]
    # A busy user: in its last 40 hours (inside the 48-hour lateness tolerance, so a
    # repeat is not refused as late) more events than the 512 ids the scorer keeps.
    busy = start + 30 * DAY - 40 * 3_600
    lines += [event(users[2], "page_view", busy + i * 200, 50_000 + i) for i in range(700)]
    lines.sort(key=lambda e: e["occurred_at"])
    lines.append({"not": "an event"})
    (tmp_path / "history.jsonl").write_bytes(b"".join(orjson.dumps(e) + b"\n" for e in lines))

    code, summary, err = backfill(isolated.env, str(tmp_path / "history.jsonl"), "--worker", worker)

    assert code == 0, err
    assert (summary["events"], summary["dead_lettered"]) == (len(lines), 1)
    seen = {e["user_id"] for e in lines[:-1]}
    assert summary["users"] == len(seen) and summary["workers"] == [worker]
    assert summary["replaced_checkpoints"] == []
    r = sync_redis(isolated.settings.redis_url)
    model = ChurnModel.from_bytes(r.get(checkpoint_key(prefix, worker)))
    assert model.version == summary["model_version"] and model.learned > 0
    # Nothing of the backfill's own worker, control keys or topics is left.
    assert not [k for k in r.scan_iter(match=f"{prefix}:*backfill-*")]
    assert not r.exists(f"{prefix}:control:checkpoint:done")
    admin = make_admin(isolated.settings)
    assert not [t for t in admin.list_topics() if t.startswith("backfill-")]
    admin.close()
    # The alerts the history raised (in its users' alert history) went nowhere a notifier reads.
    assert any(r.exists(user_key(prefix, u.user_id, "alerts")) for u in users)
    consumer = make_consumer(isolated.settings, enable_auto_commit=False)
    parts = consumer.partitions_for_topic(isolated.settings.topic_alerts)
    tps = [TopicPartition(isolated.settings.topic_alerts, p) for p in parts]
    assert sum(consumer.end_offsets(tps).values()) == 0
    consumer.close()

    again, _, err = backfill(isolated.env, str(tmp_path / "history.jsonl"))
    assert again == 2 and "already has 25 users" in err and "Traceback" not in err

    # The deployment's scorer goes on from there: one more event of a backfilled user.
    uid = users[0].user_id
    first = min(e["occurred_at"] for e in lines[:-1] if e["user_id"] == uid)
    assert stored_state(r, prefix, uid).first_seen == int(parse_time(first, path="t").timestamp())
    scorer = Services(isolated.settings, isolated.env, names=("scorer",), logs=tmp_path / "live")
    try:
        scorer.start()
        producer = KafkaProducer(bootstrap_servers=isolated.settings.kafka_bootstrap, acks="all")
        now = time.time()
        live = event(users[0], "login", now, 10_000)
        producer.send(isolated.settings.topic_events, key=uid.encode(), value=orjson.dumps(live))
        producer.flush(timeout=30)
        producer.close()
        deadline = time.monotonic() + 60
        while (state := stored_state(r, prefix, uid)).last_seen != int(now):
            scorer.check()
            assert time.monotonic() < deadline, "the live event was not scored"
            time.sleep(0.2)
        # The history is still there under the live event: the same first sight.
        assert state.first_seen == int(parse_time(first, path="t").timestamp())
        # The worker is in its group now: a backfill would write the same users.
        running, _, err = backfill(isolated.env, str(tmp_path / "history.jsonl"), "--force")
        assert running == 2 and "stop the scorer workers" in err
        logs = (tmp_path / "live" / "scorer.log").read_text()
        assert "model restored" in logs and summary["model_version"] in logs
    finally:
        scorer.stop()

    # Stopped, the worker's own model is kept in a file before a forced backfill replaces it;
    # a user erased meanwhile is not brought back.
    # The history applied again on top counts nothing twice: each user's events before
    # its last stored one are left out (the scorer knows only the last 512 ids of each).
    gone = users[1].user_id
    asyncio.run(erase(isolated, gone))
    kept_users = [u.user_id for u in users if u.user_id != gone]
    before = {u: stored_state(r, prefix, u) for u in kept_users}
    code, forced, err = backfill(
        isolated.env, str(tmp_path / "history.jsonl"), "--force", "--worker", worker
    )
    assert code == 0, err
    assert forced["skipped_erased"] == sum(e.get("user_id") == gone for e in lines) > 0
    older = [
        e
        for e in lines[:-1]
        if e["user_id"] in before
        and parse_time(e["occurred_at"], path="t").timestamp() < before[e["user_id"]].last_seen
    ]
    assert forced["skipped_applied"] == len(older) > 0
    assert {u: stored_state(r, prefix, u) for u in kept_users} == before
    assert not r.exists(user_key(prefix, gone, "s")) and not r.exists(user_key(prefix, gone))
    [kept] = forced["replaced_checkpoints"]
    assert ChurnModel.from_bytes(Path(kept).read_bytes()).learned >= model.learned
    missing, _, err = backfill(isolated.env, str(tmp_path / "nothing.jsonl"))
    assert missing == 2 and "nothing.jsonl: no such file" in err and "Traceback" not in err


async def erase(isolated: Isolated, user_id: str) -> None:
    client = async_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    try:
        await AdminCommands(client, prefix=isolated.settings.key_prefix).erase(user_id)
    finally:
        await client.aclose()

"""Re-driving failed deliveries on the real stack, with the real command.

The notifier worker runs as a child process against the local Kafka and Redis
with its SMTP provider down (nothing listens on its port): the e-mail fails
after its retries and is published as ``failed``. The provider comes back (a
mail catcher on that port), ``churnwatch notifier redrive`` runs as a process
of its own and exactly one e-mail arrives, its action published as ``sent``;
a second re-drive finds nothing and sends nothing. It runs on the single Redis
and again on a Redis Cluster (``isolated_each``).
"""

from __future__ import annotations

import subprocess
import sys
import time
from typing import Any

import orjson
import pytest
from kafka import KafkaProducer

from services.common.messages import make_action_id
from services.common.redis_client import sync_redis
from services.launcher import Services
from services.notifier.mailcatcher import MailCatcher
from tests.conftest import Isolated
from tests.integration.test_notifier_flow import ActionsTopic, vip_user
from tests.notifier_data import give_email_contacts, sample_alert

pytestmark = pytest.mark.integration


def redrive(env: dict[str, str], *args: str) -> tuple[int, dict[str, Any], str]:
    done = subprocess.run(
        [sys.executable, "-m", "services.cli", "notifier", "redrive", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    summary = orjson.loads(done.stdout.strip().splitlines()[-1]) if done.stdout.strip() else {}
    return done.returncode, summary, done.stderr


def test_provider_down_then_redrive_delivers_exactly_once(isolated_each: Isolated) -> None:
    isolated = isolated_each
    prefix = isolated.settings.key_prefix
    uid = vip_user(isolated.run)  # not in the control group
    address = f"{uid}@example.test"
    r = sync_redis(isolated.settings.redis_url, cluster=isolated.settings.redis_cluster)
    give_email_contacts(r, prefix, [uid])
    env = isolated.env | {
        "CHURNWATCH_NOTIFIER_ATTEMPTS": "3",
        "CHURNWATCH_NOTIFIER_BACKOFF_S": "0.05",
        "CHURNWATCH_SMTP_TIMEOUT_S": "2",
    }
    alert = sample_alert(uid, model_version="it@1")
    action_id = make_action_id(alert["alert_id"], "email")
    services = Services(isolated.settings, env, names=("notifier",), logs=isolated.out / "logs")
    actions = ActionsTopic(isolated)
    catcher: MailCatcher | None = None
    try:
        services.start()
        producer = KafkaProducer(bootstrap_servers=isolated.settings.kafka_bootstrap, acks="all")
        producer.send(isolated.settings.topic_alerts, key=uid.encode(), value=orjson.dumps(alert))
        producer.flush(timeout=30)
        producer.close()

        # 1. The provider is down: every attempt fails, the action is published as failed.
        seen = actions.until(
            lambda seen: any(a["action_id"] == action_id for a in seen),
            timeout=120,
            services=services,
        )
        assert [a["status"] for a in seen if a["action_id"] == action_id] == ["failed"]
        assert r.hexists(f"{prefix}:failed", action_id)
        assert not r.hexists(f"{prefix}:{{{uid}}}:done", action_id)

        # 2. The provider is back; a dry run sends nothing, the re-drive sends once.
        catcher = MailCatcher("127.0.0.1", isolated.ports["smtp"]).start()
        code, preview, _ = redrive(env, "--dry-run", "--channel", "email")
        assert (code, preview["found"], preview["sent"], preview["dry_run"]) == (0, 1, 1, True)
        assert catcher.inbox.received == 0

        code, first, progress = redrive(env, "--since", "1h")
        assert code == 0, progress
        assert (first["found"], first["redriven"], first["sent"], first["failed_again"]) == (
            1,
            1,
            1,
            0,
        )
        assert action_id in progress and "sent" in progress
        assert [m["X-Churnwatch-Action"] for m in catcher.inbox.to(address)] == [action_id]
        seen = actions.until(
            lambda seen: (
                [a["status"] for a in seen if a["action_id"] == action_id] == ["failed", "sent"]
            ),
            timeout=30,
            services=services,
        )
        assert [a["status"] for a in seen if a["action_id"] == action_id] == ["failed", "sent"]

        # 3. A second re-drive: nothing left, nothing sent.
        code, second, _ = redrive(env)
        assert (code, second["found"], second["sent"]) == (0, 0, 0)
        time.sleep(1)  # anything stray would arrive now
        assert len(catcher.inbox.to(address)) == 1
        assert not r.hexists(f"{prefix}:failed", action_id)
        assert r.hget(f"{prefix}:{{{uid}}}:done", action_id) == b"sent"
        # The failure decided nothing; the re-driven send counts once as treated.
        assert r.get(f"{prefix}:winback:medium-value-coupon:treated:treated") == b"1"
    finally:
        services.stop()
        actions.close()
        if catcher is not None:
            catcher.stop()
        r.close()

"""SIGKILL the scorer three times mid-stream: nothing lost, nothing counted twice.

Simulated histories of a few thousand users (``services.sim.generator``) go
straight to the test's user-events topic at a steady rate while the scorer and
the notifier run, with a mail catcher on the notifier's SMTP port and every
user's e-mail address and consent registered. At three random points the
scorer is killed with SIGKILL and started again. At the end:

- every user's stored features equal a recount over the same raw events
  (``conftest.recount``), so no event was lost or applied twice;
- no alert_id appears twice on winback-actions, and no action's e-mail
  (``X-Churnwatch-Action``) arrived twice at the mail catcher;
- nothing valid went to the dead-letter topic.

The issue asks for 200,000 events; on the 2-core machines this runs on, the
whole chaos suite must fit in about 8 minutes, so the stream is sized by
``CHAOS_CRASH_EVENTS`` (default below) at ``CHAOS_CRASH_RATE`` events/s.
"""

from __future__ import annotations

import os
import random
import time
from collections import Counter, defaultdict
from typing import Any

import orjson
import pytest
import redis

from services.launcher import Services
from services.notifier.mailcatcher import MailCatcher
from tests.chaos.conftest import (
    Streamer,
    compare_features,
    make_stream,
    read_topic,
    scrape,
    wait_caught_up,
)
from tests.conftest import Isolated
from tests.notifier_data import give_email_contacts

pytestmark = pytest.mark.chaos

EVENTS = int(os.environ.get("CHAOS_CRASH_EVENTS", "200000"))
RATE = float(os.environ.get("CHAOS_CRASH_RATE", "4000"))
DAYS = 21
EVENTS_PER_USER = 5.0 * DAYS  # what the generator makes on average


def register_contacts(iso: Isolated, user_ids: list[str]) -> None:
    r = redis.Redis.from_url(iso.settings.redis_url)
    give_email_contacts(r, iso.settings.key_prefix, user_ids)
    r.close()


def events_done(iso: Isolated) -> float:
    try:
        return scrape(iso.url("scorer") + "/metrics").get("churnwatch_scorer_events_total", 0.0)
    except Exception:
        return 0.0


def wait_scoring(iso: Isolated, scorer: Services, *, timeout: float = 90) -> float:
    """Seconds until a (re)started scorer has processed its first batch."""
    started = time.monotonic()
    while events_done(iso) <= 0:
        scorer.check()
        assert time.monotonic() - started < timeout, "the scorer did not start processing"
        time.sleep(0.2)
    return time.monotonic() - started


def test_sigkill_scorer_three_times(chaos: Isolated) -> None:
    seed = int(os.environ.get("CHAOS_SEED", str(time.time_ns() % 1_000_000)))
    print(f"CHAOS_SEED={seed}")  # to replay the same kill points and users
    rng = random.Random(seed)
    now = time.time()
    n_users = max(100, int(EVENTS / EVENTS_PER_USER))
    events = make_stream(now, n_users, seed=rng.randrange(1 << 30), days=DAYS, prefix="crash")
    by_user: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for e in events:
        by_user[e["user_id"]].append(e)
    register_contacts(chaos, sorted(by_user))
    catcher = MailCatcher("127.0.0.1", chaos.ports["smtp"]).start()
    logs = chaos.out / "logs"
    scorer = Services(chaos.settings, chaos.env, names=("scorer",), logs=logs)
    notifier = Services(chaos.settings, chaos.env, names=("notifier",), logs=logs)
    stream_s = len(events) / RATE
    # Three kill points spread over the stream, each at a random place in its third.
    plan = sorted(rng.uniform(stream_s * k / 3 + 2, stream_s * (k + 1) / 3 - 2) for k in range(3))
    kills: list[dict[str, float]] = []
    streamer = Streamer(chaos, events, RATE)
    try:
        scorer.start()
        notifier.start()
        started = time.monotonic()
        streamer.start()
        for at in plan:
            wait_scoring(chaos, scorer)
            delay = at - (time.monotonic() - started)
            time.sleep(max(delay, rng.uniform(0.5, 3.0)))
            kills.append({"at_s": time.monotonic() - started, "processed": events_done(chaos)})
            scorer.procs["scorer"].kill()  # SIGKILL: no shutdown hook, no final commit
            scorer.procs["scorer"].wait(timeout=10)
            scorer.start()
        streamer.join(timeout=600)
        assert streamer.error is None, f"streaming failed: {streamer.error!r}"
        assert streamer.sent == len(events)
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_SCORER_GROUP"],
            chaos.settings.topic_events,
            timeout=300,
            check=lambda: (scorer.check(), notifier.check()),
        )
        time.sleep(3)  # the last alerts reach the notifier
        wait_caught_up(
            chaos.settings,
            chaos.env["CHURNWATCH_NOTIFIER_GROUP"],
            chaos.settings.topic_alerts,
            timeout=180,
            check=notifier.check,
        )
        total_s = time.monotonic() - started
    finally:
        scorer.stop()
        notifier.stop()
        catcher.stop()

    print(f"{len(events)} events of {n_users} users in {total_s:.0f} s; kills: {kills}")
    (chaos.out / "kills.json").write_bytes(orjson.dumps(kills))
    assert all(k["processed"] > 0 for k in kills), f"a kill hit a scorer still starting: {kills}"

    mismatches = compare_features(chaos.settings, by_user, now)
    assert not mismatches, f"{len(mismatches)} feature mismatches, e.g. {mismatches[:5]}"

    # Known limit (docs/operations.md): an event redelivered after a crash that is more
    # than the lateness tolerance (event time) behind its user's newest applied event
    # can no longer be told from a new late event, so it is dead-lettered as late. Its
    # first delivery was applied (the features above match); only a stream running far
    # faster than real time, like this one, gets there.
    dead = [orjson.loads(m.value) for m in read_topic(chaos.settings, chaos.settings.topic_dlq)]
    not_late = [d for d in dead if "older than the user's newest event" not in d["reason"]]
    assert not not_late, f"valid events dead-lettered: {not_late[:3]}"
    print(f"{len(dead)} redelivered events dead-lettered as late")

    alerts = [
        orjson.loads(m.value) for m in read_topic(chaos.settings, chaos.settings.topic_alerts)
    ]
    actions = [
        orjson.loads(m.value) for m in read_topic(chaos.settings, chaos.settings.topic_actions)
    ]
    assert alerts, "the workload raised no alert: the downstream check would mean nothing"
    # churn-alerts is at least once: an alert whose Kafka acknowledgement raced the kill
    # is republished from the outbox. The notifier's idempotency makes it harmless.
    repeated = sum(n - 1 for n in Counter(x["alert_id"] for x in alerts).values())
    print(f"{repeated} alerts republished from the outbox after a kill")
    per_alert = Counter(x["alert_id"] for x in actions)
    twice = {a: n for a, n in per_alert.items() if n > 1}
    assert not twice, f"alert_ids twice on winback-actions: {list(twice.items())[:5]}"
    assert set(per_alert) == {a["alert_id"] for a in alerts}, "an alert got no action"
    with catcher.inbox.lock:
        mails = Counter(m["X-Churnwatch-Action"] for m in catcher.inbox.messages)
    sent = {x["action_id"] for x in actions if x["status"] == "sent"}
    assert set(mails) == sent
    assert all(n == 1 for n in mails.values()), "an e-mail arrived twice"
    print(f"{len(alerts)} alerts, {len(actions)} actions, {sum(mails.values())} e-mails")
    # No alert is lost: every alert the scorer stored as raised reached churn-alerts
    # (the outbox republishes one whose acknowledgement the kill interrupted).
    r = redis.Redis.from_url(chaos.settings.redis_url)
    pipe = r.pipeline(transaction=False)
    for uid in by_user:
        pipe.lrange(f"{chaos.settings.key_prefix}:{{{uid}}}:alerts", 0, -1)
    recorded = {orjson.loads(a)["alert_id"] for found in pipe.execute() for a in found}
    r.close()
    lost = recorded - {a["alert_id"] for a in alerts}
    assert not lost, f"alerts stored as raised but never published: {sorted(lost)[:5]}"

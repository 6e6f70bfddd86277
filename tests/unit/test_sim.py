"""The simulator: deterministic for a seed, schema-valid, and its labels match its events."""

from __future__ import annotations

import csv
from datetime import datetime
from pathlib import Path

import orjson

from services.cli import main
from services.common.schemas import validate

CHURN = {"subscription_cancelled", "account_deleted", "uninstall"}


def simulate(out: Path, *, seed: int = 5) -> None:
    argv = ["simulate", "--users", "150", "--days", "90", "--seed", str(seed), "--out", str(out)]
    assert main([*argv, "--no-progress"]) == 0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).timestamp()


def test_same_seed_gives_identical_files(tmp_path: Path) -> None:
    simulate(tmp_path / "a")
    simulate(tmp_path / "b")
    simulate(tmp_path / "c", seed=6)
    for name in ("events.jsonl", "labels.csv"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    assert (tmp_path / "a/events.jsonl").read_bytes() != (tmp_path / "c/events.jsonl").read_bytes()


def test_events_are_valid_and_in_event_time_order(tmp_path: Path) -> None:
    simulate(tmp_path)
    events = [orjson.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    assert len(events) > 5000
    assert all(validate("user-event", e) == [] for e in events)
    times = [ts(e["occurred_at"]) for e in events]
    assert times == sorted(times)
    assert len({e["event_id"] for e in events}) == len(events)
    types = {e["type"] for e in events}
    assert {"signup", "session_start", "payment_failed", "support_ticket"} <= types
    signups = sorted(ts(e["occurred_at"]) for e in events if e["type"] == "signup")
    assert signups[-1] - signups[0] > 30 * 86400  # users sign up over time


def test_labels_match_events(tmp_path: Path) -> None:
    simulate(tmp_path)
    events = [orjson.loads(x) for x in (tmp_path / "events.jsonl").read_bytes().splitlines()]
    end = ts("2026-01-01T00:00:00+00:00") + 90 * 86400
    last: dict[str, float] = {}
    cancel: dict[str, float] = {}
    for e in events:
        t = ts(e["occurred_at"])
        last[e["user_id"]] = t
        if e["type"] in CHURN:
            cancel.setdefault(e["user_id"], t)
    with (tmp_path / "labels.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert {r["user_id"] for r in rows} == set(last)
    kinds = {"cancel": 0, "silence": 0}
    for r in rows:
        uid, churned = r["user_id"], r["churned"] == "1"
        silent = end - last[uid] >= 30 * 86400
        assert churned == (uid in cancel or silent), uid
        if uid in cancel:
            kinds["cancel"] += 1
            assert ts(r["churned_at"]) == cancel[uid]
            assert last[uid] == cancel[uid]  # nothing after an explicit cancel
        elif silent:
            kinds["silence"] += 1
            assert ts(r["churned_at"]) == last[uid]
        else:
            assert r["churned_at"] == ""
    assert kinds["cancel"] > 0 and kinds["silence"] > 0  # both ways of leaving happen
    assert 0.05 < (kinds["cancel"] + kinds["silence"]) / len(rows) < 0.6


def test_some_users_answer_a_winback_and_come_back(tmp_path: Path) -> None:
    from services.sim.lifecycle import make_personas
    from services.sim.population import simulate_events

    personas = make_personas(600, days=120, seed=2)
    events = list(simulate_events(personas, start=0.0, days=120, seed=2))
    opened = [e for e in events if e["type"] == "notification_opened"]
    assert opened and all("action_id" in e["properties"] for e in opened)
    returned = {e["user_id"] for e in opened}
    later = {e["user_id"] for e in events if e["type"] == "login"}
    assert returned <= later

"""Evaluate on a hand-made run with known answers; the CDNOW conversion and baselines."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from services.cli import main
from services.common.schemas import validate
from services.evaluate import cdnow, metrics
from services.evaluate.alert_mix import SeenAlert, alert_groups, alerts_per_day

SCORES = """user_id,as_of,risk,score,band,stage,tier
a,2026-03-01T00:00:00Z,0.9,90,critical,at-risk,high
b,2026-03-01T00:00:00Z,0.8,80,high,at-risk,low
c,2026-03-01T00:00:00Z,0.3,30,low,active,medium
d,2026-03-01T00:00:00Z,0.2,20,low,active,low
e,2026-03-01T00:00:00Z,0.1,10,low,loyal,high
"""
LABELS = """user_id,churned,churned_at
a,1,2026-03-11T00:00:00Z
b,0,
c,1,2026-03-05T00:00:00Z
d,0,
e,0,
x,1,2026-02-01T00:00:00Z
"""


def alert(user: str, when: str, trigger: str = "band_up", stage: str = "at-risk") -> str:
    return json.dumps(
        {"alert_id": f"{user}-{when}", "user_id": user, "occurred_at": when,
         "trigger": trigger, "segment": {"stage": stage, "tier": "low"}}
    )  # fmt: skip


def write_run(run: Path) -> None:
    run.mkdir()
    (run / "scores.csv").write_text(SCORES)
    (run / "labels.csv").write_text(LABELS)
    alerts = [alert("a", "2026-03-01T00:00:00Z"), alert("a", "2026-03-04T00:00:00Z", "sharp_rise"),
              alert("b", "2026-03-02T00:00:00Z", stage="active"),
              alert("c", "2026-03-06T00:00:00Z", "sharp_rise", "active")]  # fmt: skip
    (run / "alerts.jsonl").write_text("\n".join(alerts) + "\n")


def test_evaluate_gives_the_known_figures(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    run = tmp_path / "run"
    write_run(run)
    assert main(["evaluate", "--run", str(run), "--labels", str(run / "labels.csv")]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    # Churners a (0.9) and c (0.3) against b (0.8), d, e: a beats 3, c beats 2 -> 5/6.
    assert figures["roc_auc"] == pytest.approx(5 / 6, abs=1e-4)
    # Ranked a+, b-, c+: AP = 1 * 1/2 + 2/3 * 1/2.
    assert figures["pr_auc"] == pytest.approx(5 / 6, abs=1e-4)
    assert (figures["users"], figures["unscored"], figures["churned"]) == (5, 1, 2)
    assert (figures["alerts"], figures["alerted_users"]) == (4, 3)
    assert figures["alerts_per_1000_users"] == 800.0
    assert figures["precision"] == pytest.approx(2 / 3, abs=1e-4)  # a, c of a, b, c
    assert figures["recall"] == 1.0
    assert figures["f1"] == 0.8
    # a: first alert 10 days before churning; c: alerted a day after it churned.
    assert (figures["lead_time_days_median"], figures["lead_time_n"]) == (10.0, 1)
    assert figures["alerted_after_churn"] == 1
    assert figures["brier"] == pytest.approx((0.01 + 0.64 + 0.49 + 0.04 + 0.01) / 5, abs=1e-4)
    report = (run / "report.md").read_text()
    assert "roc.png" in report and "| roc_auc | 0.8333 |" in report
    # By kind: a's first alert (band_up, at-risk) warned it 10 days ahead; c's only alert,
    # a sharp rise, came a day after it churned (no warning); b, who stayed, was alerted
    # by a band_up while active.
    assert "| band_up | at-risk | 1 | 1 | 1 | 1 | 1 |" in report
    assert "| sharp_rise | at-risk | 1 | 1 | 1 | 1 | 0 |" in report
    assert "| band_up | active | 1 | 1 | 0 | 0 | 0 |" in report
    assert "| sharp_rise | active | 1 | 1 | 1 | 1 | 0 |" in report
    for png in ("roc.png", "pr.png", "lead_time.png", "calibration.png", "alerts_per_day.png"):
        assert (run / png).read_bytes()[:4] == b"\x89PNG"


def test_alerts_are_grouped_by_kind_and_counted_per_day() -> None:
    seen = [
        SeenAlert("a", 0.0, "band_up", "new"),
        SeenAlert("b", 3600.0, "band_up", "new"),
        SeenAlert("b", 2 * 86_400.0, "sharp_rise", "active"),
        SeenAlert("c", 2.5 * 86_400.0, "band_up", "new"),
        SeenAlert("a", 3 * 86_400.0, "band_up", "new"),
    ]
    # a churned a day after its first alert; b half an hour *before* its first.
    groups = alert_groups(seen, churned={"a", "b"}, churned_at={"a": 86_400.0, "b": 1800.0})
    assert [(g.trigger, g.stage, g.alerts, g.users, g.churned_users) for g in groups] == [
        ("band_up", "new", 4, 3, 2),
        ("sharp_rise", "active", 1, 1, 1),
    ]
    assert groups[0].precision == pytest.approx(2 / 3)
    assert [g.first_catches for g in groups] == [1, 0]  # only a was warned in time
    # Without a churn time, a churner's first alert counts as a warning.
    assert [g.first_catches for g in alert_groups(seen, churned={"a", "b"}, churned_at={})] == [
        2,
        0,
    ]
    assert alerts_per_day(seen, churned={"a", "b"}) == [(0, 2, 0), (2, 1, 1), (3, 1, 0)]
    assert alert_groups([], churned=set(), churned_at={}) == []
    assert alerts_per_day([], churned=set()) == []


def test_evaluate_as_of_reads_that_file_and_earlier_alerts(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    write_run(run)
    (run / "scores-2026-03-03T00:00:00Z.csv").write_text(SCORES)
    argv = ["evaluate", "--run", str(run), "--labels", str(run / "labels.csv")]
    assert main([*argv, "--as-of", "2026-03-03T00:00:00Z"]) == 0
    figures = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert (figures["alerts"], figures["alerted_users"], figures["recall"]) == (2, 2, 0.5)


def test_calibration_bins() -> None:
    table = metrics.calibration([0, 0, 1, 1], [0.05, 0.15, 0.12, 0.95], bins=10)
    assert [b.count for b in table] == [1, 2, 0, 0, 0, 0, 0, 0, 0, 1]
    assert table[1].mean_predicted == pytest.approx(0.135)
    assert table[1].observed == 0.5


CDNOW = """ customer_id  date number_of_cds  dollar_value
 00001 19970101  1   11.77
 00002 19970112  1   12.00
 00002 19970112  5   77.00
 00003 19970102  2   20.76
 00003 19970330  2   20.76
 00003 19971002  1   10.00
 00004 19970301  1   10.00
 00004 19980101  1   10.00
"""


def test_cdnow_events_are_valid_ordered_and_deterministic(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(CDNOW)
    events = list(cdnow.cdnow_events(path))
    assert len(events) == 8 and all(validate("user-event", e) == [] for e in events)
    assert [e["occurred_at"] for e in events] == sorted(e["occurred_at"] for e in events)
    assert [e["event_id"] for e in events[1:3]] == [
        "cdnow-00003-19970102-0",
        "cdnow-00002-19970112-0",
    ]
    assert events[3]["event_id"] == "cdnow-00002-19970112-1"
    assert events[3]["properties"] == {"amount": 77.0, "currency": "USD", "quantity": 5}
    assert [e["event_id"] for e in cdnow.cdnow_events(path)] == [e["event_id"] for e in events]
    assert len(list(cdnow.cdnow_events(path, until=cdnow.CALIBRATION_END))) == 6
    assert cdnow.cdnow_labels(path) == {"00001": 1, "00002": 1, "00003": 0, "00004": 0}


def test_cdnow_data_dir_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "CDNOW_master.txt").write_text(CDNOW)
    monkeypatch.setenv("CHURNWATCH_DATA_DIR", str(tmp_path))
    assert cdnow.default_path() == tmp_path / "CDNOW_master.txt"
    # Weeks since the last purchase: 00001 and 00002 (no holdout purchase) are the stalest.
    assert cdnow.recency_baseline_auc() == 1.0


@pytest.mark.skipif(not cdnow.default_path().exists(), reason="shared CDNOW data not present")
def test_cdnow_baselines_on_the_real_data() -> None:
    pytest.importorskip("lifetimes")
    labels = cdnow.cdnow_labels()
    assert len(labels) == 23570
    assert sum(labels.values()) / len(labels) == pytest.approx(0.701, abs=0.001)
    assert 0.74 < cdnow.recency_baseline_auc() < 0.78
    assert 0.74 < cdnow.bgnbd_baseline_auc() < 0.79


def test_cdnow_inner_split_asks_inside_calibration(tmp_path: Path) -> None:
    path = tmp_path / "CDNOW_master.txt"
    path.write_text(CDNOW)
    # Calibration to 1997-06-30, question: a purchase 1997-07-01..09-30? Nobody buys then;
    # the purchases of October and January 1998 are after the inner holdout.
    assert cdnow.cdnow_labels(path, split=cdnow.INNER) == {
        "00001": 1,
        "00002": 1,
        "00003": 1,
        "00004": 1,
    }
    rows = [*cdnow.read_rows(path), ("00002", "19970915", 1, 5.0), ("00005", "19970801", 1, 5.0)]
    labels = cdnow.split_labels(rows, cdnow.INNER)
    assert labels == {"00001": 1, "00002": 0, "00003": 1, "00004": 1}  # 00005: not yet a customer
    summary = cdnow.calibration_summary(rows, split=cdnow.INNER)
    assert summary["00003"] == (1, 87 / 7, 179 / 7)  # 01-02 .. 03-30, and to 06-30
    assert "00005" not in summary


@pytest.mark.skipif(not cdnow.default_path().exists(), reason="shared CDNOW data not present")
def test_cdnow_inner_baselines_on_the_real_data() -> None:
    pytest.importorskip("lifetimes")
    labels = cdnow.cdnow_labels(split=cdnow.INNER)
    assert len(labels) == 23570  # every customer's first purchase is before 1997-03-26
    assert round(cdnow.recency_baseline_auc(split=cdnow.INNER), 3) == 0.724
    assert round(cdnow.bgnbd_baseline_auc(split=cdnow.INNER), 3) == 0.741

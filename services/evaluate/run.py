"""Read a replay's output and its labels, and compute every figure of the report.

Files (the replay writes the first two, ``simulate`` the third):

- ``DIR/scores.csv`` or ``DIR/scores-<AS_OF>.csv``: ``user_id,as_of,risk,score,band,stage,tier``;
- ``DIR/alerts.jsonl``: churn alerts as published (``user_id``, ``occurred_at``, ...);
- ``LABELS.csv``: ``user_id,churned,churned_at`` (0/1, RFC 3339 or empty).

The population is the labelled users that have a score; with ``as_of`` only
the alerts raised up to that moment count. A labelled user without a score is
counted (``unscored``) but left out of every figure.
"""

from __future__ import annotations

import csv
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import orjson

from services.common.errors import ConfigError
from services.common.events import parse_time
from services.evaluate import metrics
from services.evaluate.alert_mix import AlertGroup, SeenAlert, alert_groups, alerts_per_day


@dataclass(frozen=True)
class Labels:
    churned: dict[str, int]
    churned_at: dict[str, float]  # only for churners with a known time


@dataclass
class Evaluation:
    figures: dict[str, Any]
    y: list[int] = field(default_factory=list)
    risk: list[float] = field(default_factory=list)
    leads: list[float] = field(default_factory=list)
    calibration: list[metrics.CalibrationBin] = field(default_factory=list)
    groups: list[AlertGroup] = field(default_factory=list)  # by trigger and stage
    per_day: list[tuple[int, int, int]] = field(default_factory=list)  # see alerts_per_day


def load_labels(path: Path) -> Labels:
    churned: dict[str, int] = {}
    at: dict[str, float] = {}
    for row in _rows(path, ("user_id", "churned")):
        uid = row["user_id"]
        churned[uid] = 1 if row["churned"].strip() in ("1", "true", "True") else 0
        when = (row.get("churned_at") or "").strip()
        if churned[uid] and when:
            at[uid] = parse_time(when, path=f"{path.name}: churned_at").timestamp()
    return Labels(churned, at)


def load_scores(path: Path) -> dict[str, float]:
    """``user_id -> risk``; a user listed twice keeps the last row."""
    return {row["user_id"]: float(row["risk"]) for row in _rows(path, ("user_id", "risk"))}


def load_alerts(path: Path, *, until: float | None = None) -> list[SeenAlert]:
    """Every alert (up to ``until``), in file order."""
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        if line.strip():
            alert = orjson.loads(line)
            ts = parse_time(alert["occurred_at"], path="alerts.jsonl: occurred_at").timestamp()
            if until is None or ts <= until:
                stage = (alert.get("segment") or {}).get("stage") or "-"
                out.append(SeenAlert(str(alert["user_id"]), ts, alert.get("trigger") or "-", stage))
    return out


def scores_path(run: Path, as_of: str | None) -> Path:
    return run / ("scores.csv" if as_of is None else f"scores-{as_of}.csv")


def evaluate_run(run: Path, labels_path: Path, *, as_of: str | None = None) -> Evaluation:
    """Every figure of the report for one run."""
    path = scores_path(run, as_of)
    if not path.exists():
        raise ConfigError(f"{path} not found: run `churnwatch replay` with --out {run} first")
    until = parse_time(as_of, path="--as-of").timestamp() if as_of else None
    labels = load_labels(labels_path)
    scores = load_scores(path)
    users = sorted(u for u in labels.churned if u in scores)
    y = [labels.churned[u] for u in users]
    risk = [scores[u] for u in users]
    population = set(users)
    alerts = [a for a in load_alerts(run / "alerts.jsonl", until=until) if a.user_id in population]
    first: dict[str, float] = {}
    for a in alerts:
        first[a.user_id] = min(a.ts, first.get(a.user_id, a.ts))
    churners = {u for u in users if labels.churned[u]}
    quality = metrics.alert_scores(alerted=set(first), churned=churners)
    at = {u: t for u, t in labels.churned_at.items() if u in population}
    leads, late = metrics.lead_times(first, at)
    table = metrics.calibration(y, risk)
    figures: dict[str, Any] = {
        "users": len(users),
        "unscored": len(labels.churned) - len(users),
        "churned": len(churners),
        "churn_rate": _r(len(churners) / len(users)) if users else None,
        "roc_auc": _r(metrics.roc_auc(y, risk)),
        "pr_auc": _r(metrics.pr_auc(y, risk)),
        "alerts": len(alerts),
        "alerted_users": len(first),
        "alerts_per_1000_users": _r(metrics.per_thousand(len(alerts), len(users))),
        "precision": _r(quality.precision),
        "recall": _r(quality.recall),
        "f1": _r(quality.f1),
        "lead_time_days_median": _r(metrics.median(leads)),
        "lead_time_days_p25": _r(_quantile(leads, 0.25)),
        "lead_time_days_p75": _r(_quantile(leads, 0.75)),
        "lead_time_n": len(leads),
        "alerted_after_churn": late,
        "brier": _r(metrics.brier(y, risk)),
        "ece": _r(metrics.expected_calibration_error(table)),
        "as_of": as_of,
    }
    groups = alert_groups(alerts, churned=churners, churned_at=at)
    return Evaluation(
        figures, y, risk, leads, table, groups, alerts_per_day(alerts, churned=churners)
    )


def calibration_rows(ev: Evaluation) -> list[dict[str, Any]]:
    return [asdict(b) for b in ev.calibration]


def _quantile(values: list[float], q: float) -> float | None:
    """Linear interpolation between order statistics (``values`` sorted)."""
    if not values:
        return None
    pos = q * (len(values) - 1)
    lo = int(pos)
    hi = min(lo + 1, len(values) - 1)
    return values[lo] + (values[hi] - values[lo]) * (pos - lo)


def _r(value: float | None) -> float | None:
    return None if value is None else round(value, 4)


def _rows(path: Path, required: tuple[str, ...]) -> list[dict[str, str]]:
    if not path.exists():
        raise ConfigError(f"{path} not found")
    with path.open(newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        missing = [c for c in required if c not in (reader.fieldnames or [])]
        if missing:
            raise ConfigError(f"{path} lacks the column(s) {', '.join(missing)}")
        return list(reader)

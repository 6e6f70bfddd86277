"""``churnwatch bench cdnow``: churn quality on real purchases, against BG/NBD.

CDNOW (../shared/data/cdnow): 23,570 customers' purchases, 1997-01 .. 1998-06.
The calibration period (to 1997-09-30) is converted to schema-v1 ``purchase``
events and replayed through the real pipeline (Kafka → scorer → Redis) with
``churnwatch replay``; every customer is scored as of the end of calibration.
The question is the standard one: no purchase in the 39-week holdout. In the
same run, the BG/NBD model (package ``lifetimes``, fitted on the same
calibration data) ranks customers by expected holdout purchases, and plain
recency is shown too.

Settings for purchase data (overridable with the usual ``CHURNWATCH_SCORER_*``
variables), chosen by the domain and checked only inside the calibration
period, never on the holdout:

- churn = 90 days without a purchase: a quarter is the usual retail "lapsed"
  window, and 85 % of the repeat-purchase gaps seen in calibration are
  shorter (median 27 days, 90th percentile 125);
- horizon 7 days: with yearly buyers a "churn within H" label over months
  marks where a customer is in its life (the last purchases before leaving),
  not whether it buys again. With a short horizon, a purchase-day snapshot
  learns "was this the last purchase before a 90-day lapse?", and a silent
  one "will they be back before the lapse is confirmed?": the question BG/NBD
  answers, at a shorter range;
- a snapshot on every purchase day (``SNAPSHOT_EVERY_DAYS=1``): purchases
  are sparse, so the cap that spares Redis for daily-active apps costs
  nothing here, and without it a purchase that follows a silent user's
  weekly snapshot within the cap gets none (inner check below: 0.68 with
  the 7-day cap, 0.70-0.71 with 1-3 days).

Inner check (calibration only: replay to 1997-06-30, "no purchase in
Jul-Sep 1997"; BG/NBD 0.741, recency 0.724): 60/60 gave 0.45, 90/90 0.29,
90/1 0.65, 90/7 0.68, 90/7 with ``CHURNWATCH_SCORER_LABEL_EQUAL_DELAY=true``
0.57. It did not transfer: on the holdout 90/7 gives 0.310 (see BENCHMARKS.md).
Then (same check, 90/7, each step on the previous): silent users re-scored
weekly past 97 days 0.66, tenure out of the learner 0.67, SGD step 0.05 ->
0.01 0.68-0.71 (0.70 at 0.002; horizon 30 days 0.40), a snapshot every
purchase day 0.70, ``recency_vs_gap`` = recency for one-time buyers (was 0)
0.72: level with recency, still under BG/NBD, so no holdout figure was taken.
"""

from __future__ import annotations

import argparse
import csv
import os
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

import orjson

from bench.registry import emit
from services.evaluate.cdnow import (
    INNER,
    STANDARD,
    Split,
    bgnbd_baseline_auc,
    cdnow_events,
    cdnow_labels,
    recency_baseline_auc,
)
from services.evaluate.metrics import roc_auc

# Another inner cut, for the stability of a choice: calibration to 1997-05-31,
# question "no purchase in Jun-Aug 1997" (inside calibration too).
INNER_MAY = Split("cdnow-inner-may", "19970531", "19970601", "19970831")
SPLITS = {"standard": STANDARD, "inner": INNER, "inner-may": INNER_MAY}
SETTINGS = {
    "CHURNWATCH_SCORER_INACTIVITY_DAYS": "90",
    "CHURNWATCH_SCORER_HORIZON_DAYS": "7",
    "CHURNWATCH_SCORER_LATENESS_S": "172800",
    "CHURNWATCH_SCORER_SNAPSHOT_EVERY_DAYS": "1",
}


def write_events(path: Path, split: Split, *, salt: str = "") -> None:
    """The split's calibration purchases as schema-v1 events, one JSON line each.

    ``salt`` renames every customer ``<salt>-<id>``: the same history, but the
    store's index order, and with it the order labels are learned in, changes.
    """
    with path.open("wb") as fh:
        for event in cdnow_events(until=split.calibration_end):
            if salt:
                event["user_id"] = f"{salt}-{event['user_id']}"
            fh.write(orjson.dumps(event) + b"\n")


def churnwatch_risks(
    out: Path, split: Split, *, in_process: bool, salt: str = ""
) -> dict[str, float]:
    """Every customer's risk at the end of the split's calibration, from a replay of it:
    through Kafka and Redis (``churnwatch replay``), or in process on the same scorer code
    (``services.offline_replay``)."""
    from services.common.events import parse_time
    from services.replay import read_sorted, run_replay, stamp, write_scores

    events = out / "calibration.jsonl"
    write_events(events, split, salt=salt)
    for name, value in SETTINGS.items():
        os.environ.setdefault(name, value)
    cut = parse_time(split.as_of, path="as_of").timestamp()
    scores = out / f"scores-{stamp(cut)}.csv"
    if in_process:
        from services.offline_replay import replay_in_process

        result = replay_in_process(read_sorted(events), cuts=[cut])
        write_scores(scores, result.scores[cut])
        model = result.models[cut]
        summary = {"events": result.events, "alerts": result.alerts, "dead": result.dead}
        summary |= {"labels": model.learned, "blend": model.blend_quality()}
    else:
        summary = run_replay(events, out=out, as_of=[split.as_of])
    print(f"replay: {orjson.dumps(summary).decode()}", file=sys.stderr)
    with scores.open() as fh:
        risk = {row["user_id"]: float(row["risk"]) for row in csv.DictReader(fh)}
    if salt:
        risk = {uid.removeprefix(f"{salt}-"): r for uid, r in risk.items()}
    return risk


def churnwatch_auc(risk: dict[str, float], labels: dict[str, int]) -> float:
    """ROC AUC of the risks for the labels; every labelled customer must have a risk."""
    users = sorted(labels)
    missing = [u for u in users if u not in risk]
    if missing:
        raise SystemExit(f"{len(missing)} customers have no score (e.g. {missing[:3]})")
    auc = roc_auc([labels[u] for u in users], [risk[u] for u in users])
    assert auc is not None
    return auc


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench cdnow", description=__doc__)
    parser.add_argument("--out", type=Path, default=None, help="keep the run here")
    parser.add_argument(
        "--split",
        choices=sorted(SPLITS),
        default="standard",
        help="standard: the 39-week holdout; inner (inner-may): a check inside calibration, "
        "replay to 1997-06-30 (05-31), question: no purchase in the next three months",
    )
    parser.add_argument("--inner", action="store_true", help="the same as --split inner")
    parser.add_argument(
        "--in-process",
        action="store_true",
        help="replay in this process on an in-memory store (the scorer's replay code, "
        "no Kafka or Redis); default: through the real pipeline",
    )
    parser.add_argument(
        "--salt", default="", help="rename customers <salt>-<id>: another order of labels"
    )
    args = parser.parse_args(list(argv))
    split = INNER if args.inner else SPLITS[args.split]
    try:
        baseline = bgnbd_baseline_auc(split=split)
    except (ImportError, SystemExit) as exc:
        print(
            f"BG/NBD baseline unavailable: {exc}\ninstall it with: pip install 'churnwatch[eval]'",
            file=sys.stderr,
        )
        return 2
    recency = recency_baseline_auc(split=split)
    with tempfile.TemporaryDirectory(prefix="cdnow-") as tmp:
        out = args.out or Path(tmp)
        out.mkdir(parents=True, exist_ok=True)
        risk = churnwatch_risks(out, split, in_process=args.in_process, salt=args.salt)
    value = churnwatch_auc(risk, cdnow_labels(split=split))
    print(
        f"ROC AUC, no purchase {split.holdout_start}..{split.holdout_end} "
        f"({split.holdout_weeks:.1f} weeks), scored at {split.as_of}: churnwatch {value:.4f}, "
        f"BG/NBD {baseline:.4f}, recency {recency:.4f}",
        file=sys.stderr,
    )
    emit(split.name, value, "roc_auc", baseline, ratio=value / baseline)
    return 0

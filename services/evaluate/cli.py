"""``churnwatch evaluate --run DIR --labels LABELS.csv [--as-of TIME]``.

Writes ``DIR/report.md`` with its plots and prints, as its last line, one
JSON object with the figures.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("evaluate", help="ROC/PR AUC, alert precision/recall, lead time of a run")
    p.add_argument("--run", type=Path, required=True, help="a replay's output folder")
    p.add_argument("--labels", type=Path, required=True, help="user_id,churned,churned_at CSV")
    p.add_argument(
        "--as-of", default=None, help="evaluate DIR/scores-<AS_OF>.csv and alerts up to AS_OF"
    )
    p.set_defaults(handler=run)


def run(args: argparse.Namespace) -> int:
    import orjson

    from services.evaluate.report import write_report
    from services.evaluate.run import evaluate_run

    ev = evaluate_run(args.run, args.labels, as_of=args.as_of)
    report = write_report(args.run, ev, labels=args.labels)
    print(orjson.dumps({**ev.figures, "report": str(report)}).decode())
    return 0

"""CDNOW purchases as schema-v1 events, holdout churn labels, and two baselines.

The data (``shared/data/cdnow/CDNOW_master.txt``, see its SOURCE.md) is read in
place, never copied: :func:`default_path` is ``<repo>/../shared/data/cdnow``
unless ``CHURNWATCH_DATA_DIR`` names another folder.

Standard split (``STANDARD``): calibration 1997-01-01..1997-09-30, holdout
1997-10-01..1998-06-30; "churned" = no purchase in the holdout. The inner split
(``INNER``) asks the same question inside the calibration period only, for
choices that must not look at the holdout: calibration to 1997-06-30, "holdout"
1997-07-01..1997-09-30. Baselines, both ranked as of the end of a split's
calibration and fitted on its calibration data only:

- BG/NBD (Fader, Hardie and Lee 2005) from the ``lifetimes`` package (extra
  ``[eval]``), fitted on the calibration period in weeks; churn score = minus
  the expected number of holdout purchases;
- plain recency: days since the last purchase.

>>> e = _event(("00001", "19970101", 1, 11.77), 0)
>>> e["event_id"], e["occurred_at"]
('cdnow-00001-19970101-0', '1997-01-01T12:00:00Z')
>>> e["properties"]
{'amount': 11.77, 'currency': 'USD', 'quantity': 1}
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

from services.common.errors import ConfigError
from services.evaluate.metrics import roc_auc

Row = tuple[str, str, int, float]  # customer_id, YYYYMMDD, number of CDs, dollars


def _date(day: str) -> date:
    return date(int(day[:4]), int(day[4:6]), int(day[6:]))


@dataclass(frozen=True, slots=True)
class Split:
    """A calibration period (from the start of the data to ``calibration_end``) and the
    holdout whose purchases are the question; days as YYYYMMDD, both ends inclusive.

    >>> STANDARD.holdout_weeks, INNER.holdout_weeks, INNER.as_of
    (39.0, 13.142857142857142, '1997-06-30T23:59:59Z')
    """

    name: str
    calibration_end: str
    holdout_start: str
    holdout_end: str

    @property
    def holdout_weeks(self) -> float:
        return ((_date(self.holdout_end) - _date(self.holdout_start)).days + 1) / 7.0

    @property
    def as_of(self) -> str:
        """The last second of calibration (RFC 3339): when customers are scored."""
        d = self.calibration_end
        return f"{d[:4]}-{d[4:6]}-{d[6:]}T23:59:59Z"


STANDARD = Split("cdnow", "19970930", "19971001", "19980630")
INNER = Split("cdnow-inner", "19970630", "19970701", "19970930")
CALIBRATION_END = STANDARD.calibration_end
HOLDOUT_WEEKS = STANDARD.holdout_weeks


def default_path() -> Path:
    """``$CHURNWATCH_DATA_DIR/CDNOW_master.txt``, else ``<repo>/../shared/data/cdnow/...``."""
    root = os.environ.get("CHURNWATCH_DATA_DIR")
    folder = (
        Path(root)
        if root
        else Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "cdnow"
    )
    return folder / "CDNOW_master.txt"


def read_rows(path: Path | str | None = None) -> list[Row]:
    """The purchases in file order; the header line is skipped."""
    p = Path(path) if path is not None else default_path()
    if not p.exists():
        raise ConfigError(
            f"{p} not found: set CHURNWATCH_DATA_DIR to the folder of CDNOW_master.txt"
        )
    rows = []
    for line in p.read_text(encoding="ascii").splitlines():
        parts = line.split()
        if len(parts) == 4 and parts[1].isdigit():
            rows.append((parts[0], parts[1], int(parts[2]), float(parts[3])))
    return rows


def cdnow_events(path: Path | str | None = None, *, until: str | None = None) -> Iterator[dict]:
    """One ``purchase`` event per row, in event-time order (date, customer, row).

    Purchases carry only a date: they are placed at 12:00 UTC. ``until``
    (YYYYMMDD, inclusive) keeps only the rows up to that day, e.g. ``CALIBRATION_END``.
    """
    rows = read_rows(path)
    order = sorted(range(len(rows)), key=lambda i: (rows[i][1], rows[i][0], i))
    seen: dict[tuple[str, str], int] = {}
    for i in order:
        row = rows[i]
        if until is not None and row[1] > until:
            break
        k = seen.get(row[:2], 0)
        seen[row[:2]] = k + 1
        yield _event(row, k)


def _event(row: Row, k: int) -> dict[str, Any]:
    cid, day, cds, dollars = row
    return {
        "event_id": f"cdnow-{cid}-{day}-{k}",  # deterministic: the k-th purchase that day
        "user_id": cid,
        "type": "purchase",
        "occurred_at": f"{day[:4]}-{day[4:6]}-{day[6:]}T12:00:00Z",
        "properties": {"amount": dollars, "currency": "USD", "quantity": cds},
        "context": {"platform": "web"},
    }


def cdnow_labels(path: Path | str | None = None, *, split: Split = STANDARD) -> dict[str, int]:
    """``customer_id -> 1`` if no purchase in the split's holdout (by default
    1997-10-01..1998-06-30), else 0; for the customers with a purchase in its calibration.
    """
    return split_labels(read_rows(path), split)


def split_labels(rows: list[Row], split: Split) -> dict[str, int]:
    """The labels of :func:`cdnow_labels` from rows: purchases after the holdout do not count,
    customers first seen after calibration have none.

    >>> rows = [("1", "19970105", 1, 1.0), ("1", "19970801", 1, 1.0), ("2", "19970105", 1, 1.0),
    ...         ("2", "19971101", 1, 1.0), ("3", "19970801", 1, 1.0)]
    >>> split_labels(rows, INNER), split_labels(rows, STANDARD)
    ({'1': 0, '2': 1}, {'1': 1, '2': 0, '3': 1})
    """
    labels = {cid: 1 for cid, day, *_ in rows if day <= split.calibration_end}
    for cid, day, _, _ in rows:
        if split.holdout_start <= day <= split.holdout_end and cid in labels:
            labels[cid] = 0
    return labels


def calibration_summary(
    rows: list[Row], *, split: Split = STANDARD
) -> dict[str, tuple[int, float, float]]:
    """Per customer: (repeat purchase days x, recency t_x, age T) in weeks at calibration end.

    As in Fader, Hardie and Lee: x counts days with a purchase after the first one.

    >>> rows = [("1", "19970101", 1, 1.0), ("1", "19970115", 1, 1.0), ("1", "19970115", 2, 1.0),
    ...         ("1", "19970801", 1, 1.0)]
    >>> calibration_summary(rows)["1"], calibration_summary(rows, split=INNER)["1"]
    ((2, 30.285714285714285, 38.857142857142854), (1, 2.0, 25.714285714285715))
    """
    days: dict[str, set[date]] = {}
    for cid, day, _, _ in rows:
        if day <= split.calibration_end:
            days.setdefault(cid, set()).add(_date(day))
    end = _date(split.calibration_end)
    out = {}
    for cid, ds in days.items():
        first, last = min(ds), max(ds)
        out[cid] = (len(ds) - 1, (last - first).days / 7.0, (end - first).days / 7.0)
    return out


def recency_baseline_auc(path: Path | str | None = None, *, split: Split = STANDARD) -> float:
    """ROC AUC of "time since the last purchase at calibration end" for holdout churn."""
    rows = read_rows(path)
    labels = split_labels(rows, split)
    summary = calibration_summary(rows, split=split)
    users = sorted(summary)
    score = [summary[u][2] - summary[u][1] for u in users]  # weeks since the last purchase
    return _auc([labels[u] for u in users], score)


def bgnbd_baseline_auc(path: Path | str | None = None, *, split: Split = STANDARD) -> float:
    """ROC AUC of BG/NBD's expected holdout purchases (fewer = more at risk), the model
    fitted on the split's calibration data."""
    rows = read_rows(path)
    labels = split_labels(rows, split)
    summary = calibration_summary(rows, split=split)
    users = sorted(summary)
    expected = expected_holdout_purchases([summary[u] for u in users], weeks=split.holdout_weeks)
    return _auc([labels[u] for u in users], [-e for e in expected])


def expected_holdout_purchases(
    summary: list[tuple[int, float, float]], *, weeks: float = HOLDOUT_WEEKS
) -> list[float]:
    """Fit BG/NBD on (x, t_x, T) and return each customer's expected purchases in ``weeks``."""
    try:
        import numpy as np
        from lifetimes import BetaGeoFitter
    except ImportError as exc:
        raise ConfigError(
            "the BG/NBD baseline needs the lifetimes package: pip install 'churnwatch[eval]'"
        ) from exc
    x, tx, big_t = (np.array(col, dtype=float) for col in zip(*summary, strict=True))
    model = BetaGeoFitter(penalizer_coef=0.0).fit(x, tx, big_t)
    expected = model.conditional_expected_number_of_purchases_up_to_time(weeks, x, tx, big_t)
    return [float(v) for v in np.asarray(expected)]


def _auc(y: list[int], score: list[float]) -> float:
    auc = roc_auc(y, score)
    if auc is None:
        raise ConfigError("the CDNOW labels have only one class: is the file complete?")
    return auc

"""What a re-drive is asked for and what it reports.

Which failed deliveries to take (:class:`RedriveFilter`, with ``--since``
read by :func:`parse_since`), what became of each (:class:`Outcome`) and the
tally of a run (:class:`RedriveSummary`). Plain values, apart from the
claim-and-send loop (:mod:`services.notifier.redrive`) that fills them in and
the command line (:mod:`services.notifier.redrive_command`) that builds and
prints them.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import Any

_UNITS = {"m": 60.0, "h": 3600.0, "d": 86400.0, "w": 7 * 86400.0}


def parse_since(text: str, *, now: float) -> float:
    """A UNIX time from ``30m``, ``6h``, ``2d``, ``1w`` (ago) or an RFC 3339 time.

    >>> parse_since("2h", now=10_000.0)
    2800.0
    >>> parse_since("2026-01-15T12:00:00Z", now=0.0)
    1768478400.0
    """
    text = text.strip()
    if text[:-1].replace(".", "", 1).isdigit() and text[-1:] in _UNITS:
        return now - float(text[:-1]) * _UNITS[text[-1]]
    try:
        return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(
            f"--since {text!r}: expected 30m, 6h, 2d, 1w or an RFC 3339 time"
        ) from None


@dataclass(frozen=True)
class RedriveFilter:
    """Which failed deliveries to re-drive; every field left None matches all."""

    since: float | None = None
    alert_id: str | None = None
    channel: str | None = None
    user_id: str | None = None

    def matches(self, job: dict[str, Any]) -> bool:
        return (
            (self.since is None or job["failed_at"] >= self.since)
            and (self.alert_id is None or job["alert_id"] == self.alert_id)
            and (self.channel is None or job["channel"] == self.channel)
            and (self.user_id is None or job["user_id"] == self.user_id)
        )


@dataclass(frozen=True)
class Outcome:
    """What happened to one failed delivery: sent, failed, suppressed, deferred or skipped."""

    job: dict[str, Any]
    outcome: str
    reason: str | None = None


@dataclass
class RedriveSummary:
    found: int = 0
    redriven: int = 0
    sent: int = 0
    failed_again: int = 0
    suppressed: int = 0
    deferred: int = 0
    skipped: int = 0
    dry_run: bool = False
    outcomes: list[Outcome] = field(default_factory=list, repr=False)

    def add(self, outcome: Outcome) -> None:
        self.outcomes.append(outcome)
        kind = {"failed": "failed_again"}.get(outcome.outcome, outcome.outcome)
        if kind not in ("sent", "failed_again", "suppressed", "deferred"):
            kind = "skipped"
        setattr(self, kind, getattr(self, kind) + 1)
        if kind != "skipped":
            self.redriven += 1

    def to_dict(self) -> dict[str, Any]:
        return {k: v for k, v in asdict(self).items() if k != "outcomes"}

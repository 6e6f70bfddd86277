"""``churnwatch bench fold``: a busy user's micro-batch folded into its feature state.

A user who has been active every hour for 60 days and every five minutes for
the last two keeps 63 days of counters and the 512 event ids it remembers (the
cap). A micro-batch brings 100 more of its events. ``fold_events`` copies the
state once and applies the events to that copy, as the scorer does with each
user's events of a batch; the baseline, measured in the same run, is
``update_features`` event by event: a new state per event, each copying the
days and the remembered ids (what the scorer did before, and what a replay
still does, since it scores after every event). Pure CPU: no Kafka, no Redis.

Prints the cost of each per event and, as the last line, the fold's figure with
the ratio to the baseline (lower is better).
"""

from __future__ import annotations

import argparse
import timeit
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

from bench.registry import emit
from services.common.events import UserEvent
from services.scorer.core.features import FeatureSettings, UserState, fold_events, update_features

SETTINGS = FeatureSettings()
T0 = datetime(2026, 3, 1, tzinfo=UTC)


def busy_user() -> tuple[UserState, list[UserEvent]]:
    """The state described in the module doc, and a batch of its next 100 events."""
    state: UserState | None = None
    times = [T0 + timedelta(hours=h) for h in range(60 * 24)]
    end = times[-1]
    times += [end + timedelta(minutes=5 * i) for i in range(1, 601)]
    for i, at in enumerate(times):
        props = {"feature": f"f{i % 7}"} if i % 3 == 0 else {}
        event = UserEvent(f"seen-{i}", "busy", "feature_used", at, properties=props)
        state = update_features(state, event, settings=SETTINGS)
    assert state is not None
    last = times[-1]
    batch = [
        UserEvent(f"new-{i}", "busy", "page_view", last + timedelta(seconds=10 * i))
        for i in range(1, 101)
    ]
    return state, batch


def per_event_us(fn: object, events: int, *, repeat: int) -> float:
    best = min(timeit.repeat(fn, number=20, repeat=repeat)) / 20  # type: ignore[arg-type]
    return best / events * 1e6


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(prog="churnwatch bench fold")
    parser.add_argument("--repeat", type=int, default=7, help="timings of 20 batches; best kept")
    args = parser.parse_args(argv)
    state, batch = busy_user()
    print(f"a busy user: {len(state.seen)} remembered ids, {len(state.days)} days of counters")

    def one_by_one() -> None:
        _chain(state, batch)

    def folded() -> None:
        fold_events(state, batch, settings=SETTINGS)

    assert fold_events(state, batch, settings=SETTINGS).state == _chain(state, batch)
    base = per_event_us(one_by_one, len(batch), repeat=args.repeat)
    fold = per_event_us(folded, len(batch), repeat=args.repeat)
    print(f"event by event: {base:.1f} µs an event; folded: {fold:.1f} µs an event")
    emit("fold_us_per_event", fold, "µs/event", base, ratio=fold / base)
    return 0


def _chain(state: UserState, batch: list[UserEvent]) -> UserState:
    for event in batch:
        state = update_features(state, event, settings=SETTINGS)
    return state

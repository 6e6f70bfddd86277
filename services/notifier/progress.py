"""How far the notifier is through its partitions of churn-alerts, for ``/metrics``.

``churnwatch_notifier_consumer_lag`` is, summed over this worker's partitions,
the end of the partition as the consumer last heard it from the broker (its
highwater, which comes with every fetch response) minus the next offset to
handle: the offset of the alert in hand, or one past the last one handled. The
agent notes both as it goes (:meth:`AlertProgress.take`, :meth:`AlertProgress.done`);
a scrape reads them and the consumer's highwater marks, with no request to
Kafka (a scrape must not wait on Kafka).

Counted from what the agent took, not from what was fetched: the alerts Faust
holds in the agent's buffer (up to thousands) are backlog too, and a slow or
stuck provider shows up here. A partition counts once the agent has taken an
alert from it since it was assigned; until then (just assigned, or its alerts
still queued behind another partition's) it counts 0. A revoked partition is
forgotten: its next owner counts it.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from typing import TypeVar

P = TypeVar("P", bound=Hashable)


def backlog(next_offsets: Mapping[P, int], ends: Mapping[P, int | None]) -> int:
    """Records not handled yet: each partition's end minus its next offset to handle.

    A partition whose end is not known (not fetched from yet, revoked since) counts 0;
    so does one whose end was read before the records just handled were fetched.

    >>> backlog({("alerts", 0): 3, ("alerts", 1): 5, ("alerts", 2): 9},
    ...         {("alerts", 0): 10, ("alerts", 1): None, ("alerts", 2): 8})
    7
    """
    return sum(
        max(0, end - next_offsets[p])
        for p, end in ends.items()
        if end is not None and p in next_offsets
    )


class AlertProgress:
    """The next offset to handle on each partition the agent has taken an alert from.

    ``end_of`` returns a partition's highwater as the consumer last heard it, or None
    when it does not know it (not fetched from yet, revoked, consumer stopped); it is
    called from the metrics server's thread, and must neither block nor raise.

    >>> ends = {("alerts", 0): 10}
    >>> progress = AlertProgress(end_of=ends.get)
    >>> progress.lag()  # nothing taken yet
    0
    >>> progress.take(("alerts", 0), 4)
    >>> progress.lag()  # offsets 4 (in hand) to 9
    6
    >>> progress.done(("alerts", 0), 4)
    >>> progress.lag()
    5
    >>> progress.forget([("alerts", 0)])
    >>> progress.lag()
    0
    """

    def __init__(self, *, end_of: Callable[[Hashable], int | None]) -> None:
        self.end_of = end_of
        self._next: dict[Hashable, int] = {}

    def take(self, partition: Hashable, offset: int) -> None:
        """The agent starts on this record: it is the next one not handled."""
        self._next[partition] = offset

    def done(self, partition: Hashable, offset: int) -> None:
        """The agent is done with this record (handled, or dead-lettered)."""
        self._next[partition] = offset + 1

    def forget(self, partitions: Iterable[Hashable]) -> None:
        """Revoked: the partitions may be another worker's now, and so is their backlog."""
        for partition in partitions:
            self._next.pop(partition, None)

    def lag(self) -> int:
        """Read at each scrape, from the metrics server's thread."""
        positions = dict(self._next)  # a copy: the agent writes it on the event loop meanwhile
        return backlog(positions, {p: self.end_of(p) for p in positions})

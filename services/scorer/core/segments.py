"""Lifecycle stage and value tier of a user, read off the feature vector.

Lifecycle stage: the first rule that matches wins (days are configurable in
:class:`SegmentSettings`; defaults shown).

1. **churned**: an explicit churn event (subscription cancelled, account
   deleted, app uninstalled) with no activity since, or no activity for 30 days.
2. **dormant**: no activity for 14 to 30 days.
3. **reactivated**: active in the last 7 days, having come back within the last
   14 days after being dormant or churned (14 silent days, or an explicit churn).
4. **at-risk**: last activity 7 to 14 days ago, or activity in the last 7 days
   below half of the 30-day weekly average.
5. **new**: first seen less than 14 days ago.
6. **loyal**: first seen at least 90 days ago and active on at least 12 of the
   last 30 days.
7. **active**: everyone else.

Why this order: the silence rules come first because they are facts about the
user, not inferences. Reactivated comes before at-risk because right after a
return the 30-day average still holds the activity from before the gap, so the
trend reads low for a user who is in fact coming back. At-risk comes before new,
so a new user who goes quiet for a week is flagged rather than welcomed.

Value tier: recency, frequency (events in 90 days) and monetary value (revenue
in 90 days) are each scored 1 to 5 by streaming quintiles over all users (5 =
most recent, most frequent, highest spend). The tier is the weighted mean with
monetary counted twice, ``(R + F + 2M) / 4``: at least 4 is **high**, at least
2.5 is **medium**, below that **low**.
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

STAGES = ("new", "active", "loyal", "at-risk", "dormant", "churned", "reactivated")
TIERS = ("high", "medium", "low")
RFM_KEYS = ("recency_days", "events_90d", "revenue_90d")
_QUINTILES = (0.2, 0.4, 0.6, 0.8)
_MASK64 = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class SegmentSettings:
    """Thresholds of the lifecycle and value-tier rules (days unless noted).

    ``dormant_after_days`` should match ``vector.RETURN_GAP_DAYS`` (14), the
    gap after which coming back counts as a return.
    """

    churned_after_days: float = 30.0
    dormant_after_days: float = 14.0
    reactivated_for_days: float = 14.0
    at_risk_after_days: float = 7.0
    at_risk_trend: float = 0.5  # 7-day activity / 30-day weekly average
    new_for_days: float = 14.0
    loyal_tenure_days: float = 90.0
    loyal_active_days_30d: float = 12.0
    high_tier_score: float = 4.0
    medium_tier_score: float = 2.5

    def __post_init__(self) -> None:
        if not self.at_risk_after_days <= self.dormant_after_days <= self.churned_after_days:
            raise ValueError("need at_risk_after_days <= dormant_after_days <= churned_after_days")


def lifecycle_stage(
    vector: Mapping[str, float], *, previous_stage: str | None, settings: SegmentSettings
) -> str:
    """The user's lifecycle stage (see the module docstring for the rules).

    >>> s = SegmentSettings()
    >>> v = {"recency_days": 0.2, "tenure_days": 3.0, "trend_7d_vs_30d": 4.0,
    ...      "active_days_30d": 3.0, "explicit_churn": 0.0, "days_since_return": -1.0}
    >>> lifecycle_stage(v, previous_stage=None, settings=s)
    'new'
    >>> lifecycle_stage({**v, "recency_days": 20.0}, previous_stage="new", settings=s)
    'dormant'
    >>> lifecycle_stage({**v, "tenure_days": 40.0, "days_since_return": 0.0},
    ...                 previous_stage="dormant", settings=s)
    'reactivated'
    """
    recency = vector["recency_days"]
    if vector.get("explicit_churn", 0.0) or recency >= settings.churned_after_days:
        return "churned"
    if recency >= settings.dormant_after_days:
        return "dormant"
    since_return = vector.get("days_since_return", -1.0)
    came_back = 0 <= since_return < settings.reactivated_for_days
    # When the return fell outside the kept history, the previous stage still knows.
    if since_return < 0 and previous_stage in ("dormant", "churned"):
        came_back = True
    if came_back and recency < settings.at_risk_after_days:
        return "reactivated"
    if recency >= settings.at_risk_after_days or vector["trend_7d_vs_30d"] < settings.at_risk_trend:
        return "at-risk"
    tenure = vector["tenure_days"]
    if tenure < settings.new_for_days:
        return "new"
    if (
        tenure >= settings.loyal_tenure_days
        and vector["active_days_30d"] >= settings.loyal_active_days_30d
    ):
        return "loyal"
    return "active"


def value_tier(r: int, f: int, m: int, *, settings: SegmentSettings | None = None) -> str:
    """Tier from RFM scores (1-5 each): mean of R, F and twice M.

    >>> value_tier(5, 5, 2), value_tier(3, 3, 5), value_tier(1, 1, 5), value_tier(2, 2, 2)
    ('medium', 'high', 'medium', 'low')
    """
    s = settings or _DEFAULT
    score = (r + f + 2 * m) / 4
    if score >= s.high_tier_score:
        return "high"
    return "medium" if score >= s.medium_tier_score else "low"


_DEFAULT = SegmentSettings()


def _splitmix64(x: int) -> int:
    # A stateless PRNG step: the sampler's randomness is a function of the update
    # count alone, so a checkpoint needs no generator state and replays repeat.
    x = (x + 0x9E3779B97F4A7C15) & _MASK64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _MASK64
    return x ^ (x >> 31)


class RfmQuantiles:
    """Streaming quintile cut points of recency, frequency and monetary value.

    A fixed-size uniform sample of users (reservoir sampling; O(size) memory
    whatever the number of users) gives the cut points, refreshed every
    ``refresh_every`` updates. Past ``horizon`` updates new users replace old
    ones at a constant rate, so the sample follows a drifting population.
    A hand-rolled reservoir rather than ``river.stats.Quantile`` because the
    latter cannot be saved and restored.

    >>> rfm = RfmQuantiles(size=100)
    >>> for i in range(100):
    ...     rfm.update({"recency_days": i, "events_90d": i, "revenue_90d": i})
    >>> rfm.scores({"recency_days": 0, "events_90d": 99, "revenue_90d": 50})
    (5, 5, 3)
    >>> RfmQuantiles.from_dict(rfm.to_dict()).scores({"recency_days": 99,
    ...     "events_90d": 0, "revenue_90d": 0})
    (1, 1, 1)
    """

    def __init__(
        self,
        *,
        size: int = 1024,
        refresh_every: int = 256,
        horizon: int = 100_000,
        seed: int = 0,
        keys: tuple[str, str, str] = RFM_KEYS,
    ) -> None:
        if size < 5 or refresh_every < 1 or horizon < size:
            raise ValueError("need size >= 5, refresh_every >= 1 and horizon >= size")
        self.size, self.refresh_every, self.horizon = size, refresh_every, horizon
        self.seed, self.keys = seed, keys
        self.n = 0
        self._samples: tuple[list[float], list[float], list[float]] = ([], [], [])
        self._cuts: list[list[float]] | None = None
        self._stale = 0

    def update(self, vector: Mapping[str, float]) -> None:
        """Offer one user's vector to the sample."""
        values = [float(vector[k]) for k in self.keys]
        if not all(math.isfinite(v) for v in values):
            return
        self.n += 1
        if len(self._samples[0]) < self.size:
            slot = len(self._samples[0])
            for sample, v in zip(self._samples, values, strict=True):
                sample.append(v)
        else:
            slot = _splitmix64(self.seed ^ self.n) % min(self.n, self.horizon)
            if slot >= self.size:
                return
            for sample, v in zip(self._samples, values, strict=True):
                sample[slot] = v
        self._stale += 1

    def _cut_points(self) -> list[list[float]] | None:
        filling = len(self._samples[0]) < self.size
        if self._stale and (self._cuts is None or filling or self._stale >= self.refresh_every):
            self._cuts = []
            for sample in self._samples:
                ordered = sorted(sample)
                last = len(ordered) - 1
                self._cuts.append([ordered[min(int(q * len(ordered)), last)] for q in _QUINTILES])
            self._stale = 0
        return self._cuts

    def scores(self, vector: Mapping[str, float]) -> tuple[int, int, int]:
        """R, F and M scores 1-5 (3, 3, 3 before any data); recent is high.

        A value scores one more than the number of cut points strictly below it
        (recency: five minus that), so ties at a cut point get the lower score.
        """
        cuts = self._cut_points()
        if cuts is None:
            return 3, 3, 3
        r, f, m = (bisect_left(c, float(vector[k])) for c, k in zip(cuts, self.keys, strict=True))
        return 5 - r, 1 + f, 1 + m

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready checkpoint."""
        return {
            "version": 1,
            "size": self.size,
            "refresh_every": self.refresh_every,
            "horizon": self.horizon,
            "seed": self.seed,
            "keys": list(self.keys),
            "n": self.n,
            "samples": [list(s) for s in self._samples],
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> RfmQuantiles:
        if data.get("version") != 1:
            raise ValueError(f"unknown RFM checkpoint version {data.get('version')!r}")
        k1, k2, k3 = data["keys"]
        out = cls(
            size=data["size"],
            refresh_every=data["refresh_every"],
            horizon=data["horizon"],
            seed=data["seed"],
            keys=(k1, k2, k3),
        )
        out.n = int(data["n"])
        s1, s2, s3 = ([float(x) for x in s][: out.size] for s in data["samples"])
        out._samples = (s1, s2, s3)
        out._stale = 1 if s1 else 0
        return out

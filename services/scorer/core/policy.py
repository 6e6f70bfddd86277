"""The alert policy: bands, hysteresis, cooldown and sharp rises, on scores 0..100.

Rules, in order, for each new score of a user:
1. re-arm: a score below ``rearm_below`` arms the user again;
2. ``band_up``: an armed user moving up into high or critical alerts, and is
   disarmed (so hovering around the high threshold alerts once);
3. ``sharp_rise``: a rise of ``sharp_rise_points`` or more above the lowest
   score of the current window (``sharp_rise_days``) alerts even below high,
   from medium up; it disarms only when the user is already at high or above.
No alert within ``cooldown_days`` of the previous one, whatever the trigger.
A disarmed user climbing from high to critical does not alert again: the
first alert already started the win-back; the risk API shows the live band.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from hashlib import blake2b
from typing import Literal

from services.common.errors import ConfigError

Trigger = Literal["band_up", "sharp_rise"]
BANDS = ("low", "medium", "high", "critical")
_RANK = {band: i for i, band in enumerate(BANDS)}
DAY = 86_400.0


@dataclass(frozen=True, slots=True)
class Thresholds:
    """Band floors on the 0..100 score, and the re-arm level."""

    medium: float = 40.0
    high: float = 65.0
    critical: float = 85.0
    rearm_below: float = 50.0

    def __post_init__(self) -> None:
        if not 0 <= self.medium <= self.high <= self.critical <= 100:
            raise ConfigError("band thresholds must satisfy 0 <= medium <= high <= critical <= 100")
        if self.rearm_below > self.high:
            raise ConfigError("rearm_below must not exceed the high threshold")


@dataclass(frozen=True, slots=True)
class PolicySettings:
    """Default thresholds, overrides per lifecycle stage, cooldown and sharp rise."""

    thresholds: Thresholds = Thresholds()
    by_stage: Mapping[str, Thresholds] = field(default_factory=dict, hash=False)
    cooldown_days: float = 7.0
    sharp_rise: bool = True
    sharp_rise_points: float = 25.0
    sharp_rise_days: float = 1.0

    def __post_init__(self) -> None:
        # Alert ids bucket by day: two alerts of one kind in a day would share an id.
        if self.cooldown_days < 1:
            raise ConfigError("cooldown_days must be >= 1 (alert ids are unique per day)")

    def thresholds_for(self, stage: str | None) -> Thresholds:
        return self.by_stage.get(stage, self.thresholds) if stage else self.thresholds


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every score on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class AlertState:
    """What the policy remembers per user.

    ``last_score``/``last_score_ts`` are the latest score; ``base_score``/
    ``base_ts`` the lowest score of the current sharp-rise window, so a rise
    split over several micro-batches is still seen.
    """

    band: str
    armed: bool
    last_alert_ts: float | None
    last_score: float
    last_score_ts: float
    base_score: float | None = None
    base_ts: float | None = None


def band_for(score: float, settings: PolicySettings, *, stage: str | None = None) -> str:
    """The band of a 0..100 score, with the stage's thresholds if it has its own.

    >>> s = PolicySettings(by_stage={"new": Thresholds(high=75.0)})
    >>> [band_for(score, s) for score in (39, 40, 70, 90)]
    ['low', 'medium', 'high', 'critical']
    >>> band_for(70, s, stage="new")
    'medium'
    """
    t = settings.thresholds_for(stage)
    if score >= t.critical:
        return "critical"
    if score >= t.high:
        return "high"
    return "medium" if score >= t.medium else "low"


def _baseline(
    prev: AlertState | None, score: float, now: float, window: float
) -> tuple[float, float]:
    if prev is None or prev.base_score is None or prev.base_ts is None:
        return score, now
    if now - prev.base_ts > window or score < prev.base_score:
        return score, now
    return prev.base_score, prev.base_ts


def decide_alert(
    prev: AlertState | None,
    *,
    score: float,
    now: float,
    stage: str | None,
    settings: PolicySettings,
) -> tuple[AlertState, Trigger | None]:
    """The user's next state, and the trigger if this score raises an alert.

    >>> s = PolicySettings()
    >>> state, trigger = decide_alert(None, score=70, now=0.0, stage=None, settings=s)
    >>> trigger, state.armed
    ('band_up', False)
    >>> decide_alert(state, score=90, now=DAY, stage=None, settings=s)[1] is None
    True
    """
    t = settings.thresholds_for(stage)
    band = band_for(score, settings, stage=stage)
    prev_band = prev.band if prev else "low"
    armed = (prev.armed if prev else True) or score < t.rearm_below
    last_alert = prev.last_alert_ts if prev else None
    cooled = last_alert is None or now - last_alert >= settings.cooldown_days * DAY
    base_score, base_ts = _baseline(prev, score, now, settings.sharp_rise_days * DAY)

    trigger: Trigger | None = None
    if cooled and armed and _RANK[band] >= _RANK["high"] and _RANK[band] > _RANK[prev_band]:
        trigger = "band_up"
        armed = False
    elif (
        cooled
        and settings.sharp_rise
        and _RANK[band] >= _RANK["medium"]
        and score - base_score >= settings.sharp_rise_points
    ):
        trigger = "sharp_rise"
        armed = armed and _RANK[band] < _RANK["high"]
    if trigger:
        last_alert = now
        base_score, base_ts = score, now  # the alerted level is the new baseline
    state = AlertState(band, armed, last_alert, score, now, base_score, base_ts)
    return state, trigger


def make_alert_id(user_id: str, band: str, trigger: str, ts: float) -> str:
    """A deterministic id: same user, band, trigger and UTC day give the same id on replay.

    >>> morning = make_alert_id("u1", "high", "band_up", 10.0)
    >>> morning == make_alert_id("u1", "high", "band_up", 80_000.0), len(morning)
    (True, 24)
    """
    key = f"{user_id}\x1f{band}\x1f{trigger}\x1f{int(ts // DAY)}".encode()
    return blake2b(key, digest_size=12).hexdigest()

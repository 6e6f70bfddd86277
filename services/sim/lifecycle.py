"""A user's life in the product, day by day: the realistic simulation.

Each user signs up on some day of the period (sign-ups are spread over it),
goes through a one-week onboarding that either forms a habit or not, and from
then on keeps a *habit strength* ``h`` (1 = their usual rate of sessions).
What moves ``h``:

- onboarding: a user whose onboarding works grows towards their usual rate;
  one whose onboarding fails loses a quarter of ``h`` a day (early drop-out);
- habit decay: ``fading`` users start, on a random day, to lose a few per cent
  of ``h`` a day; the others drift back towards 1;
- friction: payment failures, support tickets and complaints, frequent for
  ``frustrated`` users, each cost 10% of ``h`` and add *annoyance*, which
  raises the daily chance of an explicit cancel (``subscription_cancelled``
  for paid plans, ``account_deleted`` for free ones) and decays by 10% a day.

A user whose ``h`` falls below :data:`GONE_BELOW` goes silent (a *silent
fade*). Silent users may come back on their own (rarely) or, if they are
responsive, after a win-back message: the simulator plays the notifier's part
offline and emits ``notification_opened`` (with an ``action_id``) followed by
renewed activity. After an explicit cancel a user sends nothing more.

>>> from services.sim.generator import SimUser
>>> p = Persona(SimUser("u1", "loyal", "UTC", "basic", 1.5), signup_day=0.0,
...             onboards=True, fade_from_day=None, friction_rate=0.01,
...             cancel_per_annoyance=0.02, winback_p=0.0)
>>> evs = [e for _, _, e in live(p, start=0.0, days=10, seed=1)]
>>> evs[0]["type"], all(a["occurred_at"] <= b["occurred_at"] for a, b in zip(evs, evs[1:]))
('signup', True)
"""

from __future__ import annotations

import random
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

from services.sim.generator import DAY, FEATURES, SimUser, _poisson, event, make_users

GONE_BELOW = 0.08  # habit strength under which a user stops coming
FRICTION = ("payment_failed", "support_ticket", "complaint")
PRICES = {"free": 0.0, "basic": 9.99, "premium": 19.99}
RENEW_EVERY_DAYS = 30

# archetype -> (onboarding success, P(starts to fade), friction/day, cancel per annoyance, win-back)
TRAITS: dict[str, tuple[float, float, float, float, float]] = {
    "loyal": (0.97, 0.03, 0.002, 0.01, 0.5),
    "casual": (0.80, 0.25, 0.004, 0.02, 0.4),
    "fading": (0.70, 1.00, 0.004, 0.02, 0.35),
    "frustrated": (0.80, 0.15, 0.10, 0.06, 0.2),
}

Stamped = tuple[float, str, dict[str, Any]]  # (UNIX time, event_id, event): merge-sortable
Day = list[tuple[float, str, dict[str, Any]]]  # (UNIX time, type, properties) of one day


@dataclass(frozen=True)
class Persona:
    """A simulated user and the traits drawn for them once, at sign-up."""

    user: SimUser
    signup_day: float  # days after the start of the period, with the time of day
    onboards: bool  # does onboarding form a habit?
    fade_from_day: float | None  # days after sign-up when the habit starts to decay
    friction_rate: float  # friction events per day
    cancel_per_annoyance: float  # daily cancel probability per unit of annoyance
    winback_p: float  # probability of coming back after a win-back message


def make_personas(n: int, *, days: int, seed: int, prefix: str = "user") -> list[Persona]:
    """``n`` personas whose sign-ups are spread uniformly over ``days``.

    >>> [p.user.user_id for p in make_personas(2, days=30, seed=3)]
    ['user-00000', 'user-00001']
    """
    rng = random.Random(f"personas:{seed}")
    personas = []
    for user in make_users(n, seed=seed, prefix=prefix):
        onboard, fade, friction, cancel, winback = TRAITS[user.archetype]
        rate = user.daily_rate * rng.lognormvariate(0.0, 0.4)
        personas.append(
            Persona(
                user=replace(user, daily_rate=round(rate, 3)),
                signup_day=rng.uniform(0, days),
                onboards=rng.random() < onboard,
                fade_from_day=rng.uniform(7, 40) if rng.random() < fade else None,
                friction_rate=friction,
                cancel_per_annoyance=cancel,
                winback_p=winback if rng.random() < 0.6 else 0.0,
            )
        )
    return personas


@dataclass
class _Life:
    """The mutable state of one user's simulation (private to :func:`live`)."""

    habit: float = 0.3
    annoyance: float = 0.0
    silent_days: int = 0
    touched: bool = False
    renew_due: float = RENEW_EVERY_DAYS
    payment_due_failed: bool = False


def live(p: Persona, *, start: float, days: int, seed: int) -> Iterator[Stamped]:
    """The persona's events from sign-up to the end of the period, in time order."""
    rng = random.Random(f"{seed}:{p.user.user_id}")
    end = start + days * DAY
    seq = 0

    def emit(kind: str, ts: float, **props: Any) -> Stamped:
        nonlocal seq
        seq += 1
        ev = event(p.user, kind, ts, seq, **props)
        return ts, ev["event_id"], ev

    t0 = start + p.signup_day * DAY
    yield emit("signup", t0, plan=p.user.plan)
    paid = PRICES[p.user.plan] > 0
    if paid:
        yield emit("subscription_started", t0 + 1, plan=p.user.plan, **_price(p))
    life = _Life()
    age = 0
    while True:
        age += 1
        # A user's day runs from the minute after sign-up; every event of the
        # day falls within its first 0.97 of it, so days never overlap.
        day_start = t0 + (age - 1) * DAY + 60.0
        if day_start + DAY > end:
            return
        day: Day = []
        _step_habit(p, life, age, rng)
        gone = life.habit < GONE_BELOW
        if gone:
            life.silent_days += 1
            if _comes_back(p, life, rng, day, day_start):
                gone = False
        else:
            life.silent_days = 0
            _sessions(p, life, rng, day, day_start)
        _friction(p, life, rng, day, day_start, paid=paid and not gone)
        if paid and age >= life.renew_due and not gone:
            _renew(p, life, day, day_start)
        cancel = not gone and rng.random() < p.cancel_per_annoyance * life.annoyance
        for ts, kind, props in sorted(day, key=lambda x: x[0]):
            yield emit(kind, ts, **props)
        if cancel:
            kind = "subscription_cancelled" if paid else "account_deleted"
            yield emit(kind, day_start + 0.97 * DAY, reason="friction")
            return


def _price(p: Persona) -> dict[str, Any]:
    return {"amount": PRICES[p.user.plan], "currency": "USD"}


def _step_habit(p: Persona, life: _Life, age: int, rng: random.Random) -> None:
    if age <= 7:  # onboarding week
        life.habit = min(1.2, life.habit * 1.35) if p.onboards else life.habit * 0.75
    elif p.fade_from_day is not None and age >= p.fade_from_day:
        life.habit *= 1 - rng.uniform(0.04, 0.12)
    elif life.habit >= GONE_BELOW:
        life.habit += 0.1 * (1.0 - life.habit) + rng.gauss(0, 0.03)
    life.annoyance *= 0.9


def _comes_back(p: Persona, life: _Life, rng: random.Random, day: Day, day_start: float) -> bool:
    """A silent user's day: maybe a win-back message works, or they return on their own."""
    came_back = rng.random() < 0.004
    if not life.touched and 5 <= life.silent_days <= 25 and rng.random() < 0.15:
        life.touched = True  # one message per silence, as a frequency cap would allow
        if rng.random() < p.winback_p:
            action = f"sim-{p.user.user_id}-{life.silent_days}"
            day.append((day_start + 0.4 * DAY, "notification_opened",
                        {"channel": "email", "action_id": action}))  # fmt: skip
            came_back = True
    if came_back:
        life.habit, life.silent_days, life.touched = 0.7, 0, False
        day.append((day_start + 0.45 * DAY, "login", {}))
    return came_back


def _sessions(p: Persona, life: _Life, rng: random.Random, day: Day, day_start: float) -> None:
    weekend = int((day_start // DAY + 3) % 7) >= 5  # 1970-01-01 was a Thursday
    lam = p.user.daily_rate * life.habit * (0.7 if weekend else 1.0)
    for t in sorted(rng.uniform(0.3, DAY * 0.9) for _ in range(_poisson(rng, lam))):
        ts = day_start + t
        sid = f"s{int(ts)}"
        day.append((ts, "session_start", {"session_id": sid}))
        for _ in range(rng.randint(1, 5)):
            ts += rng.uniform(10, 300)
            day.append((ts, "feature_used", {"feature": rng.choice(FEATURES)}))
        ts += rng.uniform(30, 600)
        dur = round(ts - day_start - t + rng.uniform(0, 30), 1)
        day.append((ts, "session_end", {"session_id": sid, "duration_s": dur}))
        if p.user.plan != "free" and rng.random() < 0.02:
            day.append((ts + 5, "purchase", {"amount": round(rng.uniform(2, 30), 2),
                                              "currency": "USD"}))  # fmt: skip


def _friction(
    p: Persona, life: _Life, rng: random.Random, day: Day, day_start: float, *, paid: bool
) -> None:
    for i, kind in enumerate(FRICTION):
        if kind == "payment_failed" and not paid:
            continue
        if rng.random() < p.friction_rate:
            life.annoyance += 1.0
            life.habit *= 0.9
            life.payment_due_failed |= kind == "payment_failed"
            day.append((day_start + (0.92 + 0.01 * i) * DAY, kind, {}))


def _renew(p: Persona, life: _Life, day: Day, day_start: float) -> None:
    if life.payment_due_failed:  # the card was declined: try again tomorrow
        life.payment_due_failed = False
        life.renew_due += 1
        return
    life.renew_due += RENEW_EVERY_DAYS
    day.append((day_start + 0.01 * DAY, "subscription_renewed", {"plan": p.user.plan, **_price(p)}))

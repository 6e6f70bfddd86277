"""What the scorer reads and writes for each user, whatever the store: the rows of the
``UserStore`` port (``outcome.UserStore``), built by the pure scoring code and
kept by an adapter (``adapters.redis_store`` on Redis, ``adapters.memory_store``
in memory). No I/O here.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["ANY_STAGE", "StoredUser", "UserWrite"]

# UserWrite.previous_stage when the stage the user was in is unknown (its score record
# could not be read): the user's entry is removed from every other stage's risk index.
ANY_STAGE = "*"


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every user read on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class StoredUser:
    features: bytes | None
    policy: bytes | None
    record: bytes | None
    snapshot_day: int | None
    winback: bytes | None = None  # the latest win-back decision, written by the notifier
    # No state, and the user's erase guard (``P:{uid}:erased``, 14 days) is up: the
    # user's events are dropped, not stored again (``batch_users.score_users``).
    erased: bool = False


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every user written on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class UserWrite:
    user_id: str
    features: bytes
    policy: bytes | None  # None: unchanged (the user was not re-scored)
    record: bytes | None
    last_active: float
    risk: float | None
    snapshot: bytes | None = None
    snapshot_day: int | None = None
    alert: bytes | None = None
    active_days: tuple[str, ...] = ()
    label_due: float | None = None
    alert_id: str = ""
    stage: str = ""  # the stage's own risk index (per-stage percentiles)
    cohort_marks: tuple[str, ...] = ()  # "<signup YYYYMMDD>:d<k>": active k days after signup
    previous_stage: str | None = None
    winback: str | None = None  # "won" or "expired": resolve the pending win-back decision
    winback_counter: str = ""  # "<playbook>:<group>" of P:winback:<playbook>:<group>:won

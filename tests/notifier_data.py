"""What the notifier's tests feed it: alerts as the scorer publishes them, and contacts."""

from __future__ import annotations

import time
from datetime import UTC, datetime
from typing import Any

from services.common.messages import ChurnAlert, Reason, Segment, make_alert_id
from services.common.schemas import validate
from services.demo_users import noon_zone


def sample_alert(
    user_id: str,
    *,
    band: str = "high",
    tier: str = "medium",
    bucket: int = 1,
    model_version: str = "test@1",
    occurred_at: datetime | None = None,
    **extra: Any,
) -> dict[str, Any]:
    """A valid alert that moved ``user_id`` up into ``band`` ("No visit for 12 days").

    With the default playbooks, high risk in the medium tier is one e-mail with a
    coupon and nothing else; critical in the high tier adds the CS hand-off.
    """
    critical = band == "critical"
    alert = ChurnAlert(
        alert_id=make_alert_id(user_id, band, bucket),
        user_id=user_id,
        risk=0.93 if critical else 0.7,
        score=93 if critical else 70,
        band=band,
        previous_band="high" if critical else "medium",
        trigger="band_up",
        segment=Segment(stage="active", tier=tier),
        reasons=(Reason("recency_days", "No visit for 12 days", 1.4 if critical else 0.4, 12.0),),
        model_version=model_version,
        horizon_days=14,
        occurred_at=occurred_at or datetime.now(UTC),
        **extra,
    ).to_dict()
    assert validate("churn-alert", alert) == []
    return alert


def give_email_contacts(client: Any, prefix: str, user_ids: list[str]) -> None:
    """An e-mail address ``<uid>@example.test`` with consent for each user, in a time
    zone where it is noon now, so quiet hours never hold a message back.

    ``client``: a redis-py client, single or cluster (one pipeline, no transaction).
    """
    zone = noon_zone(time.time())
    pipe = client.pipeline(transaction=False)
    for uid in user_ids:
        pipe.hset(
            f"{prefix}:{{{uid}}}:contact",
            mapping={"email": f"{uid}@example.test", "timezone": zone, "locale": "en"},
        )
        pipe.hset(f"{prefix}:{{{uid}}}:consent", mapping={"email": 1})
    pipe.execute()

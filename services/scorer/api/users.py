"""Per-user routes: risk, alert and action history, consent, contact, erase."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, HTTPException, Query

from services.scorer.api.deps import ADMIN, READ, Commands, Queries, UserId, errors
from services.scorer.api.models import (
    USER_EXAMPLE,
    ConsentIn,
    ContactIn,
    Erased,
    HistoryPage,
    Saved,
    UserRisk,
)

router = APIRouter(prefix="/v1/users", tags=["users"])

Limit = Annotated[int, Query(ge=1, le=200, description="entries per page")]
Offset = Annotated[int, Query(ge=0, le=10_000, description="entries to skip, newest first")]


def _not_found(user_id: str) -> HTTPException:
    return HTTPException(404, f"no user {user_id!r}: nothing of theirs is stored")


@router.get(
    "/{user_id}",
    dependencies=READ,
    response_model=UserRisk,
    summary="A user's risk, segment, reasons and features",
    description=(
        "The latest score record the scorer wrote for the user, with the feature vector "
        "recomputed from the stored state as of `updated_at`. `percentile` is the share of "
        "users in the same lifecycle stage whose risk is at most this user's (one ZCOUNT on "
        "the stage's risk index). "
        "404 when no event of the user was ever scored."
    ),
    responses={200: {"content": {"application/json": {"example": USER_EXAMPLE}}}, **errors(404)},
)
async def get_user(user_id: UserId, queries: Queries) -> dict[str, Any]:
    found = await queries.user(user_id)
    if found is None:
        raise HTTPException(404, f"no user {user_id!r}: no event of theirs was scored")
    return found


async def _history(
    queries: Queries, user_id: str, kind: Literal["alerts", "actions"], limit: int, offset: int
) -> dict[str, Any]:
    page = await queries.history(user_id, kind, limit=limit, offset=offset)
    if not page["total"] and not await queries.known(user_id):
        raise _not_found(user_id)
    return page


@router.get(
    "/{user_id}/alerts",
    dependencies=READ,
    response_model=HistoryPage,
    summary="A user's churn alerts, newest first",
    description=(
        "The alerts raised for the user (churn-alert v1 messages), newest first, paginated "
        "with `limit` and `offset`. The scorer keeps the latest 50. 404 when nothing of the "
        "user is stored."
    ),
    responses=errors(404),
)
async def get_alerts(
    user_id: UserId, queries: Queries, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    return await _history(queries, user_id, "alerts", limit, offset)


@router.get(
    "/{user_id}/actions",
    dependencies=READ,
    response_model=HistoryPage,
    summary="A user's win-back actions, newest first",
    description=(
        "What the notifier did about the user's alerts (winback-action v1 messages: sent, "
        "deferred, suppressed, control, failed), newest first, paginated with `limit` and "
        "`offset`. Actions never carry contact details. 404 when nothing of the user is stored."
    ),
    responses=errors(404),
)
async def get_actions(
    user_id: UserId, queries: Queries, limit: Limit = 20, offset: Offset = 0
) -> dict[str, Any]:
    return await _history(queries, user_id, "actions", limit, offset)


@router.put(
    "/{user_id}/consent",
    dependencies=ADMIN,
    response_model=Saved,
    summary="Replace a user's channel consent (admin)",
    description=(
        "Which channels (email, sms, push) the user agreed to be contacted on, and the "
        "preferred one, which must be consented. Replaces the stored record; the notifier "
        "reads it before every contact. Works for users not scored yet. Consent to at least "
        "one channel saved after an erase lifts the erase's guard: the user may be "
        "contacted again."
    ),
    responses=errors(422),
)
async def put_consent(user_id: UserId, body: ConsentIn, commands: Commands) -> dict[str, Any]:
    channels = {str(k): v for k, v in body.channels.items()}
    saved = await commands.save_consent(user_id, channels, body.preferred, lift_erase=True)
    return {"user_id": user_id, "saved": saved}


@router.put(
    "/{user_id}/contact",
    dependencies=ADMIN,
    response_model=Saved,
    summary="Replace a user's contact details (admin)",
    description=(
        "E-mail, E.164 phone, push token, BCP 47 locale and IANA time zone, as the notifier "
        "uses them. Replaces the stored record. Values are validated, stored only in the "
        "user's contact key, never logged and never echoed back (not even in 422 bodies)."
    ),
    responses=errors(422),
)
async def put_contact(user_id: UserId, body: ContactIn, commands: Commands) -> dict[str, Any]:
    saved = await commands.save_contact(user_id, body.model_dump())
    return {"user_id": user_id, "saved": saved}


@router.delete(
    "/{user_id}",
    dependencies=ADMIN,
    response_model=Erased,
    summary="Erase everything stored about a user (admin)",
    description=(
        "Deletes every per-user key (features and score record, label snapshots, alerts, "
        "contact, consent, sends, delivery marks, actions), the user's entries in the "
        "last-seen, at-risk and label-due indexes, its deferred win-back jobs and its failed "
        "deliveries (which a re-drive would otherwise send, recording the user again); answers "
        "what was removed. For 14 days after (`guard_until`) the notifier drops the user's "
        "alerts still on their way, unsent and unrecorded, and the scorer drops the user's "
        "events (on the topic, redelivered, or still sent), unless consent to a channel is "
        "saved again through this API. "
        "Kept: the daily active-user HyperLogLogs (no user can be read "
        "back from them) and aggregate win-back counters. Events of the user that arrive "
        "after the 14 days create a new record. 404 when nothing of the user was stored "
        "(the guard is set all the same)."
    ),
    responses=errors(404),
)
async def erase_user(user_id: UserId, commands: Commands) -> dict[str, Any]:
    removed = await commands.erase(user_id)
    if not (
        removed["removed_keys"]
        or removed["removed_from_indexes"]
        or removed["removed_deferred_jobs"]
        or removed["removed_failed_deliveries"]
    ):
        raise _not_found(user_id)
    return removed

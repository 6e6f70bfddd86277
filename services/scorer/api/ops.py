"""Population routes: the at-risk list, activity and win-back stats, model quality."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, HTTPException, Query

from services.scorer.api.deps import READ, Queries, errors
from services.scorer.api.models import AtRiskPage, Band, ModelReport, Stage, Stats, Tier
from services.scorer.queries.at_risk import MAX_EXAMINED
from services.scorer.queries.formats import BadCursor

router = APIRouter(prefix="/v1", tags=["population"])


@router.get(
    "/at-risk",
    dependencies=READ,
    response_model=AtRiskPage,
    summary="Users by churn risk, highest first",
    description=(
        "Reads the at-risk index the scorer keeps (a sorted set user → risk), highest risk "
        "first, and filters on each user's score record (`band`, `stage`, `tier`). Pages "
        "follow `next_cursor` (the last risk and user seen), which stays valid while scores "
        f"change. At most {MAX_EXAMINED} index entries are looked at per request: with "
        "narrow filters a page can hold fewer than `limit` users and still have a "
        "`next_cursor`; `next_cursor` is null at the end of the index."
    ),
    responses=errors(400, 422),
)
async def at_risk(
    queries: Queries,
    band: Annotated[Band | None, Query(description="only this band")] = None,
    stage: Annotated[Stage | None, Query(description="only this lifecycle stage")] = None,
    tier: Annotated[Tier | None, Query(description="only this value tier")] = None,
    limit: Annotated[int, Query(ge=1, le=500, description="users per page")] = 50,
    cursor: Annotated[
        str | None, Query(max_length=400, description="next_cursor of the previous page")
    ] = None,
) -> dict[str, Any]:
    try:
        return await queries.at_risk(limit=limit, cursor=cursor, band=band, stage=stage, tier=tier)
    except BadCursor as exc:
        raise HTTPException(400, str(exc)) from None


@router.get(
    "/stats",
    dependencies=READ,
    response_model=Stats,
    summary="Active users, cohort retention, churn rate and win-back counters",
    description=(
        "`active_users`: distinct users with activity today (DAU), in the last 7 (WAU) and "
        "30 (MAU) UTC days, HyperLogLog estimates (about 0.8% error) from one PFCOUNT each. "
        "`cohorts`: for each of the last 35 UTC signup days with signups, the cohort's size "
        "and the share active on day 1, 7 and 30 after signing up (a day-k share is final "
        "only k days after the signup day). `users_by_stage`: scored users per lifecycle "
        "stage; `churn_rate`: the share of them in the churned stage. "
        "`winback`: per playbook and group (treated, control) the number of users who "
        "entered it (`treated` counter), those won back (`won`, null until the outcome "
        "counter exists) and the win rate. Alerts per day are not kept in Redis and are "
        "not shown here: use the scorer's `churnwatch_scorer_alerts_total` metric."
    ),
    responses=errors(),
)
async def stats(queries: Queries) -> dict[str, Any]:
    return await queries.stats()


@router.get(
    "/model",
    dependencies=READ,
    response_model=ModelReport,
    summary="Model version, labels, quality and checkpoint age per scorer worker",
    description=(
        "One entry per scorer worker that saved a checkpoint: its model version, the label "
        "counts it learned from, progressive-validation quality on recent labels (ROC AUC, "
        "log loss, precision and recall at the alert threshold; null until both classes "
        "were seen) and the age of its last checkpoint. Workers are found by SCAN MATCH "
        "over the quality keys, cached for a minute."
    ),
    responses=errors(),
)
async def model(queries: Queries) -> dict[str, Any]:
    return await queries.model()

"""What every route shares: the read and write sides, the auth guards, error docs."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Path, Request

from services.common.auth import require_scope
from services.scorer.api.commands import AdminCommands
from services.scorer.api.models import ErrorBody
from services.scorer.queries import RiskQueries

READ = [Depends(require_scope("read"))]
ADMIN = [Depends(require_scope("admin"))]

UserId = Annotated[str, Path(min_length=1, max_length=128, description="the user id events carry")]


def get_queries(request: Request) -> RiskQueries:
    queries: RiskQueries = request.app.state.queries
    return queries


def get_commands(request: Request) -> AdminCommands:
    commands: AdminCommands = request.app.state.commands
    return commands


Queries = Annotated[RiskQueries, Depends(get_queries)]
Commands = Annotated[AdminCommands, Depends(get_commands)]

_ERRORS = {
    400: (
        "the request is malformed",
        "cursor is not valid: pass next_cursor from the previous page",
    ),
    401: (
        "no API key, or an unknown one",
        "an API key is required: send 'Authorization: Bearer <key>' or 'X-API-Key'",
    ),
    403: ("the key lacks the scope", "this API key does not have the 'read' scope"),
    404: ("nothing stored for this user", "no user 'u-48213': no event of theirs was scored"),
    422: (
        "a parameter or the body is invalid",
        "body.phone: phone must be E.164: '+', country code and number, digits only",
    ),
    503: ("Redis is unavailable; retry after Retry-After seconds", "Redis is unavailable"),
}


def errors(*codes: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses`` for these error codes, each with an example body."""
    return {
        code: {
            "model": ErrorBody,
            "description": _ERRORS[code][0],
            "content": {"application/json": {"example": {"error": _ERRORS[code][1]}}},
        }
        for code in (*codes, 401, 403, 503)
    }

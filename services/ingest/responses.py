"""Ingest's JSON answers: orjson on the hot path, and the ``{"error": ...}`` body."""

from __future__ import annotations

from typing import Any

import orjson
from fastapi.responses import Response


class ORJSONResponse(Response):
    """JSON through orjson, for the handlers that build their own answers.

    FastAPI's own ``ORJSONResponse`` is deprecated (it serialises through Pydantic
    when a response model is declared); these answers are plain dicts, built per
    request on the hot path, so they keep orjson.
    """

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error(status: int, message: str) -> ORJSONResponse:
    """The answer for a request refused as a whole.

    >>> error(413, "body over 1024 bytes; split it").body
    b'{"error":"body over 1024 bytes; split it"}'
    """
    return ORJSONResponse({"error": message}, status_code=status)

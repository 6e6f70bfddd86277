"""The risk API's reads: what the scorer and the notifier keep in Redis, as plain dicts.

Every query is one or two pipelined round trips over keys it can name (see
``adapters/redis_layout.py`` and ``notifier/adapters/redis_layout.py`` for the
layout). The one exception is the discovery of two small key families that no
index lists, ``P:model:*:quality`` (one per scorer worker) and ``P:winback:*``
(two counters per playbook and group): :meth:`RiskQueries.family` finds them
with ``SCAN MATCH`` and keeps the names for ``scan_every_s`` seconds, so that
cost is paid at most once a minute, not per request. A set of names written by
the scorer and the notifier would remove the scan; until they keep one, this is
the cheap way.

Every query also works on a Redis Cluster: multi-key commands only name keys
of one slot (a user's ``{uid}`` keys, or the daily HLLs under ``{hll}``), values
of keys in several slots are read with one GET each in a pipeline (redis-py
sends one batch per master), and ``SCAN`` goes to every master.

RiskQueries (below) answers each question with a function of one module:

users.py     one user: risk, reasons and features, alert and action history
at_risk.py   the at-risk list, its pages and filters; merged.py, the index merge under it
stats.py     activity, cohorts, stages, win-backs (/v1/stats) and the models (/v1/model)
reads.py     RedisReads: the client, pipelines, index counts and merges, key-family scans
formats.py   cursors, RFC 3339 times and score records as the API shows them
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_layout import INDEX_SHARDS
from services.scorer.queries.at_risk import list_at_risk
from services.scorer.queries.reads import RedisReads
from services.scorer.queries.stats import read_model, read_stats
from services.scorer.queries.users import is_known, read_history, read_user

__all__ = ["RiskQueries"]


class RiskQueries:
    def __init__(
        self,
        client: AsyncRedis,
        *,
        prefix: str,
        scan_every_s: float = 60.0,
        clock: Callable[[], float] = time.time,
        index_shards: int = INDEX_SHARDS,
    ) -> None:
        self.reads = RedisReads(
            client,
            prefix=prefix,
            scan_every_s=scan_every_s,
            clock=clock,
            index_shards=index_shards,
        )

    async def ping(self) -> bool:
        return await self.reads.ping()

    async def user(self, user_id: str) -> dict[str, Any] | None:
        """Risk, segment, reasons and features of one user; None when never scored."""
        return await read_user(self.reads, user_id)

    async def history(self, user_id: str, kind: str, *, limit: int, offset: int) -> dict[str, Any]:
        """A page of a newest-first history list (``alerts`` or ``actions``)."""
        return await read_history(self.reads, user_id, kind, limit=limit, offset=offset)

    async def known(self, user_id: str) -> bool:
        """Whether Redis holds anything of this user (a scored record or a history)."""
        return await is_known(self.reads, user_id)

    async def at_risk(
        self,
        *,
        limit: int,
        cursor: str | None = None,
        band: str | None = None,
        stage: str | None = None,
        tier: str | None = None,
    ) -> dict[str, Any]:
        """Users by risk, highest first, filtered on their score records."""
        return await list_at_risk(
            self.reads, limit=limit, cursor=cursor, band=band, stage=stage, tier=tier
        )

    async def family(self, pattern: str) -> list[str]:
        """Key names matching ``pattern`` (SCAN MATCH), cached for ``scan_every_s``."""
        return await self.reads.family(pattern)

    async def stats(self) -> dict[str, Any]:
        """Active users, cohort retention, users per stage, churn rate, win-back counters."""
        return await read_stats(self.reads)

    async def model(self) -> dict[str, Any]:
        """Each scorer worker's model version, label counts, quality and checkpoint age."""
        return await read_model(self.reads)

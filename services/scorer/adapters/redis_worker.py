"""What the scorer keeps in Redis per worker, not per user: its alert outbox, the
checkpoint requests it answers, its model checkpoints and their quality metrics.

Keys (``P`` = the key prefix; layout in :mod:`~services.scorer.adapters.redis_layout`):
``P:outbox:<worker>``, ``P:control:checkpoint`` (and ``...:done``),
``P:model:<worker>`` (and ``...:<part>``, ``...:quality``).
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_layout import StoreKeys


class WorkerState:
    """This worker's outbox (``keys.outbox``); checkpoint requests; workers' checkpoints."""

    def __init__(self, client: AsyncRedis, *, keys: StoreKeys) -> None:
        self.r = client
        self.keys = keys

    async def outbox(self) -> list[bytes]:
        """Alerts stored as raised whose publication was not confirmed."""
        try:
            found = await self.r.hvals(self.keys.outbox)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return [v if isinstance(v, bytes) else str(v).encode() for v in found]

    async def published(self, alert_ids: Sequence[str]) -> None:
        """Kafka acknowledged these alerts: take them out of the outbox."""
        if not alert_ids:
            return
        try:
            await self.r.hdel(self.keys.outbox, *alert_ids)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def checkpoint_request(self) -> bytes | str | None:
        """The id ``churnwatch replay`` (or an operator) left in ``P:control:checkpoint``."""
        try:
            request: bytes | str | None = await self.r.get(f"{self.keys.prefix}:control:checkpoint")
        except RedisError as exc:
            raise StoreUnavailable(f"Redis checkpoint request failed: {exc}") from exc
        return request

    async def checkpoint_done(self, request: bytes | str) -> None:
        """Acknowledge a checkpoint request: its id in ``...:done``, the request gone."""
        key = f"{self.keys.prefix}:control:checkpoint"
        try:
            await self.r.set(f"{key}:done", request)
            await self.r.delete(key)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis checkpoint request failed: {exc}") from exc

    async def save_quality(self, worker: str, data: bytes) -> None:
        try:
            await self.r.set(f"{self.keys.prefix}:model:{worker}:quality", data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None:
        """The worker's model checkpoint, or with ``part`` another part of its state."""
        try:
            data = await self.r.get(self._checkpoint_key(worker, part))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return data.encode() if isinstance(data, str) else data

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None:
        try:
            await self.r.set(self._checkpoint_key(worker, part), data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    def _checkpoint_key(self, worker: str, part: str) -> str:
        return f"{self.keys.prefix}:model:{worker}" + (f":{part}" if part else "")

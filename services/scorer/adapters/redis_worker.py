"""What the scorer keeps in Redis per worker, not per user: its alert outbox, the
checkpoint and model-load requests it answers, its model checkpoints and their
quality metrics.

Keys (``P`` = the key prefix; layout in :mod:`~services.scorer.adapters.redis_layout`):
``P:outbox:<worker>``, ``P:control:checkpoint`` (and ``...:done``),
``P:control:model:{<worker>}`` (and ``...:done``: ``churnwatch scorer model load``),
``P:model:<worker>`` (and ``...:<part>``, ``...:quality``).
"""

from __future__ import annotations

from collections.abc import Sequence
from hashlib import blake2b
from typing import Any

import orjson
from redis.exceptions import RedisClusterException, RedisError

from services.common.errors import StoreUnavailable
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_layout import StoreKeys

# Take a model-load request away only if it is still the one read: a newer request
# written meanwhile stays for the next look.
TAKE_REQUEST = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
end
redis.call('SET', KEYS[2], ARGV[2])
return 1
"""


def request_id(request: bytes) -> str:
    """What names a model-load request in the worker's answer: a hash of the model sent.

    >>> request_id(b"model bytes")
    '4ec8b0d0c11433ee'
    """
    return blake2b(request, digest_size=8).hexdigest()


def model_request_key(prefix: str, worker: str) -> str:
    """Where ``churnwatch scorer model load`` leaves a model for ``worker`` (``...:done``:
    the worker's answer). The worker's name is the hash tag: on a Redis Cluster the
    request and its answer share a slot, as the script that answers needs.

    >>> model_request_key("cw", "scorer-0")
    'cw:control:model:{scorer-0}'
    """
    return f"{prefix}:control:model:{{{worker}}}"


def quality_pattern(prefix: str) -> str:
    """What matches every worker's quality record (one per checkpointing worker).

    >>> quality_pattern("cw")
    'cw:model:*:quality'
    """
    return checkpoint_key(prefix, "*", "quality")


def worker_of(prefix: str, quality_key: bytes | str) -> str:
    """The worker a quality record belongs to.

    >>> worker_of("cw", b"cw:model:scorer-0:quality")
    'scorer-0'
    """
    name = quality_key.decode() if isinstance(quality_key, bytes) else quality_key
    return name[len(checkpoint_key(prefix, "")) : -len(":quality")]


def checkpoint_key(prefix: str, worker: str, part: str = "") -> str:
    """The worker's model checkpoint, or another ``part`` of its state (rfm, quality).

    >>> checkpoint_key("cw", "scorer-0"), checkpoint_key("cw", "scorer-0", "quality")
    ('cw:model:scorer-0', 'cw:model:scorer-0:quality')
    """
    return f"{prefix}:model:{worker}" + (f":{part}" if part else "")


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

    async def model_request(self, worker: str) -> bytes | None:
        """A model left for this worker by ``churnwatch scorer model load``, if any."""
        try:
            data = await self.r.get(model_request_key(self.keys.prefix, worker))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis model request failed: {exc}") from exc
        return data.encode() if isinstance(data, str) else data

    async def model_request_done(self, worker: str, request: bytes, answer: bytes) -> None:
        """Answer a model-load request in ``...:done``, and take the request away."""
        key = model_request_key(self.keys.prefix, worker)
        try:
            await self.r.eval(TAKE_REQUEST, 2, key, f"{key}:done", request, answer)
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"Redis model request failed: {exc}") from exc

    async def save_quality(self, worker: str, data: bytes) -> None:
        try:
            await self.r.set(checkpoint_key(self.keys.prefix, worker, "quality"), data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

    async def load_checkpoint(self, worker: str, part: str = "") -> bytes | None:
        """The worker's model checkpoint, or with ``part`` another part of its state."""
        try:
            data = await self.r.get(checkpoint_key(self.keys.prefix, worker, part))
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        return data.encode() if isinstance(data, str) else data

    async def newest_checkpoint(self, *, besides: str) -> tuple[str, bytes, bytes | None] | None:
        """The model another worker saved last (by its quality record's ``saved_at``):
        that worker's name, its model and its value-tier quantiles; None when there is
        none. Read at a worker's first start, when it has no checkpoint of its own."""
        prefix = self.keys.prefix
        newest: tuple[float, str] | None = None
        try:
            async for key in self.r.scan_iter(match=quality_pattern(prefix), count=1000):
                worker = worker_of(prefix, key)
                saved = (read_quality(await self.r.get(key)) or {}).get("saved_at")
                if worker != besides and isinstance(saved, int | float):
                    newest = max(newest or (saved, worker), (saved, worker))
            if newest is None:
                return None
            model = await self.r.get(checkpoint_key(self.keys.prefix, newest[1]))
            rfm = await self.r.get(checkpoint_key(self.keys.prefix, newest[1], "rfm"))
        except (RedisError, RedisClusterException) as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        if model is None:
            return None
        return newest[1], _bytes(model), _bytes(rfm) if rfm is not None else None

    async def save_checkpoint(self, worker: str, data: bytes, part: str = "") -> None:
        try:
            await self.r.set(checkpoint_key(self.keys.prefix, worker, part), data)
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc


def _bytes(value: bytes | str) -> bytes:
    return value.encode() if isinstance(value, str) else value


def read_quality(raw: bytes | str | None) -> dict[str, Any] | None:
    """A worker's quality record (``checkpoint_key(P, worker, "quality")``); None when
    there is none or it cannot be read.

    >>> read_quality(b'{"saved_at": 12.5}'), read_quality(b"junk"), read_quality(b"[1]")
    ({'saved_at': 12.5}, None, None)
    """
    try:
        found = orjson.loads(raw) if raw else None
    except orjson.JSONDecodeError:
        return None
    return found if isinstance(found, dict) else None

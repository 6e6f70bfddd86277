"""API keys with scopes: what a key grants, where its hash is kept, how it is resolved.

A key is a random string shown once, when it is created; Redis keeps only its
sha256, in the hash ``<key_prefix>:apikeys`` (field = hash, value = JSON
``{"scopes": [...], "name": ..., "created": ...}``). Scopes are ``ingest``,
``read`` and ``admin``; ``admin`` implies the others.

Nothing here knows HTTP (:mod:`services.common.auth` puts it in front of the
routes). Lookups are cached in-process for a few seconds, so the hot path does
not ask Redis per request. In development mode the key ``dev-key`` is accepted
with every scope; in production there is no default key.

>>> keys = ApiKeys(MemoryKeyStore(), allow_dev_key=True)
>>> keys.lookup("dev-key").allows("ingest"), keys.lookup("nope")
(True, None)
>>> secret = create_key(keys.store, scopes=["read"], name="ops")
>>> found = keys.lookup(secret)
>>> found.allows("read"), found.allows("ingest")
(True, False)
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Protocol

import orjson

from services.common.errors import ConfigError, StoreUnavailable

if TYPE_CHECKING:
    from services.common.redis_client import SyncRedis
from services.common.settings import CommonSettings

SCOPES = ("ingest", "read", "admin")
DEV_KEY = "dev-key"


@dataclass(frozen=True, slots=True)
class ApiKey:
    """What a key may do; never holds the key itself."""

    name: str
    scopes: frozenset[str]
    created: str = ""

    def allows(self, scope: str) -> bool:
        return scope in self.scopes or "admin" in self.scopes


def hash_key(key: str) -> str:
    """The stored form of a key.

    >>> hash_key("dev-key")[:12]
    '7e9f8fd11180'
    """
    return hashlib.sha256(key.encode()).hexdigest()


class KeyStore(Protocol):
    def get(self, key_hash: str) -> ApiKey | None:
        """The key with this hash, or None; raises StoreUnavailable."""

    def put(self, key_hash: str, key: ApiKey) -> None:
        """Store (or replace) a key under its hash."""

    def ready(self) -> bool:
        """True when the store answers (for readiness checks); never raises."""


class MemoryKeyStore:
    """In-memory :class:`KeyStore` for tests; ``down`` makes it unavailable."""

    def __init__(self) -> None:
        self.keys: dict[str, ApiKey] = {}
        self.gets = 0
        self.down = False

    def get(self, key_hash: str) -> ApiKey | None:
        self.gets += 1
        if self.down:
            raise StoreUnavailable("key store: down")
        return self.keys.get(key_hash)

    def put(self, key_hash: str, key: ApiKey) -> None:
        if self.down:
            raise StoreUnavailable("key store: down")
        self.keys[key_hash] = key

    def ready(self) -> bool:
        return not self.down


class RedisKeyStore:
    """Keys in the Redis hash ``<key_prefix>:apikeys``; connects on first use."""

    def __init__(self, redis_url: str, *, key_prefix: str, cluster: bool = False) -> None:
        import redis
        from redis.exceptions import RedisClusterException

        self.name = f"{key_prefix}:apikeys"
        self._url, self._cluster = redis_url, cluster
        self._client: SyncRedis | None = None
        self._errors: tuple[type[BaseException], ...] = (
            redis.RedisError,
            RedisClusterException,
            OSError,
        )

    @property
    def _redis(self) -> SyncRedis:
        # A cluster client asks for the slot map when made: not before the first use.
        if self._client is None:
            from services.common.redis_client import sync_redis

            self._client = sync_redis(
                self._url, cluster=self._cluster, socket_timeout=2, socket_connect_timeout=2
            )
        return self._client

    def get(self, key_hash: str) -> ApiKey | None:
        try:
            raw = self._redis.hget(self.name, key_hash)
        except self._errors as exc:
            raise StoreUnavailable(f"key store: {exc}") from exc
        if raw is None:
            return None
        data = orjson.loads(raw)
        return ApiKey(data.get("name", ""), frozenset(data["scopes"]), data.get("created", ""))

    def put(self, key_hash: str, key: ApiKey) -> None:
        value = {"scopes": sorted(key.scopes), "name": key.name, "created": key.created}
        try:
            self._redis.hset(self.name, key_hash, orjson.dumps(value))
        except self._errors as exc:
            raise StoreUnavailable(f"key store: {exc}") from exc

    def ready(self) -> bool:
        # EXISTS on the hash itself: on a cluster it asks the node that holds the keys.
        # Bounded by the client's 2 s socket timeouts.
        try:
            self._redis.exists(self.name)
        except self._errors:
            return False
        return True


def create_key(store: KeyStore, *, scopes: Iterable[str], name: str = "") -> str:
    """Make a new random key with ``scopes``, store its hash, return the key (shown once)."""
    wanted = frozenset(scopes)
    unknown = wanted - set(SCOPES)
    if not wanted or unknown:
        raise ConfigError(f"scopes must be some of {', '.join(SCOPES)}; got {sorted(wanted)}")
    key = secrets.token_urlsafe(32)
    created = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
    store.put(hash_key(key), ApiKey(name, wanted, created))
    return key


class ApiKeys:
    """Resolves presented keys, caching answers (found or not) for ``ttl_s`` seconds."""

    def __init__(
        self,
        store: KeyStore,
        *,
        allow_dev_key: bool,
        ttl_s: float = 5.0,
        max_cached: int = 10_000,
    ) -> None:
        self.store = store
        self.allow_dev_key = allow_dev_key
        self.ttl_s = ttl_s
        self.max_cached = max_cached
        self._cache: dict[str, tuple[float, ApiKey | None]] = {}
        self._lock = threading.Lock()

    def cached(self, key: str) -> tuple[bool, ApiKey | None]:
        """(hit, answer) from the cache only; never blocks on the store."""
        if self.allow_dev_key and key == DEV_KEY:
            return True, ApiKey("development key", frozenset(SCOPES))
        entry = self._cache.get(key)
        if entry is not None and entry[0] > time.monotonic():
            return True, entry[1]
        return False, None

    def lookup(self, key: str) -> ApiKey | None:
        """The key's grant, or None when unknown; raises StoreUnavailable."""
        hit, found = self.cached(key)
        if hit:
            return found
        found = self.store.get(hash_key(key))
        with self._lock:
            if len(self._cache) >= self.max_cached:
                self._cache.clear()  # a flood of unknown keys must not grow memory
            self._cache[key] = (time.monotonic() + self.ttl_s, found)
        return found


def keys_from_settings(settings: CommonSettings) -> ApiKeys:
    """Redis-backed keys; ``dev-key`` only in development mode."""
    store = RedisKeyStore(
        settings.redis_url, key_prefix=settings.key_prefix, cluster=settings.redis_cluster
    )
    return ApiKeys(store, allow_dev_key=not settings.is_production)

"""Where and how the scorer's Redis adapter keeps things: key names, the user's
string, the shards of the shared indexes, and the snapshot form of the layout
before (``redis_store`` reads and writes them).

Key layout (``P`` = ``CHURNWATCH_KEY_PREFIX``, default ``cw``). Per-user keys
carry the user id as a hash tag ``{uid}``, so Redis Cluster keeps all of one
user's keys in one slot:

    P:{uid}:s          str   the scorer's whole record of the user, binary (see join_user):
                             score record (core.records), day of the last snapshot,
                             alert-policy state (core.policy_codec), feature state
                             (core.state_codec, MessagePack), then the pending label
                             snapshots (core.snapshot_codec), oldest first
    P:{uid}:u          hash  wb/wbid = the notifier's latest win-back decision (resolved by the
                             scorer);
                             only users with one have it. Before the compact layout it also
                             held f/p/r/sd (features, policy, JSON record, snapshot day)
    P:{uid}:snap       list  before the compact layout: pending snapshots (deflated JSON);
                             still read and trimmed until empty
    P:{uid}:alerts     list  newest-first alert history (capped)
    P:{uid}:erased     str   set by the risk API's erase for 14 days (the notifier's layout):
                             the scorer drops the events of a user with no state under it
    P:lastseen:<n>     zset  user -> last activity, shard n of ``index_shards`` (the silent-
                             user sweep's index); P:lastseen, the one unsharded set of
                             before, is still read, and emptied as users are written
    P:snapdue:<n>      zset  user -> earliest time one of its snapshots may get its label
                             (sharded the same way; P:snapdue still read)
    P:atrisk:<stage>:<n> zset  user -> current risk within one lifecycle stage, sharded
                             the same way (the API's at-risk listing merges them all;
                             per-stage percentiles; P:atrisk:<stage> still read)
    P:{hll}:d:YYYYMMDD HLL   users active that day (DAU/WAU/MAU by PFCOUNT over several
                             days: one hash tag for all of them, so that works on a cluster)
    P:cohort:YYYYMMDD:d<k>  HLL  users who signed up that day and were active k days
                              later, k in 0 (the cohort), 1, 7, 30: day-k retention
    P:outbox:<worker>  hash  alert_id -> alert, until Kafka acknowledged it
    P:model:<worker>   str   model checkpoint of one worker (+ ":quality", its metrics, and
                             ":rfm", the RFM quantiles' sample that the value tiers use)

Why this shape (BENCHMARKS.md, "memory"): Redis keeps a hash with a value over
64 bytes as a hash table and a sorted set of over 128 members as a skiplist,
~100 bytes per field or member in overhead; one string per user and indexes
sharded into sets of <= 128 members (listpacks, ~20 bytes a member) cost a
fraction of that. A user's shard is ``shard_of`` (the first 24 bits of the
SHA-1 of the id, modulo ``index_shards``), computed alike here and in the
scripts (``redis.sha1hex``). ``index_shards`` (``CHURNWATCH_REDIS_INDEX_SHARDS``)
should be >= users / 100; changing it needs a re-index (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from services.common.errors import BROKEN_VALUE, UnreadableStored

INDEX_SHARDS = 1024  # per shared index: <= 128 users each up to ~130,000 users


@dataclass(frozen=True, slots=True)
class StoreKeys:
    """The scorer store's own keys for a prefix and a worker (the layout above).

    >>> StoreKeys.of("P", "w1").outbox
    'P:outbox:w1'
    """

    prefix: str
    lastseen: str
    atrisk: str
    snapdue: str
    outbox: str

    @classmethod
    def of(cls, prefix: str, worker: str) -> StoreKeys:
        return cls(
            prefix,
            lastseen=f"{prefix}:lastseen",
            atrisk=f"{prefix}:atrisk",
            snapdue=f"{prefix}:snapdue",
            outbox=f"{prefix}:outbox:{worker}",
        )


def shard_of(member: str, shards: int) -> int:
    """The shard of a sharded index that holds ``member`` (as the scripts compute it).

    >>> shard_of("u42", 1024), shard_of("u42", 1024) == shard_of("u42", 1024)
    (657, True)
    """
    return int(hashlib.sha1(member.encode()).hexdigest()[:6], 16) % shards


def shard_key(index: str, member: str, shards: int) -> str:
    """The key of the shard of sharded index ``index`` that holds ``member``.

    >>> shard_key("P:snapdue", "u42", 1024)
    'P:snapdue:657'
    """
    return f"{index}:{shard_of(member, shards)}"


def index_keys(index: str, shards: int) -> list[str]:
    """Every key of sharded index ``index``: the old unsharded set, then each shard.

    >>> index_keys("P:lastseen", 3)
    ['P:lastseen', 'P:lastseen:0', 'P:lastseen:1', 'P:lastseen:2']
    """
    return [index, *(f"{index}:{s}" for s in range(shards))]


def merge_ranges(ranges: Iterable[tuple[float, float]]) -> list[tuple[float, float]]:
    """Sorted, disjoint [low, high) ranges covering the same scores.

    >>> merge_ranges([(5, 7), (1, 3), (2, 4), (7, 8)])
    [(1, 4), (5, 8)]
    """
    out: list[tuple[float, float]] = []
    for low, high in sorted(r for r in ranges if r[0] < r[1]):
        if out and low <= out[-1][1]:
            out[-1] = (out[-1][0], max(out[-1][1], high))
        else:
            out.append((low, high))
    return out


def user_key(prefix: str, user_id: str, kind: str = "u") -> str:
    """The key of one of a user's records, hash-tagged by user id.

    >>> user_key("cw", "u42")
    'cw:{u42}:u'
    """
    return f"{prefix}:{{{user_id}}}:{kind}"


def day_key(prefix: str, day: str) -> str:
    """The HLL of the users active on ``day`` (YYYYMMDD); one hash tag for every day.

    >>> day_key("cw", "20261118")
    'cw:{hll}:d:20261118'
    """
    return f"{prefix}:{{hll}}:d:{day}"


# Snapshots are most of a user's bytes (one JSON vector per scored day, kept until
# its label resolves), and their keys repeat in every one of them. Deflate with
# this preset dictionary stores the keys almost for free (~700 -> ~80 bytes).
# Stored data depends on it: never edit it, add a new marker and dictionary.
_SNAPSHOT_MARK = b"\x00s1"  # JSON never starts with a NUL byte
_SNAPSHOT_ZDICT = (
    b'{"user_id":"u-000000","taken_at":1767830400.0,"day":20461,"features":{'
    b'"recency_days":0.0,"tenure_days":1.0,"events_1d":1.0,"events_7d":2.0,"events_30d":3.0,'
    b'"events_90d":4.0,"active_days_1d":1.0,"active_days_7d":2.0,"active_days_30d":3.0,'
    b'"active_days_90d":4.0,"sessions_30d":5.0,"mean_session_s":600.0,'
    b'"distinct_features_30d":2.0,"purchases_30d":0.0,"purchases_90d":1.0,"revenue_30d":0.0,'
    b'"revenue_90d":9.99,"is_paid":1.0,"payment_failures_30d":0.0,"trend_7d_vs_30d":1.0,'
    b'"sessions_change":0.0,"support_tickets_30d":0.0,"complaints_30d":0.0,'
    b'"downgrades_90d":0.0,"uninstalled":0.0,"winback_sent_90d":0.0,'
    b'"winback_responded_90d":0.0,"explicit_churn":0.0,"days_since_return":-1.0},'
    b'"raw":0.5,"risk":0.123456}'
)


def pack_snapshot(data: bytes) -> bytes:
    """The stored form of one snapshot's JSON: deflated against a preset dictionary.

    >>> raw = b'{"user_id":"u1","features":{"recency_days":2.5,"events_30d":3.0}}'
    >>> packed = pack_snapshot(raw)
    >>> len(packed) < len(raw), unpack_snapshot(packed) == raw, unpack_snapshot(raw) == raw
    (True, True, True)
    """
    deflate = zlib.compressobj(9, zlib.DEFLATED, -15, 9, zlib.Z_DEFAULT_STRATEGY, _SNAPSHOT_ZDICT)
    return _SNAPSHOT_MARK + deflate.compress(data) + deflate.flush()


def unpack_snapshot(data: bytes) -> bytes:
    """The snapshot's JSON again; plain JSON (written before packing existed) passes through."""
    if not data.startswith(_SNAPSHOT_MARK):
        return data
    inflate = zlib.decompressobj(-15, _SNAPSHOT_ZDICT)
    return inflate.decompress(data[len(_SNAPSHOT_MARK) :]) + inflate.flush()


_USER_MARK = 0xC1  # neither JSON nor any older format starts with this byte
_U16 = struct.Struct("<H")


def join_user(
    *,
    features: bytes,
    record: bytes = b"",
    policy: bytes = b"",
    snapshot_day: int | None = None,
    snapshots: Sequence[bytes] = (),
) -> bytes:
    """A user's string ``P:{uid}:s`` (the PUTUSER command builds it in Lua).

    Layout, little-endian: ``C1``, u16 length + score record (first, so a
    GETRANGE can read it alone), u16 day of the last snapshot (0 = none), u16
    length + policy state, u16 length + feature state, then per pending
    snapshot u16 length + snapshot, oldest first.

    >>> blob = join_user(features=b"F", record=b"R", policy=b"P", snapshot_day=7,
    ...                  snapshots=[b"s1", b"s2"])
    >>> blob.hex(" ")
    'c1 01 00 52 07 00 01 00 50 01 00 46 02 00 73 31 02 00 73 32'
    >>> split_user(blob)
    UserString(record=b'R', snapshot_day=7, policy=b'P', features=b'F', snapshots=[b's1', b's2'])
    """
    parts = [bytes((_USER_MARK,)), _U16.pack(len(record)), record, _U16.pack(snapshot_day or 0)]
    parts += [_U16.pack(len(policy)), policy, _U16.pack(len(features)), features]
    for snap in snapshots:
        parts += [_U16.pack(len(snap)), snap]
    return b"".join(parts)


# Not frozen: a frozen dataclass is built field by field through object.__setattr__
# (~100 ns a field), and this one is made for every user read on the scorer's hot path. Treat
# it as immutable all the same.
@dataclass(slots=True)
class UserString:
    record: bytes
    snapshot_day: int
    policy: bytes
    features: bytes
    snapshots: list[bytes]


def split_user(blob: bytes, *, snapshots: bool = True) -> UserString:
    """Inverse of :func:`join_user`.

    Raises :class:`UnreadableStored` (a ``ValueError``) for a string of another
    layout (a newer version's, read after a rollback) or a damaged one.
    """
    try:
        return _split_user(blob, snapshots=snapshots)
    except BROKEN_VALUE as exc:
        raise UnreadableStored(f"stored user string unreadable: {exc}") from None


def _split_user(blob: bytes, *, snapshots: bool) -> UserString:
    if blob[:1] != b"\xc1":
        raise ValueError(f"not a user string (first byte {blob[:1]!r})")
    n = _U16.unpack_from(blob, 1)[0]
    record = blob[3 : 3 + n]
    pos = 3 + n
    day, n = struct.unpack_from("<HH", blob, pos)
    policy = blob[pos + 4 : pos + 4 + n]
    pos += 4 + n
    n = _U16.unpack_from(blob, pos)[0]
    features = blob[pos + 2 : pos + 2 + n]
    pos += 2 + n
    snaps = []
    while snapshots and pos < len(blob):
        n = _U16.unpack_from(blob, pos)[0]
        snaps.append(blob[pos + 2 : pos + 2 + n])
        pos += 2 + n
    return UserString(record, day, policy, features, snaps)


def user_fields(blob: bytes | None, legacy: Sequence[Any]) -> tuple[bytes | None, bytes | None]:
    """(features, score record) of a user from its string, or else from its old hash's (f, r).

    Raises :class:`UnreadableStored` for a string :func:`split_user` cannot read.

    >>> try:
    ...     user_fields(b"\\xc2 a newer layout", (None, None))
    ... except UnreadableStored as exc:
    ...     print(exc)
    stored user string unreadable: not a user string (first byte b'\\xc2')
    """
    if blob:
        user = split_user(blob, snapshots=False)
        return user.features, user.record or None
    return legacy[0], legacy[1]

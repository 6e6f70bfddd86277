"""A learning round's snapshots in Redis: read the due users' snapshots, then drop the learned.

The label round finds its users in the label-due index
(``RedisUserStore.users_with_labels_due``), reads each one's feature state and
pending snapshots with :meth:`LabelSnapshots.load_snapshots`, and once the
model learned, trims them with :meth:`LabelSnapshots.keep_snapshots`.

``keep_snapshots`` (after learning) trims each user's snapshot list and moves
its label-due time: one transaction on one Redis, one pipeline on a cluster; a
partial failure there re-reads (never loses) snapshots, as on one Redis when
the whole transaction fails after the model learned.
"""

from __future__ import annotations

from collections.abc import Sequence

from redis.exceptions import RedisError

from services.common.errors import StoreUnavailable, UnreadableStored
from services.common.redis_client import AsyncRedis
from services.scorer.adapters.redis_commands import Command, apply_all, pack
from services.scorer.adapters.redis_indexes import ShardedIndexes
from services.scorer.adapters.redis_layout import StoreKeys, split_user, unpack_snapshot, user_key
from services.scorer.adapters.redis_scripts import APPLY, LOAD_SNAPSHOTS


class LabelSnapshots:
    """The users' pending label snapshots and the label-due index ``keys.snapdue``."""

    def __init__(
        self,
        client: AsyncRedis,
        *,
        keys: StoreKeys,
        indexes: ShardedIndexes,
        cluster: bool,
    ) -> None:
        self.r = client
        self.keys = keys
        self.indexes = indexes
        self._apply = None if cluster else client.register_script(APPLY)
        self._load_snapshots = None if cluster else client.register_script(LOAD_SNAPSHOTS)

    async def load_snapshots(
        self, user_ids: Sequence[str]
    ) -> dict[str, tuple[bytes | None, list[bytes]]]:
        """Each user's feature state and pending snapshots, in one round trip."""
        try:
            if not user_ids:
                rows = []
            elif self._load_snapshots is not None:
                rows = await self._load_snapshots(args=[self.keys.prefix, pack(list(user_ids))])
            else:
                kinds = ("s", "u", "snap")
                keys = [user_key(self.keys.prefix, uid, kind) for uid in user_ids for kind in kinds]
                async with self.r.pipeline(transaction=False) as pipe:
                    for i in range(0, len(keys), 3):
                        pipe.eval(LOAD_SNAPSHOTS, 3, *keys[i : i + 3])
                    rows = [x for found in await pipe.execute() for x in found]
        except RedisError as exc:
            raise StoreUnavailable(f"Redis read failed: {exc}") from exc
        out = {}
        for i, uid in enumerate(user_ids):
            blob, features, listed = rows[3 * i : 3 * i + 3]
            snaps = [unpack_snapshot(snap) for snap in listed]  # the old list's: older
            if blob:
                try:
                    user = split_user(blob)
                except UnreadableStored:  # as in a batch's read: the state decoder refuses it
                    out[uid] = (blob, snaps)
                    continue
                features = user.features
                snaps += user.snapshots
            out[uid] = (features, snaps)
        return out

    async def keep_snapshots(self, remaining: dict[str, tuple[int, float | None]]) -> None:
        """Drop each user's oldest ``n`` snapshots (now learned) and set its next due time."""
        try:
            trims: list[Command] = [
                (
                    "TRIMSNAP",
                    user_key(self.keys.prefix, uid, "s"),
                    user_key(self.keys.prefix, uid, "snap"),
                    dropped,
                )
                for uid, (dropped, _) in remaining.items()
                if dropped
            ]
            if self._apply is not None:  # one script, atomic like a transaction
                commands: list[Command] = trims
                due_now: dict[str, float] = {}
                gone: list[str] = []
                for uid, (_, due) in remaining.items():
                    if due is None:
                        gone.append(uid)
                    else:
                        due_now[uid] = due
                commands += self.indexes.removes(self.keys.snapdue, gone)
                commands += self.indexes.adds(self.keys.snapdue, due_now, "")
                await apply_all(self._apply, commands)
                return
            # On a cluster the users' lists and the due index are in other slots
            # (see the module doc of ``redis_writes``).
            async with self.r.pipeline(transaction=False) as pipe:
                for trim in trims:
                    pipe.eval(APPLY, 2, trim[1], trim[2], pack([trim]))
                gone = [uid for uid, (_, due) in remaining.items() if due is None]
                due_now = {uid: due for uid, (_, due) in remaining.items() if due is not None}
                shared = self.indexes.removes(self.keys.snapdue, gone)
                for command in shared + self.indexes.adds(self.keys.snapdue, due_now, ""):
                    pipe.execute_command(*command)
                await pipe.execute()
        except RedisError as exc:
            raise StoreUnavailable(f"Redis write failed: {exc}") from exc

"""The commands the scorer's Redis adapter sends through its ``APPLY`` script, as tuples.

A command is the words Redis would get, ``("HSET", key, field, value)``, or one
of the script's own (``PUTUSER``, ``TRIMSNAP``, ``ZADDS``, ``ZREMS``; see
:mod:`~services.scorer.adapters.redis_scripts`). Lists of them are packed into
one script argument (:func:`pack`) and run by :func:`apply_all` on one Redis,
or one user's at a time with their keys declared (:func:`keys_of`) on a cluster.

>>> list(chunks([1, 2, 3, 4, 5], 2))
[[1, 2], [3, 4], [5]]
>>> keys_of(("PUTUSER", "P:{u1}:s", "P:{u1}:u", 60)), keys_of(("LPUSH", "P:{u1}:alerts", b"A"))
(('P:{u1}:s', 'P:{u1}:u', 'P:{u1}:erased'), ('P:{u1}:alerts',))
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

import msgpack
from redis.commands.core import AsyncScript

Command = tuple[Any, ...]

# Members per ZADD/ZREM/PFADD/HSET in a script: Lua's unpack() is bounded by
# its C stack (~8,000 values), and a micro-batch may hold more users.
_CHUNK = 1000


def chunks(items: Sequence[Any], size: int = _CHUNK) -> Iterable[Sequence[Any]]:
    return (items[i : i + size] for i in range(0, len(items), size))


def pack(items: Sequence[Any]) -> bytes:
    """One script argument for many values: ``APPLY``'s commands, ``LOAD``'s user ids."""
    packed: bytes = msgpack.packb(items, use_bin_type=False)  # Redis reads no bin
    return packed


def keys_of(command: Command) -> tuple[Any, ...]:
    """The keys a command names (the user's own commands: all in the user's slot);
    ``PUTUSER`` also reads the user's erase guard, whose key the script derives."""
    if command[0] == "PUTUSER":
        return (*command[1:3], command[1][:-1] + "erased")
    return command[1:3] if command[0] == "TRIMSNAP" else command[1:2]


async def apply_all(apply: AsyncScript | None, commands: list[Command]) -> None:
    """Run ``commands`` in one script call (one Redis only: ``apply`` is None on a cluster)."""
    if commands and apply is not None:
        await apply(args=[pack(commands)])

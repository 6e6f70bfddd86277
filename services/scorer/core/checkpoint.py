"""The model checkpoint format: a magic line, a 2-byte format number, then a pickle.

:meth:`~services.scorer.core.model.ChurnModel.to_bytes` hands its state as a
dict to :func:`encode_checkpoint`, and ``from_bytes`` reads it back with
:func:`decode_checkpoint`, which raises :class:`CheckpointError` on anything
this build cannot read. Pure, no I/O. Pickle is only safe from a trusted store;
checkpoints come from our own Redis.

``BinCalibrator``, ``ModelSettings`` and ``prepare`` moved out of the model
module, which still exports them. A checkpoint names them under
``services.scorer.core.model`` (``FIRST_HOME``), so that every build, before
each move and after, loads it (a worker rolled back keeps its model).

>>> state = decode_checkpoint(encode_checkpoint({"learned": 3}))
>>> state["learned"], "river" in state
(3, True)
"""

from __future__ import annotations

import pickle
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import river

from services.common.errors import ChurnwatchError
from services.scorer.core.calibration import BinCalibrator
from services.scorer.core.river_pipeline import ModelSettings, prepare

__all__ = ["FIRST_HOME", "CheckpointError", "decode_checkpoint", "encode_checkpoint"]

_MAGIC = b"churnwatch-model\n"
_FORMAT = 1

# The module that first defined what a checkpoint pickles, and still exports it.
FIRST_HOME = "services.scorer.core.model"
# Named by their first home only while pickling, so that everything else (type
# hints, doctests, inspect) sees where they are defined.
_MOVED: tuple[Any, ...] = (BinCalibrator, ModelSettings, prepare)
_pickling = threading.Lock()


class CheckpointError(ChurnwatchError):
    """A model checkpoint cannot be read by this build."""


@contextmanager
def _named_by_first_home() -> Iterator[None]:
    with _pickling:
        homes = [obj.__module__ for obj in _MOVED]
        for obj in _MOVED:
            obj.__module__ = FIRST_HOME
        try:
            yield
        finally:
            for obj, home in zip(_MOVED, homes, strict=True):
                obj.__module__ = home


def encode_checkpoint(state: dict[str, Any]) -> bytes:
    """The checkpoint of a model's ``state``, with the River version that wrote it."""
    with _named_by_first_home():
        body = pickle.dumps({**state, "river": river.__version__}, protocol=5)
    return _MAGIC + _FORMAT.to_bytes(2, "big") + body


def decode_checkpoint(data: bytes) -> dict[str, Any]:
    """The state in ``encode_checkpoint`` output; raise ``CheckpointError`` on anything else.

    >>> decode_checkpoint(b"junk")
    Traceback (most recent call last):
    ...
    services.scorer.core.checkpoint.CheckpointError: not a churnwatch model checkpoint
    """
    if not data.startswith(_MAGIC):
        raise CheckpointError("not a churnwatch model checkpoint")
    fmt = int.from_bytes(data[len(_MAGIC) : len(_MAGIC) + 2], "big")
    if fmt != _FORMAT:
        raise CheckpointError(
            f"model checkpoint format {fmt} is not supported (this build reads {_FORMAT});"
            " start from a fresh model or run the matching churnwatch version"
        )
    try:
        state: dict[str, Any] = pickle.loads(data[len(_MAGIC) + 2 :])
    except Exception as exc:
        raise CheckpointError(
            f"model checkpoint cannot be unpickled with river {river.__version__}: {exc}"
        ) from exc
    return state

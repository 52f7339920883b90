"""Engine checkpoints: the engine's cached state saved with each model version.

The engine exposes ``state = model.state_dict()`` (a flat dict of float64/int64/bool
arrays and JSON scalars) and ``Cls.from_state_dict(state)``. A checkpoint is that dict,
encoded by :func:`pipeline.store.codec.encode_state` into one Redis hash per version,
so that a restarted worker resumes from the current version without recomputing its
Hessian factor from all the data. Normally a :class:`~pipeline.store.Publication`
writes it in the same transaction as the version; :meth:`CheckpointStore.save` is for
tools and tests.

By default only the current version keeps a checkpoint: the engine's cached state is
derived from the training data, so older checkpoints are dropped when a newer one is
written (pass ``keep_older=True`` to a publication to keep them).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import redis

from pipeline.store.codec import StateValue, decode_state, encode_state
from pipeline.store.keys import KeySpace

__all__ = ["Checkpoint", "CheckpointStore", "stage_checkpoint"]


@dataclass(frozen=True)
class Checkpoint:
    """An engine state and the model version it belongs to."""

    model_id: str
    version: int
    state: dict[str, StateValue]


def stage_checkpoint(
    pipe: Any,
    keys: KeySpace,
    model_id: str,
    version: int,
    fields: Mapping[str, bytes],
    drop: list[int] | None = None,
) -> None:
    """Queue the write of an encoded checkpoint (and the removal of ``drop`` versions')."""
    key = keys.checkpoint(model_id, version)
    pipe.delete(key)
    pipe.hset(key, mapping=dict(fields))
    pipe.zadd(keys.checkpoints(model_id), {str(version): version})
    for old in drop or []:
        pipe.delete(keys.checkpoint(model_id, old))
        pipe.zrem(keys.checkpoints(model_id), str(old))


class CheckpointStore:
    """Save and load engine checkpoints.

    Parameters
    ----------
    client : redis.Redis
    keys : KeySpace
    """

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._r: Any = client  # redis-py types its replies loosely
        self._keys = keys

    def save(self, model_id: str, version: int, state: Mapping[str, StateValue]) -> None:
        """Store ``state`` as the checkpoint of ``version`` (older ones are kept)."""
        with self._r.pipeline(transaction=True) as pipe:
            stage_checkpoint(pipe, self._keys, model_id, version, encode_state(state))
            pipe.execute()

    def versions(self, model_id: str) -> list[int]:
        """Versions that have a checkpoint, oldest first."""
        return [int(v) for v in self._r.zrange(self._keys.checkpoints(model_id), 0, -1)]

    def load(self, model_id: str, version: int | None = None) -> Checkpoint | None:
        """The checkpoint of ``version`` (default: the current version), or ``None``.

        Reads the current version and its checkpoint consistently: if the version moves
        while reading, it reads again.
        """
        if version is not None:
            fields = self._r.hgetall(self._keys.checkpoint(model_id, version))
            if not fields:
                return None
            return Checkpoint(model_id, version, decode_state(fields))
        current_key = self._keys.current(model_id)
        while True:
            raw = self._r.get(current_key)
            if raw is None:
                return None
            current = int(raw)
            fields = self._r.hgetall(self._keys.checkpoint(model_id, current))
            if self._r.get(current_key) != raw:
                continue
            if not fields:
                return None
            return Checkpoint(model_id, current, decode_state(fields))

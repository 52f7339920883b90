"""The model registry: immutable versions, the ``current`` alias, history and retention.

Versions are written only through a :class:`~pipeline.store.publication.Publication`
(atomic with the ``current`` move, erasures, receipts, sequence marker, checkpoint,
stream entry and notification). Reads never see a half-written version: a version's
hash is complete before ``current`` can name it, and if retention removes a version
between reading ``current`` and reading the hash, the read starts over.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import timedelta
from typing import Any

import redis

from pipeline.errors import InvalidInput, PipelineError, UnknownModel
from pipeline.store.codec import decode_array
from pipeline.store.keys import KeySpace
from pipeline.store.publication import Publication, PublishResult
from pipeline.store.receipts import DEFAULT_LEGAL_DEADLINE, DEFAULT_RETENTION
from pipeline.store.versions import ModelSpec, ModelVersion, VersionMetadata

__all__ = ["ModelRegistry", "UnknownVersion"]


class UnknownVersion(PipelineError):
    """A version number that the registry does not hold (never published, or retired)."""

    def __init__(self, model_id: str, version: int) -> None:
        self.model_id = model_id
        self.version = version
        msg = (
            f"model {model_id!r} has no version {version}: it was never published or was "
            "removed by retention (list the kept ones with history())"
        )
        super().__init__(msg)


def _version_from_hash(model_id: str, fields: dict[bytes, bytes]) -> ModelVersion:
    meta = VersionMetadata.model_validate_json(fields[b"meta"])
    where = f"model {model_id!r} v{meta.version}"
    coef = decode_array(fields[b"coef"], meta.coef_spec, f"{where} coef")
    intercept = decode_array(fields[b"intercept"], meta.intercept_spec, f"{where} intercept")
    return ModelVersion(metadata=meta, coef=coef, intercept=intercept)


class ModelRegistry:
    """Read, publish and retire model versions.

    Parameters
    ----------
    client : redis.Redis
        ``decode_responses=False``.
    keys : KeySpace
    legal_deadline : timedelta
        Passed to publications for the receipts they open.
    retention : timedelta
        How long the receipts publications write are kept.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        legal_deadline: timedelta = DEFAULT_LEGAL_DEADLINE,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self._r: Any = client  # redis-py types its replies loosely
        self._keys = keys
        self._deadline = legal_deadline
        self._retention = retention

    # ---- writing -------------------------------------------------------------------
    def publication(self, model_id: str, expected_version: int) -> Publication:
        """Start building an atomic publication on top of ``expected_version``."""
        return Publication(
            self._r, self._keys, model_id, expected_version, self._deadline, self._retention
        )

    def publish(self, model_id: str, spec: ModelSpec, expected_version: int) -> PublishResult:
        """Publish a version with nothing else attached (shortcut for a publication)."""
        return self.publication(model_id, expected_version).set_model(spec).commit()

    def retain(self, model_id: str, keep_last: int) -> list[int]:
        """Delete all but the last ``keep_last`` versions (never the current one).

        Returns
        -------
        list of int
            The versions removed, with their checkpoints.
        """
        if keep_last < 1:
            msg = f"keep_last={keep_last}: retention must keep at least the current version"
            raise InvalidInput(msg)
        keys = self._keys
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(keys.current(model_id))
                    current = int(pipe.get(keys.current(model_id)) or 0)
                    known = sorted(int(v) for v in pipe.zrange(keys.versions(model_id), 0, -1))
                    keep = set(known[-keep_last:]) | {current}
                    drop = [v for v in known if v not in keep]
                    pipe.multi()
                    for v in drop:
                        pipe.delete(keys.version(model_id, v), keys.checkpoint(model_id, v))
                        pipe.zrem(keys.versions(model_id), str(v))
                        pipe.zrem(keys.checkpoints(model_id), str(v))
                    pipe.execute()
                    return drop
                except redis.WatchError:
                    continue

    # ---- reading -------------------------------------------------------------------
    def current_version(self, model_id: str) -> int:
        """The current version number, 0 if the model has none."""
        raw: Any = self._r.get(self._keys.current(model_id))
        return int(raw or 0)

    def applied_seq(self, model_id: str) -> int | None:
        """Sequence number of the last input applied to the current version."""
        raw: Any = self._r.get(self._keys.applied_seq(model_id))
        return None if raw is None else int(raw)

    def get(self, model_id: str, version: int | None = None) -> ModelVersion:
        """A version with its coefficients (default: the current one).

        Raises
        ------
        UnknownModel
            Nothing was ever published for ``model_id``.
        UnknownVersion
            ``version`` is not held.
        """
        return _version_from_hash(model_id, self._read(model_id, version, self._r.hgetall))

    def metadata(self, model_id: str, version: int | None = None) -> VersionMetadata:
        """Metadata of a version (default: current), reading only its ``meta`` field.

        Raises as :meth:`get` does. Cheap enough for the metrics' periodic refresh, which
        must not move every model's coefficients out of Redis.
        """
        raw = self._read(model_id, version, lambda key: self._r.hget(key, "meta"))
        return VersionMetadata.model_validate_json(raw)

    def _read(self, model_id: str, version: int | None, read: Callable[[str], Any]) -> Any:
        """``read(key)`` of a version's hash (default: current's), as :meth:`get` raises."""
        if version is not None:
            found = read(self._keys.version(model_id, version))
            if not found:
                if not self.current_version(model_id):
                    raise UnknownModel(model_id)
                raise UnknownVersion(model_id, version)
            return found
        while True:
            current = self.current_version(model_id)
            if current == 0:
                raise UnknownModel(model_id)
            found = read(self._keys.version(model_id, current))
            if found:
                return found
            # retired between the two reads: current has moved on, read it again

    def history(self, model_id: str, limit: int | None = None) -> list[VersionMetadata]:
        """Metadata of the kept versions, newest first."""
        stop = -1 if limit is None else limit - 1
        raw: Any = self._r.zrevrange(self._keys.versions(model_id), 0, stop)
        pipe = self._r.pipeline(transaction=False)
        for v in raw:
            pipe.hget(self._keys.version(model_id, int(v)), "meta")
        return [VersionMetadata.model_validate_json(m) for m in pipe.execute() if m is not None]

    def models(self) -> list[str]:
        """Every model id that has published, sorted."""
        raw: Any = self._r.smembers(self._keys.model_index())
        return sorted(m.decode() for m in raw)

    def notices(self, model_id: str, count: int = 10) -> list[dict[str, str]]:
        """The latest entries of the model's publication stream, newest first."""
        raw: Any = self._r.xrevrange(self._keys.events(model_id), count=count)
        return [
            {k.decode(): v.decode() for k, v in fields.items()} | {"id": entry_id.decode()}
            for entry_id, fields in raw
        ]

    def channel(self, model_id: str) -> str:
        """Pub/sub channel that announces each published version (JSON notice)."""
        return self._keys.channel(model_id)

    def stream(self, model_id: str) -> str:
        """Stream key with one entry per published version (for ``XREAD BLOCK``)."""
        return self._keys.events(model_id)

"""The consumer side of the SDK: read published models, follow updates, read receipts.

A serving team uses :class:`ModelClient`::

    models = ModelClient("redis://cache:6379/0")
    clf = models.get("churn")                  # the current version
    clf.predict_proba(X)
    for clf in models.watch("churn"):          # blocks; one predictor per new version
        serve(clf)

and a privacy officer asks ``models.receipt(request_id)``: one receipt per model, with
the version where the erasure took effect, the method and the certificate.

``watch`` reads the model's publication stream with ``XREAD BLOCK``: no polling, and no
version is missed between two reads (a version retired by retention before it could be
read is skipped).
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from pipeline.events import Receipt
from pipeline.sdk.predictor import LinearPredictor
from pipeline.store.facade import Store
from pipeline.store.keys import DEFAULT_NAMESPACE
from pipeline.store.models import UnknownVersion
from pipeline.store.versions import VersionMetadata

if TYPE_CHECKING:
    from pipeline.config import Settings

__all__ = ["ModelClient"]


class ModelClient:
    """Read-only access to published models and deletion receipts.

    Parameters
    ----------
    redis_url : str
        ``redis://`` or ``rediss://`` URL.
    namespace : str
        Key namespace of the pipeline (``UNLEARN_KEY_NAMESPACE``, default ``unlearn``).
    **redis_kwargs
        Extra ``redis.Redis.from_url`` options (``username``, ``password``, TLS).
    """

    def __init__(
        self, redis_url: str, namespace: str = DEFAULT_NAMESPACE, **redis_kwargs: Any
    ) -> None:
        self._store = Store.from_url(redis_url, namespace, **redis_kwargs)

    @classmethod
    def from_settings(cls, settings: Settings, redis_url: str | None = None) -> ModelClient:
        """A client configured from ``settings`` (URL, credentials, TLS, namespace)."""
        client = cls.__new__(cls)
        client._store = Store.from_settings(settings, redis_url)
        return client

    def get(self, model_id: str, version: int | None = None) -> LinearPredictor:
        """A predictor for ``version`` of ``model_id`` (default: the current version).

        Raises
        ------
        UnknownModel
            Nothing was published for ``model_id``.
        UnknownVersion
            That version is not held (never published, or retired).
        """
        return LinearPredictor(self._store.models.get(model_id, version))

    def history(self, model_id: str, limit: int | None = None) -> list[VersionMetadata]:
        """Metadata of the kept versions, newest first."""
        return self._store.models.history(model_id, limit)

    def watch(
        self,
        model_id: str,
        *,
        after_version: int | None = None,
        idle_timeout: float | None = None,
    ) -> Iterator[LinearPredictor]:
        """Yield a predictor for each version published from now on.

        Parameters
        ----------
        model_id : str
        after_version : int, optional
            Also yield the versions after this one that are already published (e.g. the
            last version the caller served); by default only future versions.
        idle_timeout : float, optional
            Stop after this many seconds without a new version; by default wait forever.
        """
        client: Any = self._store.client
        stream = self._store.models.stream(model_id)
        last_id = "0-0" if after_version is not None else "$"
        if last_id == "$":  # pin the position now, so nothing published later is missed
            latest = client.xrevrange(stream, count=1)
            last_id = latest[0][0].decode() if latest else "0-0"
        seen = after_version or 0
        block_ms = 0 if idle_timeout is None else max(1, int(idle_timeout * 1000))
        deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
        while True:
            reply = client.xread({stream: last_id}, count=100, block=block_ms)
            if not reply:
                if deadline is not None and time.monotonic() >= deadline:
                    return
                continue
            for entry_id, fields in reply[0][1]:
                last_id = entry_id.decode()
                version = int(fields[b"version"])
                if version <= seen:
                    continue
                try:
                    predictor = self.get(model_id, version)
                except UnknownVersion:
                    continue  # retired before we could read it
                seen = version
                yield predictor
            if idle_timeout is not None:
                deadline = time.monotonic() + idle_timeout

    def receipt(self, request_id: str) -> list[Receipt]:
        """Every affected model's receipt for a deletion request (empty if unknown)."""
        return self._store.receipts.get(request_id)

    def close(self) -> None:
        """Close the Redis connections."""
        self._store.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

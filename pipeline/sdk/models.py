"""The consumer side of the SDK: read published models, follow updates, read receipts.

A serving team uses :class:`ModelClient`::

    models = ModelClient("redis://cache:6379/0")
    clf = models.get("churn")                  # the current version
    clf.predict_proba(X)
    for clf in models.watch("churn"):          # blocks; one predictor per new version
        serve(clf)

and a privacy officer asks ``models.receipt(request_id)``: one receipt per model, with
the version where the erasure took effect, the method and the certificate.

``watch`` waits on the model's publication stream with bounded ``XREAD BLOCK`` reads (at
most :data:`WATCH_MAX_BLOCK` seconds, and half the client's socket timeout, each: redis-py
8 clients time out after 5 s by default) and reads which versions exist from the
registry, so it blocks through quiet periods of any length, rides out a Redis restart or
failover, yields each held version once and in order, and skips only versions that are
no longer held (retired) when it gets to them.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from functools import partial
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self, TypeVar

import redis

from pipeline.errors import InvalidInput, UnknownModel
from pipeline.events import Receipt
from pipeline.retry import Backoff, is_transient
from pipeline.sdk.predictor import LinearPredictor
from pipeline.store.facade import Store
from pipeline.store.keys import DEFAULT_NAMESPACE
from pipeline.store.models import UnknownVersion
from pipeline.store.versions import VersionMetadata

if TYPE_CHECKING:
    from pipeline.config import Settings

__all__ = ["WATCH_MAX_BACKOFF", "WATCH_MAX_BLOCK", "ModelClient"]

log = logging.getLogger(__name__)
T = TypeVar("T")

WATCH_MAX_BLOCK = 2.0
"""Longest single blocking read of ``watch``, in seconds (also capped by the client's
socket timeout, halved): a quiet period is many short reads, never one long one."""
WATCH_MAX_BACKOFF = 2.0
"""Longest pause, in seconds, between two tries while Redis is unreachable."""


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
        latest_only: bool = False,
        stop: threading.Event | None = None,
        max_block: float = WATCH_MAX_BLOCK,
    ) -> Iterator[LinearPredictor]:
        """Yield a predictor for each version published from now on, in version order.

        The loop never ends on its own unless ``idle_timeout`` or ``stop`` says so: it
        blocks through quiet periods of any length (blocking reads of at most
        ``max_block`` seconds, and at most half the client's socket timeout, one after the
        other), and rides out a Redis restart or failover (reconnects with capped
        exponential backoff, logs one warning when Redis goes away and one when it is
        back, and resumes where it was, so nothing published meanwhile is missed).

        Each version is yielded at most once, in increasing order, and every version
        that is still held when the watcher gets to it is yielded (unless
        ``latest_only``). A version that is no longer held by then (retired by retention,
        ``UNLEARN_KEEP_VERSIONS``, or deleted by an operator, e.g. after an erasure) is
        skipped silently: it can no longer be read by anyone. These guarantees assume
        Redis keeps its data across a restart (append-only file, or a replica promoted
        in sync); a Redis that comes back empty starts again from version 1, which a
        watcher that has yielded higher versions does not yield again.

        Parameters
        ----------
        model_id : str
        after_version : int, optional
            Also yield the versions after this one that are already published (e.g. the
            last version the caller served; 0 for every held version); by default only
            versions published after the call.
        idle_timeout : float, optional
            Stop after this many seconds without a new version; by default wait forever.
        latest_only : bool
            When several versions are waiting (a slow consumer, a catch-up), yield only
            the newest of them: what a server that swaps its model wants.
        stop : threading.Event, optional
            Set it from another thread to end the loop; it is noticed within
            ``max_block`` seconds (and at once during a backoff).
        max_block : float
            Longest single blocking read, in seconds (default 2).

        Yields
        ------
        LinearPredictor
            One per new version, its arrays loaded and read-only.

        Raises
        ------
        InvalidInput
            A negative ``after_version`` or ``idle_timeout``, or ``max_block <= 0``.
        redis.exceptions.RedisError
            Errors that retrying cannot cure (authentication, permissions); connection
            losses and timeouts are retried, never raised.
        """
        if after_version is not None and after_version < 0:
            msg = (
                f"after_version={after_version}: give the last version already served "
                "(0 for every held version), or None for only future versions"
            )
            raise InvalidInput(msg)
        if idle_timeout is not None and idle_timeout < 0:
            msg = f"idle_timeout={idle_timeout}: give seconds >= 0, or None to wait forever"
            raise InvalidInput(msg)
        if not max_block > 0:
            msg = f"max_block={max_block}: a blocking read must last more than 0 seconds"
            raise InvalidInput(msg)
        follower = _Follower(self, model_id, max_block, stop, idle_timeout)
        return follower.run(after_version, latest_only)

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


class _End(Exception):
    """The watch is over: ``stop`` was set or ``idle_timeout`` passed."""


def _transient(exc: BaseException) -> bool:
    """Worth retrying: Redis unreachable, restarting, loading, or slow; not refused access."""
    refused = (redis.exceptions.AuthenticationError, redis.exceptions.AuthorizationError)
    return is_transient(exc) and not isinstance(exc, refused)


def _socket_timeout(client: Any) -> float | None:
    """The client's socket timeout in seconds if it is known, else None."""
    pool = getattr(client, "connection_pool", None)
    kwargs = getattr(pool, "connection_kwargs", None) or {}
    value = kwargs.get("socket_timeout")
    return float(value) if isinstance(value, int | float) and value > 0 else None


def _last_entry_id(reply: Any) -> str | None:
    """Id of the last entry of an ``XREAD`` reply on one stream (RESP2 or RESP3), or None."""
    if not reply:
        return None
    entries = next(iter(reply.values())) if isinstance(reply, dict) else reply[0][1]
    if not entries:
        return None
    last = entries[-1][0]
    return last.decode() if isinstance(last, bytes) else str(last)


class _Follower:
    """The state of one ``watch``: stream position, last version yielded, retries.

    The model's stream (one entry per publication) only wakes the follower up; which
    versions exist is read from the registry's version set, so an entry lost with a
    trimmed stream or a lagging replica costs at most one ``max_block`` of delay.
    """

    def __init__(
        self,
        client: ModelClient,
        model_id: str,
        max_block: float,
        stop: threading.Event | None,
        idle_timeout: float | None,
    ) -> None:
        store = client._store
        self._models = client
        self._r: Any = store.client
        self._model_id = model_id
        self._stream = store.models.stream(model_id)
        self._versions_key = store.keys.versions(model_id)
        self._current_key = store.keys.current(model_id)
        timeout = _socket_timeout(self._r)
        self._block = max_block if timeout is None else min(max_block, timeout / 2)
        self._block_guessed = timeout is None
        self._stop = stop
        self._idle = idle_timeout
        self._deadline = None if idle_timeout is None else time.monotonic() + idle_timeout
        self._backoff = Backoff(initial=0.05, factor=2.0, cap=WATCH_MAX_BACKOFF)
        self._delays: Iterator[float] | None = None
        self._down_since: float | None = None
        self._failures = 0

    # ---- the loop ----------------------------------------------------------------------
    def run(self, after_version: int | None, latest_only: bool) -> Iterator[LinearPredictor]:
        try:
            last_id, seen = self._call(lambda: self._pin(after_version))
            while True:
                for predictor in self._catch_up(seen, latest_only):
                    seen = predictor.version
                    yield predictor
                    self._yielded()
                last_id = self._call(partial(self._wait, last_id)) or last_id
        except _End:
            return

    def _pin(self, after_version: int | None) -> tuple[str, int]:
        """The stream position to read from and the last version not to yield, at once."""
        with self._r.pipeline(transaction=True) as pipe:
            pipe.xrevrange(self._stream, count=1)
            pipe.get(self._current_key)
            latest, current = pipe.execute()
        last_id = latest[0][0].decode() if latest else "0-0"
        seen = int(current or 0) if after_version is None else after_version
        return last_id, seen

    def _wait(self, last_id: str) -> str | None:
        """One bounded blocking read of the stream; the new position if entries came."""
        block = self._block
        if self._deadline is not None:
            block = min(block, self._deadline - time.monotonic())
        if block > 0:
            try:
                reply = self._r.xread({self._stream: last_id}, count=1000, block=block_ms(block))
            except redis.exceptions.TimeoutError:
                if not self._block_guessed or self._block <= _MIN_GUESSED_BLOCK:
                    raise  # Redis or the network is slow: retried as an outage
                # the client's socket timeout is shorter than this read: read for less
                self._block = max(_MIN_GUESSED_BLOCK, self._block / 2)
                log.info(
                    "watch(%r): the Redis client timed out during a blocking read; reading "
                    "%g s at a time from now on",
                    self._model_id,
                    self._block,
                )
                return None
            found = _last_entry_id(reply)
            if found is not None:
                return found
        self._check_end()
        return None

    def _catch_up(self, seen: int, latest_only: bool) -> Iterator[LinearPredictor]:
        """Predictors of the held versions after ``seen``, oldest first (or the newest)."""
        raw = self._call(lambda: self._r.zrangebyscore(self._versions_key, f"({seen}", "+inf"))
        versions = sorted(int(v) for v in raw)
        if latest_only:
            versions.reverse()
        for version in versions:
            predictor = self._call(partial(self._load, version))
            if predictor is None:
                continue  # retired since: nobody can read it any more
            yield predictor
            if latest_only:
                return

    def _load(self, version: int) -> LinearPredictor | None:
        try:
            return self._models.get(self._model_id, version)
        except (UnknownVersion, UnknownModel):
            return None

    def _yielded(self) -> None:
        """A version was handed out: the idle period starts again; maybe stop."""
        if self._idle is not None:
            self._deadline = time.monotonic() + self._idle
        self._check_end()

    def _check_end(self) -> None:
        if self._stop is not None and self._stop.is_set():
            raise _End
        if self._deadline is not None and time.monotonic() >= self._deadline:
            raise _End

    # ---- riding out an outage -----------------------------------------------------------
    def _call(self, read: Callable[[], T]) -> T:
        """``read()`` until Redis answers; between tries, capped exponential backoff."""
        while True:
            self._check_end()
            try:
                result = read()
            except Exception as exc:
                if not _transient(exc):
                    raise
                self._failed(exc)
                continue
            if self._down_since is not None:
                log.warning(
                    "watch(%r): Redis is reachable again after %.1f s (%d failed tries); "
                    "resuming where it was",
                    self._model_id,
                    time.monotonic() - self._down_since,
                    self._failures,
                )
                self._down_since, self._failures, self._delays = None, 0, None
            return result

    def _failed(self, exc: Exception) -> None:
        if self._delays is None:
            self._delays = self._backoff.delays()
        delay = next(self._delays)
        self._failures += 1
        if self._down_since is None:
            self._down_since = time.monotonic()
            log.warning(
                "watch(%r): Redis is unreachable (%s: %s); retrying with capped backoff "
                "(at most %g s apart), no version will be missed",
                self._model_id,
                type(exc).__name__,
                exc,
                WATCH_MAX_BACKOFF,
            )
        if self._deadline is not None:
            delay = min(delay, max(0.0, self._deadline - time.monotonic()))
        if self._stop is not None:
            self._stop.wait(delay)
        else:
            time.sleep(delay)


_MIN_GUESSED_BLOCK = 0.1
"""Shortest blocking read ``watch`` shrinks to when the client's socket timeout is unknown."""


def block_ms(seconds: float) -> int:
    """``XREAD BLOCK`` milliseconds for ``seconds`` (at least 1: 0 would block forever)."""
    return max(1, int(seconds * 1000))

"""Serve the current version of a model from a web server's worker process.

:class:`ServedModel` holds one :class:`~pipeline.sdk.predictor.LinearPredictor` and
replaces it in a background thread each time a new version is published::

    served = ServedModel("redis://cache:6379/0", "churn").start()
    served.predict(X)          # the version loaded last; never waits on Redis
    clf = served.predictor     # one version for a whole request: clf.predict, clf.version
    served.lag()               # Lag(served=7, current=8, versions=1, seconds=0.4)
    served.stop()

How it stays safe under concurrent requests: a predictor is immutable (read-only arrays),
is built completely (read from Redis and decoded) in the background thread, and is then
published with a single reference assignment, so a request sees either the old version or
the new one, never a mixture, and ``predict`` takes no lock and does no I/O. The thread
follows the model with :meth:`ModelClient.watch` (``latest_only=True``: a burst of
versions costs one load), which rides out quiet periods and Redis restarts.

Web servers that fork worker processes (gunicorn, uvicorn ``--workers``): start the
model in each worker (FastAPI's ``lifespan``, gunicorn's ``post_fork``). If a started
model is inherited through ``fork``, the child keeps serving the inherited version and
starts its own background thread the first time it is used.
"""

from __future__ import annotations

import logging
import os
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

import redis

from pipeline.errors import PipelineError
from pipeline.retry import Backoff
from pipeline.sdk.models import WATCH_MAX_BLOCK, ModelClient
from pipeline.sdk.predictor import LinearPredictor
from pipeline.store.keys import DEFAULT_NAMESPACE
from pipeline.store.versions import VersionMetadata

__all__ = ["Lag", "ModelNotReady", "ServedModel"]

log = logging.getLogger(__name__)

_ERROR_BACKOFF = Backoff(initial=0.5, factor=2.0, cap=30.0, jitter=0.2)
_instances: weakref.WeakSet[ServedModel] = weakref.WeakSet()


class ModelNotReady(PipelineError):
    """A :class:`ServedModel` has no version loaded yet (nothing published, or not started)."""

    def __init__(self, model_id: str, why: str) -> None:
        self.model_id = model_id
        super().__init__(f"model {model_id!r} has no version loaded yet: {why}")


@dataclass(frozen=True)
class Lag:
    """How far the served version is behind the model's ``current`` in Redis.

    Attributes
    ----------
    served : int
        Version served (0: none loaded yet).
    current : int
        The model's current version in Redis (0: nothing published).
    versions : int
        ``current - served``, 0 when up to date.
    seconds : float
        Seconds since the oldest held version newer than the served one was published
        (how long requests have been answered by an outdated version); 0.0 when up to date.
    """

    served: int
    current: int
    versions: int
    seconds: float


class ServedModel:
    """The current version of one model, swapped atomically as new versions appear.

    Parameters
    ----------
    source : str or ModelClient
        A ``redis://`` / ``rediss://`` URL, or a client to share (e.g.
        ``ModelClient.from_settings(load_settings())`` for the pipeline's credentials,
        TLS and namespace); a client passed in is not closed by :meth:`stop`.
    model_id : str
    namespace : str
        Key namespace, when ``source`` is a URL (``UNLEARN_KEY_NAMESPACE``).
    on_update : callable, optional
        Called in the background thread with each predictor just swapped in (logging,
        metrics, warming caches); an exception it raises is logged and ignored.
    max_block : float
        Longest blocking read of the background thread, in seconds: :meth:`stop` returns
        within about that long.
    **redis_kwargs
        Extra ``redis.Redis.from_url`` options when ``source`` is a URL.

    Examples
    --------
    >>> with ServedModel("redis://localhost:6379/0", "churn") as served:  # doctest: +SKIP
    ...     served.predict([[0.1, 2.0, 3.5]])
    """

    def __init__(
        self,
        source: str | ModelClient,
        model_id: str,
        *,
        namespace: str = DEFAULT_NAMESPACE,
        on_update: Callable[[LinearPredictor], object] | None = None,
        max_block: float = WATCH_MAX_BLOCK,
        **redis_kwargs: Any,
    ) -> None:
        if isinstance(source, ModelClient):
            self._client, self._owns_client = source, False
        else:
            self._client = ModelClient(source, namespace=namespace, **redis_kwargs)
            self._owns_client = True
        self.model_id = model_id
        self._client._store.keys.current(model_id)  # validates the id now, not in the thread
        self._on_update = on_update
        self._max_block = max_block
        self._predictor: LinearPredictor | None = None
        self._loaded_at: float | None = None
        self._last_error: BaseException | None = None
        self._lock = threading.Lock()
        self._loaded = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._started = False
        self._forked = False
        _instances.add(self)

    # ---- what a request handler uses: no I/O, no lock -------------------------------------
    @property
    def predictor(self) -> LinearPredictor:
        """The predictor of the served version; keep it for a whole request.

        Raises
        ------
        ModelNotReady
            No version loaded yet.
        """
        if self._forked:
            self._restart_after_fork()
        predictor = self._predictor
        if predictor is None:
            raise ModelNotReady(self.model_id, self._not_ready_reason())
        return predictor

    def predict(self, X: Any) -> Any:
        """``predictor.predict(X)``: class labels (logistic) or values (ridge)."""
        return self.predictor.predict(X)

    def predict_proba(self, X: Any) -> Any:
        """``predictor.predict_proba(X)``: class probabilities (logistic models)."""
        return self.predictor.predict_proba(X)

    def decision_function(self, X: Any) -> Any:
        """``predictor.decision_function(X)``: the linear scores."""
        return self.predictor.decision_function(X)

    @property
    def version(self) -> int | None:
        """The version served, or None before the first one is loaded."""
        if self._forked:
            self._restart_after_fork()
        predictor = self._predictor
        return None if predictor is None else predictor.version

    @property
    def metadata(self) -> VersionMetadata | None:
        """Metadata of the served version (method, certificate, ...), or None."""
        predictor = self._predictor
        return None if predictor is None else predictor.metadata

    @property
    def loaded_at(self) -> float | None:
        """Epoch seconds when the served version was swapped in, or None."""
        return self._loaded_at

    @property
    def ready(self) -> bool:
        """True once a version is loaded."""
        return self._predictor is not None

    @property
    def running(self) -> bool:
        """True while the background thread follows the model."""
        thread = self._thread
        return thread is not None and thread.is_alive() and not self._forked

    @property
    def last_error(self) -> BaseException | None:
        """The last error that stopped the background thread's watch (it retries), or None.

        Connection losses are not errors here: the watch rides them out and logs them.
        """
        return self._last_error

    # ---- lifecycle -------------------------------------------------------------------------
    def start(self, wait: float | None = 10.0) -> Self:
        """Start following the model; by default wait until a version is loaded.

        Parameters
        ----------
        wait : float or None
            Seconds to wait for the first version; 0 returns at once (``ready`` tells
            when a version is there, and ``predictor`` raises :class:`ModelNotReady`
            until then); None waits as long as it takes.

        Raises
        ------
        ModelNotReady
            No version within ``wait`` seconds (the background thread is stopped).
        redis.exceptions.RedisError
            Redis refused the client (authentication, permissions) before a first load.
        """
        with self._lock:
            if self._forked:
                self._reset_after_fork()
            if not self.running:
                self._start_thread()
        if wait == 0:
            return self
        deadline = None if wait is None else time.monotonic() + wait
        while not self._loaded.wait(0.05):
            error = self._last_error
            if isinstance(error, redis.exceptions.RedisError | PipelineError):
                self.stop()
                raise error
            if deadline is not None and time.monotonic() >= deadline:
                self.stop()
                why = (
                    f"none within {wait:g} s ({self._not_ready_reason()}); publish one "
                    f"(unlearn train {self.model_id} ...), or start(wait=0) and check .ready"
                )
                raise ModelNotReady(self.model_id, why)
        return self

    def wait_ready(self, timeout: float | None = None) -> bool:
        """Block until a version is loaded (True) or ``timeout`` seconds pass (False)."""
        return self._loaded.wait(timeout)

    def stop(self, timeout: float | None = None) -> None:
        """Stop following the model; the last version loaded is still served.

        Parameters
        ----------
        timeout : float, optional
            Seconds to wait for the background thread (default: ``max_block`` + 5).
        """
        with self._lock:
            self._stop.set()
            thread, self._thread = self._thread, None
        if thread is not None and thread is not threading.current_thread():
            thread.join(self._max_block + 5.0 if timeout is None else timeout)
            if thread.is_alive():
                log.warning("ServedModel(%r): the background thread did not stop", self.model_id)

    def close(self) -> None:
        """:meth:`stop`, and close the Redis connections if this object opened them."""
        self.stop()
        if self._owns_client:
            self._client.close()

    def lag(self) -> Lag:
        """How far the served version is behind ``current`` (reads Redis: a few commands).

        Meant for health checks and metrics, not for every request.
        """
        served = self.version or 0
        store = self._client._store
        current = store.models.current_version(self.model_id)
        if current <= served:
            return Lag(served=served, current=current, versions=0, seconds=0.0)
        newer: Any = store.client.zrangebyscore(
            store.keys.versions(self.model_id), f"({served}", "+inf", start=0, num=1
        )
        oldest = int(newer[0]) if newer else current
        try:
            published = store.models.metadata(self.model_id, oldest).created_at.timestamp()
            seconds = max(0.0, time.time() - published)
        except PipelineError:  # retired in between: the lag is at least that much
            seconds = 0.0
        return Lag(served=served, current=current, versions=current - served, seconds=seconds)

    def __enter__(self) -> Self:
        try:
            return self.start()
        except BaseException:
            self.close()
            raise

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "running" if self.running else "stopped"
        return f"ServedModel(model_id={self.model_id!r}, version={self.version}, {state})"

    # ---- the background thread -------------------------------------------------------------
    def _start_thread(self) -> None:
        self._stop = threading.Event()
        self._last_error = None
        self._thread = threading.Thread(
            target=self._follow,
            args=(self._stop,),
            name=f"served-model-{self.model_id}",
            daemon=True,
        )
        self._started = True
        self._thread.start()

    def _follow(self, stop: threading.Event) -> None:
        delays = _ERROR_BACKOFF.delays()
        while not stop.is_set():
            predictor = self._predictor
            try:
                for new in self._client.watch(
                    self.model_id,
                    after_version=0 if predictor is None else predictor.version,
                    latest_only=True,
                    stop=stop,
                    max_block=self._max_block,
                ):
                    self._swap(new)
                    delays = _ERROR_BACKOFF.delays()
                return
            except Exception as exc:  # keep serving the old version; retry
                first = self._last_error is None or str(self._last_error) != str(exc)
                self._last_error = exc
                delay = next(delays)
                if first:
                    log.warning(
                        "ServedModel(%r): following the model failed (%s: %s); still "
                        "serving v%s, retrying every %.0f s at most",
                        self.model_id,
                        type(exc).__name__,
                        exc,
                        None if predictor is None else predictor.version,
                        _ERROR_BACKOFF.cap,
                    )
                stop.wait(delay)

    def _swap(self, predictor: LinearPredictor) -> None:
        self._predictor = predictor  # one reference assignment: requests see old or new
        self._loaded_at = time.time()
        self._last_error = None
        self._loaded.set()
        log.info("ServedModel(%r): now serving v%d", self.model_id, predictor.version)
        if self._on_update is not None:
            try:
                self._on_update(predictor)
            except Exception:
                log.exception("ServedModel(%r): on_update failed (ignored)", self.model_id)

    def _not_ready_reason(self) -> str:
        if not self._started:
            return "call start() first"
        if self._last_error is not None:
            return f"{type(self._last_error).__name__}: {self._last_error}"
        return "nothing is published yet, or Redis cannot be reached (see the log)"

    # ---- fork --------------------------------------------------------------------------------
    def _reset_after_fork(self) -> None:
        """In a forked child: the parent's thread does not exist here."""
        self._forked = False
        self._thread = None
        self._stop = threading.Event()

    def _restart_after_fork(self) -> None:
        with self._lock:
            if not self._forked:
                return
            running = self._thread is not None and not self._stop.is_set()
            self._reset_after_fork()
            if running:
                self._start_thread()


def _after_fork_in_child() -> None:
    """Runs in the only thread of a new child: fresh locks, threads to restart on use."""
    for served in list(_instances):
        served._lock = threading.Lock()
        loaded = threading.Event()
        if served._predictor is not None:
            loaded.set()
        served._loaded = loaded
        served._forked = True


os.register_at_fork(after_in_child=_after_fork_in_child)

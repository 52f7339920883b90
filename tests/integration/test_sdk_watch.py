"""``ModelClient.watch`` as a serving loop uses it: quiet periods, Redis restarts, retention.

Everything runs against a real ``redis-server``: the session's for the quiet periods, a
private one with an append-only file for the restart (stopping the session's would disturb
the other tests). No test measures time: a quiet period is a precondition (the watcher is
left alone longer than its client's socket timeout), and every wait polls for a condition
with a generous deadline.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import redis

from pipeline.embedded import EmbeddedRedis, EmbeddedServices
from pipeline.errors import InvalidInput
from pipeline.sdk import LinearPredictor, ModelClient
from pipeline.store import ModelSpec, Store

SOCKET_TIMEOUT = 1.0  # the client's; every quiet period below is longer


def wait_for(check: Callable[[], object], timeout: float, what: str) -> None:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def publish(store: Store, model_id: str, version: int) -> None:
    """Publish ``version`` (on top of ``version - 1``); its coefficients name it."""
    spec = ModelSpec(
        kind="ridge",
        coef=np.array([float(version), -float(version)]),
        intercept=float(version),
        method="influence",
        seq=version,
    )
    store.models.publish(model_id, spec, version - 1)


class Watcher:
    """Runs a ``watch`` loop in a thread, as a serving loop does, until ``last`` is seen."""

    def __init__(self, watch: Callable[[], Iterable[LinearPredictor]], last: int) -> None:
        self.seen: list[int] = []
        self.coefs: list[float] = []
        self.error: BaseException | None = None
        self._watch, self._last = watch, last
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for clf in self._watch():
                self.seen.append(clf.version)
                self.coefs.append(float(clf.coef_[0]))
                if clf.version >= self._last:
                    return
        except BaseException as exc:  # reported by the test
            self.error = exc

    def wait_seen(self, versions: list[int], what: str) -> None:
        def check() -> bool:
            if self.error is not None:
                raise AssertionError(f"watch() raised {self.error!r}") from self.error
            return self.seen == versions

        wait_for(check, 30.0, f"{what}: saw {self.seen}, want {versions}")

    def finish(self) -> list[int]:
        self.thread.join(30.0)
        assert not self.thread.is_alive(), f"the watcher is still running after {self.seen}"
        if self.error is not None:
            raise AssertionError(f"watch() raised {self.error!r}") from self.error
        return self.seen


@pytest.fixture
def namespace() -> str:
    return f"watch_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(services: EmbeddedServices, namespace: str) -> Iterator[Store]:
    with Store.from_url(services.redis_url, namespace) as s:
        yield s


def test_watch_blocks_through_quiet_periods_longer_than_the_socket_timeout(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    publish(store, "quiet", 1)
    with ModelClient(
        services.redis_url, namespace=namespace, socket_timeout=SOCKET_TIMEOUT
    ) as client:
        watcher = Watcher(lambda: client.watch("quiet", after_version=1), last=3)
        time.sleep(2.5 * SOCKET_TIMEOUT)  # nothing published: longer than the socket timeout
        assert watcher.error is None, f"watch() died in a quiet period: {watcher.error!r}"
        publish(store, "quiet", 2)
        watcher.wait_seen([2], "the first version after a quiet period")
        time.sleep(2.5 * SOCKET_TIMEOUT)
        publish(store, "quiet", 3)
        assert watcher.finish() == [2, 3]
    assert watcher.coefs == [2.0, 3.0]


def test_watch_without_socket_timeout_still_uses_bounded_reads(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """``socket_timeout=None`` (redis-py 5's default): blocking reads still end and loop."""
    publish(store, "untimed", 1)
    with ModelClient(services.redis_url, namespace=namespace, socket_timeout=None) as client:
        stop = threading.Event()
        watcher = Watcher(
            lambda: client.watch("untimed", after_version=1, stop=stop, max_block=0.2), last=99
        )
        publish(store, "untimed", 2)
        watcher.wait_seen([2], "a version")
        stop.set()  # honoured between two bounded reads, whatever the socket timeout
        assert watcher.finish() == [2]


class _ShortTimeoutConnection(redis.Connection):
    """A connection whose socket timeout is its own default: the pool's kwargs do not say."""

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("socket_timeout", SOCKET_TIMEOUT / 2)
        super().__init__(**kwargs)


def test_watch_adapts_to_a_socket_timeout_it_cannot_see(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """Reads shorten after a timeout when the client's timeout is hidden from the pool."""
    publish(store, "hidden", 1)
    with ModelClient(
        services.redis_url, namespace=namespace, connection_class=_ShortTimeoutConnection
    ) as client:
        watcher = Watcher(lambda: client.watch("hidden", after_version=1), last=2)
        time.sleep(2.5 * SOCKET_TIMEOUT)  # quiet: several of the hidden timeouts
        assert watcher.error is None, f"watch() died in a quiet period: {watcher.error!r}"
        publish(store, "hidden", 2)
        assert watcher.finish() == [2]


@pytest.fixture
def own_redis(tmp_path: Path) -> Iterator[EmbeddedRedis]:
    """A private redis-server with an append-only file; its data survive stop/start."""
    server = EmbeddedRedis(persist=True, directory=tmp_path / "redis")
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_watch_survives_a_redis_restart_without_gaps_or_duplicates(
    own_redis: EmbeddedRedis, namespace: str
) -> None:
    with Store.from_url(own_redis.url, namespace) as writer:
        publish(writer, "restart", 1)
        client = ModelClient(own_redis.url, namespace=namespace, socket_timeout=SOCKET_TIMEOUT)
        with client:
            watcher = Watcher(lambda: client.watch("restart", after_version=1), last=6)
            publish(writer, "restart", 2)
            watcher.wait_seen([2], "a version before the restart")

            own_redis.stop()  # SIGTERM: the AOF is flushed; the watcher loses its connection
            time.sleep(2.5 * SOCKET_TIMEOUT)  # down for longer than a socket timeout
            assert watcher.error is None, f"watch() died with Redis: {watcher.error!r}"
            own_redis.start()  # same port, same directory: the versions and stream are back

            # published while the watcher may still be backing off: resumed from its position
            publish(writer, "restart", 3)
            publish(writer, "restart", 4)
            watcher.wait_seen([2, 3, 4], "the versions published after the restart")
            publish(writer, "restart", 5)
            publish(writer, "restart", 6)
            assert watcher.finish() == [2, 3, 4, 5, 6]
    assert watcher.coefs == [2.0, 3.0, 4.0, 5.0, 6.0]


def test_watch_skips_retired_versions_and_yields_every_held_one(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    for v in range(1, 7):
        publish(store, "kept", v)
    assert store.models.retain("kept", keep_last=3) == [1, 2, 3]
    with ModelClient(services.redis_url, namespace=namespace) as client:
        caught_up = [c.version for c in client.watch("kept", after_version=1, idle_timeout=0.3)]
        assert caught_up == [4, 5, 6]  # 2 and 3 were retired: skipped, not an error
        newest = [
            c.version
            for c in client.watch("kept", after_version=1, idle_timeout=0.3, latest_only=True)
        ]
        assert newest == [6]


def test_watch_reads_held_versions_even_when_the_stream_lost_their_entries(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """The stream is a wake-up call; the registry says which versions exist."""
    for v in range(1, 4):
        publish(store, "trimmed", v)
    store.client.delete(store.keys.events("trimmed"))  # e.g. trimmed, or a lagging replica
    with ModelClient(services.redis_url, namespace=namespace) as client:
        assert [c.version for c in client.watch("trimmed", after_version=1, idle_timeout=0.3)] == [
            2,
            3,
        ]
        watcher = Watcher(lambda: client.watch("trimmed", after_version=3), last=5)
        publish(store, "trimmed", 4)
        publish(store, "trimmed", 5)
        assert watcher.finish() == [4, 5]


def test_watch_from_now_yields_only_later_versions_once(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    publish(store, "now", 1)
    publish(store, "now", 2)
    with ModelClient(services.redis_url, namespace=namespace) as client:
        stop = threading.Event()
        started = threading.Event()

        def watch() -> Iterator[LinearPredictor]:
            it = client.watch("now", stop=stop, max_block=0.2)
            started.set()
            return iter(it)

        watcher = Watcher(watch, last=99)
        wait_for(started.is_set, 10.0, "the watcher to start")
        # the position is pinned on the first next(): wait until the generator runs
        wait_for(lambda: _blocked_in_xread(store), 10.0, "the watcher to block")
        publish(store, "now", 3)
        watcher.wait_seen([3], "the version published after the watch started")
        stop.set()
        assert watcher.finish() == [3]


def _blocked_in_xread(store: Store) -> bool:
    clients = store.client.client_list()
    return any(c.get("cmd") == "xread" for c in clients)


def test_watch_rejects_bad_arguments(services: EmbeddedServices, namespace: str) -> None:
    with ModelClient(services.redis_url, namespace=namespace) as client:
        with pytest.raises(InvalidInput, match="max_block=0"):
            client.watch("m", max_block=0)
        with pytest.raises(InvalidInput, match="after_version=-1"):
            client.watch("m", after_version=-1)
        with pytest.raises(InvalidInput, match="idle_timeout=-1"):
            client.watch("m", idle_timeout=-1)

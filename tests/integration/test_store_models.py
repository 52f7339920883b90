"""Model registry on a real redis-server: atomic publish, readers, history, retention."""

from __future__ import annotations

import json
import threading
from datetime import UTC, datetime

import numpy as np
import pytest
import redis

from pipeline.errors import ModelVersionConflict, UnknownModel
from pipeline.events import ReceiptStatus
from pipeline.store import ModelSpec, Store, UnknownVersion


def spec(value: float, d: int = 4, *, seq: int = 0, method: str = "fit") -> ModelSpec:
    return ModelSpec(
        kind="logistic",
        coef=np.full(d, value),
        intercept=value,
        classes=[0, 1],
        method=method,
        seq=seq,
        certificate=0.01 * value,
        budget=1.0,
        holdout_metrics={"accuracy": 0.9},
    )


def test_publish_and_read_back(store: Store) -> None:
    first = store.models.publish("m", spec(1.0, seq=10), expected_version=0)
    assert first.version == 1 and first.metadata.parent is None
    second = store.models.publish("m", spec(2.0, seq=20, method="influence"), 1)
    assert second.metadata.parent == 1

    current = store.models.get("m")
    assert current.version == 2
    np.testing.assert_array_equal(current.coef, np.full(4, 2.0))
    assert current.intercept.shape == () and float(current.intercept) == 2.0
    meta = current.metadata
    assert (meta.method, meta.seq, meta.certificate, meta.classes) == (
        "influence",
        20,
        0.02,
        [0, 1],
    )
    assert store.models.get("m", 1).coef[0] == 1.0
    assert [m.version for m in store.models.history("m")] == [2, 1]
    assert store.models.applied_seq("m") == 20
    assert [n["version"] for n in store.models.notices("m")] == ["2", "1"]
    assert store.models.models() == ["m"]


def test_unknown_model_and_version(store: Store) -> None:
    with pytest.raises(UnknownModel):
        store.models.get("nope")
    store.models.publish("m", spec(1.0), 0)
    with pytest.raises(UnknownVersion, match="no version 7"):
        store.models.get("m", 7)


def test_publish_notifies_subscribers(store: Store, redis_client: redis.Redis) -> None:
    pubsub = redis_client.pubsub(ignore_subscribe_messages=True)
    pubsub.subscribe(store.models.channel("m"))
    pubsub.get_message(timeout=1.0)  # the subscribe confirmation
    store.models.publish("m", spec(1.0), 0)
    message = pubsub.get_message(timeout=5.0)
    pubsub.close()
    assert message is not None
    assert json.loads(message["data"])["version"] == "1"


def test_stale_writer_gets_a_conflict(store: Store) -> None:
    store.models.publish("m", spec(1.0), 0)
    with pytest.raises(ModelVersionConflict) as err:
        store.models.publish("m", spec(9.0), 0)
    assert (err.value.model_id, err.value.expected, err.value.found) == ("m", 0, 1)
    assert store.models.current_version("m") == 1


def test_two_concurrent_writers_exactly_one_wins(store: Store) -> None:
    for round_ in range(25):
        barrier = threading.Barrier(2)
        outcomes: list[object] = []

        def write(
            value: float,
            expected: int = round_,
            barrier: threading.Barrier = barrier,
            outcomes: list[object] = outcomes,
        ) -> None:
            pub = store.models.publication("race", expected).set_model(spec(value))
            barrier.wait()
            try:
                outcomes.append(pub.commit().version)
            except ModelVersionConflict as exc:
                outcomes.append(exc)

        threads = [threading.Thread(target=write, args=(v,)) for v in (1.0, 2.0)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wins = [o for o in outcomes if isinstance(o, int)]
        losses = [o for o in outcomes if isinstance(o, ModelVersionConflict)]
        assert wins == [round_ + 1] and len(losses) == 1
        assert (losses[0].expected, losses[0].found) == (round_, round_ + 1)
    assert store.models.current_version("race") == 25


def test_reader_never_sees_a_version_without_its_coefficients(store: Store) -> None:
    n_publishes, d = 1000, 16
    store.models.publish("hot", spec(1.0, d), 0)
    stop = threading.Event()
    seen: list[int] = []
    problems: list[str] = []

    def reader() -> None:
        last = 0
        while not stop.is_set():
            version = store.models.get("hot")
            v = version.version
            if version.coef.shape != (d,) or not np.all(version.coef == float(v)):
                problems.append(f"v{v} has coef {version.coef}")
            if float(version.intercept) != float(v) or v < last:
                problems.append(f"v{v} after v{last}, intercept {version.intercept}")
            last = v
            seen.append(v)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for v in range(2, n_publishes + 2):
            store.models.publication("hot", v - 1).set_model(spec(float(v), d)).retain(3).commit()
    finally:
        stop.set()
        thread.join()
    assert not problems, problems[:5]
    assert len(seen) > 50 and len(set(seen)) > 10
    assert store.models.current_version("hot") == n_publishes + 1
    assert [m.version for m in store.models.history("hot")] == [1001, 1000, 999]


def test_retention_keeps_the_last_versions_and_the_current(store: Store) -> None:
    for v in range(1, 7):
        store.models.publish("m", spec(float(v)), v - 1)
    assert store.models.retain("m", 2) == [1, 2, 3, 4]
    assert [m.version for m in store.models.history("m")] == [6, 5]
    with pytest.raises(UnknownVersion):
        store.models.get("m", 4)
    assert store.models.retain("m", 1) == [5]
    assert store.models.get("m").version == 6


def test_invalid_model_is_refused_before_writing(store: Store) -> None:
    bad = ModelSpec(
        kind="logistic",
        coef=np.zeros((3, 4)),
        intercept=np.zeros(3),
        classes=[0, 1],
        method="fit",
        seq=0,
    )
    with pytest.raises(Exception, match="needs coef of shape"):
        store.models.publish("m", bad, 0)
    nan = ModelSpec(kind="ridge", coef=np.array([np.nan]), intercept=0.0, method="fit", seq=0)
    with pytest.raises(Exception, match="finite"):
        store.models.publish("m", nan, 0)
    assert store.models.current_version("m") == 0


def test_receipts_are_found_by_request_id_without_a_write_to_an_index(store: Store) -> None:
    """The deletion path's receipts (opened at routing, closed by a publication) belong
    to registered models: ``receipts.get`` finds them through the registry, and nothing
    is written per request outside the model's slot. A receipt under a name that is not
    a model (a request naming a model that does not exist) is indexed, and found too."""
    for model_id in ("m", "n"):
        store.models.publish(model_id, spec(1.0), 0)
    received = datetime.now(UTC)
    store.receipts.open_many("m", {"q": received})
    pub = store.models.publication("m", expected_version=1)
    pub.set_model(spec(2.0))
    pub.receipt("q", ReceiptStatus.APPLIED, received_at=received)
    pub.commit()
    store.receipts.open_many("n", {"q": received})
    assert not store.client.exists(store.keys.request_models("q"))
    found = store.receipts.get("q")
    assert [(r.model_id, r.status) for r in found] == [
        ("m", ReceiptStatus.APPLIED),
        ("n", ReceiptStatus.RECEIVED),
    ]
    store.receipts.reject("q", "typo", "model 'typo' does not exist")
    assert [r.model_id for r in store.receipts.get("q")] == ["m", "n", "typo"]
    assert store.receipts.get("never-sent") == []

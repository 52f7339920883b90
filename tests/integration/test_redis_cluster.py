"""The Redis layer on a real 3-node Redis Cluster (``redis-server --cluster-enabled yes``).

Every model's keys carry its id as a hash tag, so a publication (version, ``current``,
erasure, receipts, checkpoint) is one single-slot transaction; the indexes across models
(subject -> models, request -> models, suppressions) live in other slots and are written
outside it. These tests drive the store, the applier and the SDK's reader through a
cluster client, and one worker process end to end.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import numpy as np
import pytest

from pipeline.applier import Applier
from pipeline.embedded import EmbeddedRedisCluster
from pipeline.events import DeletionRequested, ReceiptStatus, RecordAdded
from pipeline.intake import Message
from pipeline.ops import Forget, Learn
from pipeline.routing import Router
from pipeline.sdk import DeletionClient, ModelClient
from pipeline.store import Store
from pipeline.store.facade import connect
from pipeline.store.models import UnknownVersion
from pipeline.topics import Topics, ensure_topics
from pipeline.training import Table, load_holdout, train_model
from workers.processes import child_env, spawn, stop

from .conftest import proc_alive

D = 5
PARAMS = {"lam": 1e-2, "sigma": 1.0, "seed": 0}


@pytest.fixture(scope="module")
def cluster() -> Iterator[EmbeddedRedisCluster]:
    with EmbeddedRedisCluster(3) as running:
        yield running
    assert not any(proc_alive(pid) for pid in running.pids)


@pytest.fixture
def cstore(cluster: EmbeddedRedisCluster) -> Iterator[Store]:
    store = Store(connect(cluster.url, cluster=True), namespace=f"c{uuid.uuid4().hex[:6]}")
    yield store
    store.close()


def _table(n: int, prefix: str) -> Table:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(n, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (X[:, 0] > 0).astype(int)
    return Table(
        X=X, y=y, subjects=[f"{prefix}{i // 3}" for i in range(n)], ids=[f"r{i}" for i in range(n)]
    )


def test_the_keys_of_a_model_share_one_slot_and_the_indexes_spread(cstore: Store) -> None:
    slots = {
        cstore.client.keyslot(k)  # type: ignore[attr-defined]
        for k in (
            cstore.keys.current("m"),
            cstore.keys.version("m", 3),
            cstore.keys.records("m"),
            cstore.keys.receipt("m", "q"),
            cstore.keys.checkpoint("m", 3),
            cstore.keys.tombstones("m"),
        )
    }
    assert len(slots) == 1
    spread = {cstore.client.keyslot(cstore.keys.subject_models(f"s{i}")) for i in range(50)}  # type: ignore[attr-defined]
    assert len(spread) > 10


def test_train_forget_learn_and_read_on_a_cluster(cstore: Store, cluster) -> None:
    """The applier's whole cycle: routing, suppression, the transaction, tombstones."""
    table = _table(90, "c")
    train_model(cstore, "m1", table, holdout=0.2, params=PARAMS, seed=2)
    train_model(cstore, "m2", table, holdout=0.0, params=PARAMS, seed=2)
    applier = Applier(cstore)
    ops = [Forget(DeletionRequested(request_id=f"q{i}", subject_id=f"c{i}")) for i in range(5)]
    by_model, routed = Router(applier.store).route(ops)
    assert sorted(by_model) == ["m1", "m2"]
    outs = [applier.apply(m, model_ops) for m, model_ops in by_model.items()]
    assert all(o.published is not None for o in outs)
    receipts = {(r.model_id, r.request_id): r for o in outs for r in o.receipts}
    assert {r.status for r in receipts.values()} <= {ReceiptStatus.APPLIED}
    for i in range(5):
        assert cstore.records.subject_record_ids("m2", f"c{i}") == set()
    assert load_holdout(cstore, "m1") is not None

    late = RecordAdded(
        event_id="late",
        model_id="m2",
        record_id="late-1",
        subject_id="c0",
        features=[0.1] * D,
        label=1,
        ts=ops[0].request.ts,  # produced as the erasure arrived: suppressed
    )
    out = applier.apply("m2", [Learn(late, Message("records", 0, 0, b"k", b"{}"))])
    assert out.tombstones and "late-1" in out.tombstones
    assert cstore.records.get("m2", "late-1") is None

    with ModelClient(cluster.url, cstore.keys.namespace, cluster=True) as models:
        current = models.get("m2")
        assert current.version == 2
        with pytest.raises(UnknownVersion):
            models.get("m2", 1)  # retired by the erasure
        (receipt,) = [r for r in models.receipt("q1") if r.model_id == "m2"]
        assert receipt.status is ReceiptStatus.APPLIED and receipt.version == 2


@pytest.mark.broker  # a worker process over the session's broker: not the Redis-only tier
def test_a_worker_runs_on_the_cluster(cluster, services, tmp_path) -> None:
    """`unlearn worker` with UNLEARN_REDIS_CLUSTER: a subject's deletion is applied."""
    tag = f"cl_{uuid.uuid4().hex[:6]}"
    prefix = f"{tag}."
    ensure_topics(services.kafka_bootstrap, Topics(prefix), partitions=3)
    store = Store(connect(cluster.url, cluster=True), namespace=tag)
    train_model(store, "mw", _table(60, "w"), holdout=0.0, params=PARAMS, seed=3)
    env = child_env(
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=cluster.url,
        topic_prefix=prefix,
        key_namespace=tag,
        partitions=3,
        broker_timeouts="fast",
        max_wait=0.2,
    )
    env["UNLEARN_REDIS_CLUSTER"] = "true"
    log = tmp_path / "worker.log"
    proc = spawn(["worker", "-v"], env, log)
    try:
        with DeletionClient(services.kafka_bootstrap, prefix) as client:
            request_id = client.request(subject_id="w4")

        def final() -> list:
            assert proc.poll() is None, log.read_text()[-3000:]
            got = store.receipts.get(request_id)
            return got if got and all(r.status.final for r in got) else []

        deadline = time.monotonic() + 90
        while not (receipts := final()):
            assert time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.1)
        assert [(r.model_id, r.status, r.n_records) for r in receipts] == [
            ("mw", ReceiptStatus.APPLIED, 3)
        ]
        assert store.records.subject_record_ids("mw", "w4") == set()
        assert store.models.current_version("mw") == 2
    finally:
        stop(proc)
        store.close()

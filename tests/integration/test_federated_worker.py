"""Federated training and unlearning through the real broker, the faust worker and Redis.

Three clients hold non-IID parts of scikit-learn's digits (1797 x 64, ten classes) and
answer the rounds the worker posts with ``pipeline.sdk.FederatedClient`` (``ClientStats``
on ``unlearn.federated``). Tolerances: the federated fit is the centralised
``LogisticUnlearner`` optimum on the union (relative parameter distance < 1e-6, both stop
at a gradient norm of 1e-9 n); after forgetting a client (a class), the released model is
within the strong-convexity bound certificate / (lambda n) of the centralised retrain
without it, and within 1e-3 relative distance.
"""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sklearn.datasets import load_digits

from pipeline import LogisticUnlearner
from pipeline.events import ClassRemoved, ClientRemoved, ReceiptStatus, encode_event
from pipeline.federated import FederationBoard, FederationSpec, split_non_iid
from pipeline.sdk import FederatedClient, ModelClient

PARAMS = {"lam": 1e-2, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}
MODEL = "fed-digits"


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory("federated", max_batch=200) as pipeline:
        yield pipeline


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _drive(pipe, clients, version, timeout=40.0):
    """Let every client answer the open rounds until ``version`` is published."""
    store = pipe.store
    deadline = time.monotonic() + timeout
    while store.models.current_version(MODEL) < version:
        pipe.check_alive()
        assert time.monotonic() < deadline, (
            f"v{version} not published:\n{pipe.log('worker')[-3000:]}"
        )
        for client in clients:
            client.answer(MODEL)
        time.sleep(0.05)
    return store.models.get(MODEL)


def _dead_letters(pipe, expected, timeout=20.0):
    consumer = KafkaConsumer(bootstrap_servers=pipe.bootstrap, enable_auto_commit=False)
    try:
        topic = pipe.topics.dead_letter
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out = []
        deadline = time.monotonic() + timeout
        while len(out) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(json.loads(m.value) for m in batch)
        for batch in consumer.poll(timeout_ms=500).values():  # catch extra ones
            out.extend(json.loads(m.value) for m in batch)
        return out
    finally:
        consumer.close()


def _send(pipe, *events):
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, acks="all")
    for ev in events:
        value = ev if isinstance(ev, bytes) else encode_event(ev)
        producer.send(pipe.topics.federated, key=MODEL.encode(), value=value)
    producer.flush()
    producer.close()


def test_clients_train_then_a_client_and_a_class_are_forgotten(pipe) -> None:
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    parts = split_non_iid(y, 3, seed=1)
    members = [f"site-{i}" for i in range(3)]
    spec = FederationSpec(MODEL, "logistic", X.shape[1], members, list(range(10)), PARAMS)
    FederationBoard(pipe.store).create(spec)
    clients = [
        FederatedClient(
            cid,
            X[p],
            y[p],
            pipe.bootstrap,
            pipe.services.redis_url,
            pipe.prefix,
            namespace=pipe.namespace,
        )
        for cid, p in zip(members, parts, strict=True)
    ]
    try:
        # 1. federated training: the centralised optimum on the union
        v1 = _drive(pipe, clients, 1)
        central = LogisticUnlearner(**PARAMS).fit(X, y)
        assert v1.metadata.method == "fit" and v1.metadata.n_records == len(y)
        assert _rel(v1.coef, central.coef_) < 1e-6
        assert v1.metadata.extra["federated"]["converged"]

        # 2. forget site-1 (and replay the event, and name a stranger)
        forget = ClientRemoved(event_id="forget-site-1", model_id=MODEL, client_id="site-1")
        stranger = ClientRemoved(event_id="forget-eve", model_id=MODEL, client_id="eve")
        _send(pipe, forget, forget, stranger)
        v2 = _drive(pipe, [c for c in clients if c.client_id != "site-1"], 2)
        keep = np.setdiff1d(np.arange(len(y)), parts[1])
        retrain = LogisticUnlearner(**PARAMS).fit(X[keep], y[keep])
        with ModelClient(pipe.services.redis_url, pipe.namespace) as models:
            (receipt,) = models.receipt("forget-site-1")
            (rejected,) = pipe.wait_for(lambda: models.receipt("forget-eve"), 20, "a receipt")
        assert receipt.status is ReceiptStatus.APPLIED and receipt.version == 2
        assert receipt.n_records == len(parts[1]) == len(y) - v2.metadata.n_records
        assert receipt.certificate is not None and receipt.budget is not None
        assert receipt.certificate <= receipt.budget
        bound = receipt.certificate / (PARAMS["lam"] * len(keep))
        assert np.linalg.norm(v2.coef - retrain.coef_) <= bound + 1e-9
        assert _rel(v2.coef, retrain.coef_) < 1e-3
        assert rejected.status is ReceiptStatus.REJECTED and "'eve'" in (rejected.reason or "")
        assert v2.metadata.extra["federated"]["members"] == ["site-0", "site-2"]

        # 3. forget class 9: it is never predicted again
        drop = ClassRemoved(event_id="forget-class-9", model_id=MODEL, class_label=9)
        _send(pipe, drop, b'{"type": "ClientStats", "model_id": "fed-digits"}')
        v3 = _drive(pipe, [c for c in clients if c.client_id != "site-1"], 3)
        assert v3.metadata.classes == list(range(9)) and v3.coef.shape == (9, X.shape[1])
        rows = np.setdiff1d(keep, np.flatnonzero(y == 9))
        retrain9 = LogisticUnlearner(**PARAMS).fit(X[rows], y[rows])
        with ModelClient(pipe.services.redis_url, pipe.namespace) as models:
            (receipt9,) = models.receipt("forget-class-9")
            predictor = models.get(MODEL)
        assert receipt9.status is ReceiptStatus.APPLIED and receipt9.version == 3
        assert receipt9.n_records == int(np.sum(y[keep] == 9))
        assert np.linalg.norm(v3.coef - retrain9.coef_) <= (
            receipt9.certificate / (PARAMS["lam"] * len(rows)) + 1e-9
        )
        assert not np.any(predictor.predict(X) == 9)
        assert pipe.store.models.current_version(MODEL) == 3  # the replay published nothing
    finally:
        for client in clients:
            client.close()

    reasons = sorted(letter["reason"] for letter in _dead_letters(pipe, expected=2))
    assert reasons == ["invalid", "schema"], reasons

"""Deletions through the real broker, the faust worker and Redis, driven as a user would.

One worker for the module (it takes seconds to join its group); models are trained with
`unlearn train` and deletions published with the SDK.
"""

from __future__ import annotations

import json

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sklearn.datasets import load_digits

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.events import DeletionRequested, ReceiptStatus, encode_event
from pipeline.sdk import DeletionClient, ModelClient
from pipeline.store.keys import subject_token
from pipeline.topics import record_key
from pipeline.training import Table, load_holdout, train_model

LOGISTIC = {
    "lam": 1e-3,
    "sigma": 1.0,
    "epsilon": 1.0,
    "delta": 1e-4,
    "seed": 0,
    "fit_intercept": True,
}


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory("deletions", max_batch=500) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def digits_file(tmp_path_factory):
    X, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("data") / "digits.npz"
    subjects = np.array([f"person-{i % 150}" for i in range(len(y))])
    np.savez(path, X=X / 16.0, y=y, subjects=subjects)
    return path


def read_topic(bootstrap: str, topic: str, expected: int, timeout: float = 30.0) -> list:
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        tps = [TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list = []
        import time

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
            if len(out) >= expected:
                # drain what is left, to catch duplicates
                for batch in consumer.poll(timeout_ms=500).values():
                    out.extend(batch)
                break
        return out
    finally:
        consumer.close()


def test_deleting_a_subject_from_two_models(pipe, digits_file) -> None:
    for model, kind in (("digits", "logistic"), ("digits-ridge", "ridge")):
        done = pipe.cli(
            "train",
            model,
            "--data",
            str(digits_file),
            "--kind",
            kind,
            "--subject-column",
            "subjects",
            "--sigma",
            "1.0",
            "--seed",  # reproducible b, so the test can refit the same objective
            "0",
        )
        assert done.returncode == 0, done.stderr
    store = pipe.store
    subject = "person-7"
    before = {m: store.records.subject_record_ids(m, subject) for m in ("digits", "digits-ridge")}
    assert all(before.values())
    token = subject_token(subject)
    in_holdout = {
        m: sum(t == token for t in load_holdout(store, m).tokens)
        for m in ("digits", "digits-ridge")
    }

    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        request_id = client.request(subject_id=subject, reason="GDPR Art. 17")
    with ModelClient(pipe.services.redis_url, pipe.namespace) as models:
        receipts = pipe.wait_for(
            lambda: (
                (r := models.receipt(request_id))
                and len(r) == 2
                and all(x.status.final for x in r)
                and r
            ),
            30,
            "two final receipts",
        )
    for receipt in receipts:
        assert receipt.status is ReceiptStatus.APPLIED
        # the receipt counts the training records and the holdout rows it erased
        erased = len(before[receipt.model_id]) + in_holdout[receipt.model_id]
        assert receipt.version == 2 and receipt.n_records == erased
        assert receipt.certificate is not None and receipt.method in (
            "fisher",
            "influence",
            "exact",
        )
        # the subject's features are gone from Redis
        assert store.records.subject_record_ids(receipt.model_id, subject) == set()
        assert all(store.records.get(receipt.model_id, r) is None for r in before[receipt.model_id])
    assert store.records.models_for_subject(subject) == set()
    raw_keys = [k for k in store.client.scan_iter(match=f"{pipe.namespace}:*:rec:*")]
    gone = {f"{m}:rec:{r}" for m, ids in before.items() for r in ids}
    assert not any(k.decode().split("}:", 1)[-1] in gone for k in raw_keys if b"digits" in k)

    # one tombstone per erased record on the compacted records topic, keyed by model and
    # record: the two models share record ids, and a key of the record id alone would let
    # compaction drop one model's records when the other's are erased
    expected = {record_key(m, r) for m, ids in before.items() for r in ids}
    tombstones = read_topic(pipe.bootstrap, pipe.topics.records, len(expected))
    assert {t.key for t in tombstones if t.value is None} == expected

    # the published models agree with exact refits without the subject
    for model, cls, params, tol in (
        ("digits", LogisticUnlearner, LOGISTIC, 1e-3),  # one Fisher step: stated tolerance
        ("digits-ridge", RidgeUnlearner, {"alpha": 1.0, "sigma": 1.0, "seed": 0}, 1e-9),
    ):
        held = list(store.records.scan(model))
        exact = cls(**params).fit(
            np.stack([r.features for r in held]),
            np.array([r.label for r in held]),
            ids=[r.record_id for r in held],
        )
        published = store.models.get(model)
        rel = np.linalg.norm(published.coef - exact.coef_) / np.linalg.norm(exact.coef_)
        assert rel < tol, (model, rel)
        assert published.metadata.n_records == len(held) == exact.n_records_


def test_ten_thousand_deletions_are_applied_exactly_once(pipe) -> None:
    rng = np.random.default_rng(4)
    n, d = 12_000, 8
    X = rng.normal(size=(n, d))
    y = X @ rng.normal(size=d) + 0.1 * rng.normal(size=n)
    ids = [f"row{i}" for i in range(n)]
    table = Table(X=X, y=y, subjects=[f"u{i}" for i in range(n)], ids=ids)
    params = {"alpha": 2.0, "fit_intercept": True}
    train_model(pipe.store, "stream", table, kind="ridge", holdout=0.0, params=params)

    doomed = [ids[i] for i in rng.choice(n, size=10_000, replace=False)]
    events = [
        DeletionRequested(request_id=f"del-{rid}", record_ids=[rid], model_ids=["stream"])
        for rid in doomed
    ]
    replays = [events[i] for i in rng.choice(len(events), size=500, replace=False)]
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, linger_ms=20, acks="all")
    order = events[:5_000] + replays[:250] + events[5_000:] + replays[250:]
    for ev in order:
        producer.send(pipe.topics.deletions, key=ev.record_ids[0].encode(), value=encode_event(ev))
    producer.flush()
    producer.close()

    request_ids = [ev.request_id for ev in events]

    def finals() -> int:
        got = 0
        for i in range(0, len(request_ids), 2_000):
            chunk = pipe.store.receipts.get_many(request_ids[i : i + 2_000], "stream")
            got += sum(1 for r in chunk if r is not None and r.status.final)
        return got

    pipe.wait_for(lambda: finals() == 10_000, 180, "10,000 final receipts")
    receipts = [
        r
        for i in range(0, 10_000, 2_000)
        for r in pipe.store.receipts.get_many(request_ids[i : i + 2_000], "stream")
    ]
    assert all(
        r is not None and r.status is ReceiptStatus.APPLIED and r.n_records == 1 for r in receipts
    )
    # one receipt per request on the receipts topic: a replayed request announces the same
    # receipt again (same event id, version, status), never a second, different one
    messages = read_topic(pipe.bootstrap, pipe.topics.receipts, expected=10_000)
    stream_msgs = [json.loads(m.value) for m in messages if b'"stream"' in m.value]
    distinct: dict[str, set[tuple]] = {}
    for msg in stream_msgs:
        key = (msg["event_id"], msg["version"], msg["status"], msg["completed_at"])
        distinct.setdefault(msg["request_id"], set()).add(key)
    assert len(distinct) == 10_000 and {len(v) for v in distinct.values()} == {1}
    assert len(stream_msgs) <= 10_000 + len(replays)  # repeats only for the replays

    # the final model equals the engine applied directly to the same deletions
    direct = RidgeUnlearner(**params).fit(X, y, ids=ids)
    direct.forget(doomed)
    published = pipe.store.models.get("stream")
    np.testing.assert_allclose(published.coef, direct.coef_, rtol=1e-8, atol=1e-10)
    assert published.metadata.n_records == n - 10_000
    assert pipe.store.records.count("stream") == n - 10_000
    # the model's load was followed by a full collection and a freeze (workers.app)
    assert "heap settled after a model load" in pipe.log("worker")

"""Forgetting feature columns and correcting labels through the real broker, worker,
retrainer and Redis (issue 18), as a user drives them: ``unlearn train`` from a CSV with
a header, ``unlearn forget-feature`` / ``unlearn relabel`` and the SDK.

What is checked: receipts ``applied`` with the columns and records they changed, the
served coefficients of the forgotten columns 0, the stored records changed in Redis, bad
requests ``rejected`` with the reason while the rest of their batch applies, an old
(poisoned) ``RecordAdded`` replayed from the records topic never learned again, and a
retrain, finished afterwards or in flight meanwhile, that keeps the columns forgotten and
the labels corrected.
"""

from __future__ import annotations

import csv
import json
from datetime import UTC, datetime

import numpy as np
import pytest
from kafka import KafkaProducer
from sklearn.datasets import load_digits

from pipeline import LogisticUnlearner
from pipeline.events import (
    FeatureRemovalRequested,
    ReceiptStatus,
    RecordAdded,
    RelabelRequested,
    encode_event,
)
from pipeline.sdk import DeletionClient
from pipeline.sdk.deletions import partition_for
from pipeline.topics import record_key
from pipeline.training import Table, load_holdout, train_model

from .test_worker_deletions import read_topic

LOGISTIC = {"lam": 1e-3, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}
FAR_PAST = datetime(2020, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory(
        "features",
        retrainer=True,
        retrain_hold_seconds=2.5,
        retrain_min_interval=0,
        # only the operator's retrains here: relabels move the holdout accuracy on purpose
        retrain_accuracy_drop=1.0,
        retrain_class_accuracy_drop=1.0,
        retrain_deleted_fraction=1.0,
    ) as pipeline:
        yield pipeline


def digits():
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


def poisoned(y: np.ndarray, rows: range) -> np.ndarray:
    flipped = y.copy()
    flipped[list(rows)] = (flipped[list(rows)] + 1) % 10
    return flipped


def final_receipts(pipe, model_id: str, request_ids: list[str], timeout: float = 60):
    store = pipe.store
    return pipe.wait_for(
        lambda: (
            (rs := [store.receipts.get_one(q, model_id) for q in request_ids])
            and all(r is not None and r.status.final for r in rs)
            and rs
        ),
        timeout,
        "final receipts",
    )


def refit_exact(store, model_id: str, forgotten: tuple[int, ...]) -> LogisticUnlearner:
    """The model fitted from scratch on what Redis holds now, without the columns."""
    held = list(store.records.scan(model_id))
    return LogisticUnlearner(**LOGISTIC, fit_intercept=True, forgotten_features=forgotten).fit(
        np.stack([r.features for r in held]),
        np.array([r.label for r in held]),
        ids=[r.record_id for r in held],
    )


def relative(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def test_forget_columns_and_correct_labels_from_the_cli(pipe, tmp_path) -> None:
    X, y = digits()
    bad = poisoned(y, range(200))  # a label-flip poisoning of the first 200 rows
    path = tmp_path / "digits.csv"
    names = [f"px{j}" for j in range(X.shape[1])]
    with open(path, "w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow(["id", "subject", *names, "label"])
        for i in range(len(y)):
            out.writerow([f"r{i}", f"person-{i % 150}", *X[i], bad[i]])
    done = pipe.cli(
        "train", "digits", "--data", str(path), "--subject-column", "subject",
        "--id-column", "id", "--sigma", "1.0", "--seed", "0",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    store = pipe.store
    assert store.models.metadata("digits").extra["feature_names"] == names
    held = store.records.ids("digits")
    fix = [f"r{i}" for i in range(200) if f"r{i}" in held][:40]
    gone, others = fix[-1], fix[:-1]

    # a record deleted first: relabelling it afterwards must be refused
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        deleted = client.request(record_ids=[gone], model_ids=["digits"])
    final_receipts(pipe, "digits", [deleted])

    # one batch: a good removal (by name and index), a good relabel, and three bad requests
    # (keyed by the model id, they share a partition: the intake reads them in this order)
    requests = [
        FeatureRemovalRequested(request_id="drop", model_id="digits", columns=["px10", 20]),
        RelabelRequested(
            request_id="fix",
            model_id="digits",
            labels=[{"record_id": r, "label": int(y[int(r[1:])])} for r in others],
        ),
        RelabelRequested(
            request_id="fix-gone",
            model_id="digits",
            labels=[{"record_id": gone, "label": int(y[int(gone[1:])])}],
        ),
        FeatureRemovalRequested(request_id="drop-zip", model_id="digits", columns=["zip"]),
        FeatureRemovalRequested(request_id="drop-99", model_id="digits", columns=[3, 99]),
    ]
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, linger_ms=50, acks="all")
    for ev in requests:
        producer.send(pipe.topics.deletions, key=b"digits", value=encode_event(ev))
    producer.flush()
    ids = [ev.request_id for ev in requests]
    drop, fix, fix_gone, drop_zip, drop_99 = final_receipts(pipe, "digits", ids)

    assert drop.status is ReceiptStatus.APPLIED and drop.operation == "feature_removal"
    assert drop.columns == [10, 20] and drop.certificate is not None and drop.method
    assert fix.status is ReceiptStatus.APPLIED and fix.operation == "relabel"
    assert fix.relabelled == others and fix.n_records == len(others)
    assert fix_gone.status is ReceiptStatus.REJECTED
    assert f"holds no record {gone!r}" in fix_gone.reason
    assert drop_zip.status is ReceiptStatus.REJECTED and "no feature named 'zip'" in drop_zip.reason
    assert (
        drop_99.status is ReceiptStatus.REJECTED and "column 99 is out of range" in drop_99.reason
    )
    assert store.records.get("digits", gone) is None

    # the served version no longer uses the columns; Redis holds them zeroed everywhere
    served = store.models.get("digits")
    assert served.metadata.version == drop.version == fix.version
    assert np.all(served.coef[:, [10, 20]] == 0) and np.any(served.coef[:, 3] != 0)
    stored = list(store.records.scan("digits"))
    assert all(not r.features[[10, 20]].any() for r in stored)
    labels = {r.record_id: r.label for r in stored}
    assert all(labels[r] == y[int(r[1:])] for r in others)

    holdout = load_holdout(store, "digits")
    assert holdout is not None and len(holdout.ids) and not holdout.X[:, [10, 20]].any()

    # the changed records went back on the compacted records topic under their keys: the
    # relabelled ones with their corrected label, every held one without the columns
    on_topic = read_topic(pipe.bootstrap, pipe.topics.records, len(stored))
    last = {m.key: m.value for m in on_topic}
    fixed = json.loads(last[record_key("digits", others[0])])
    assert fixed["label"] == int(y[int(others[0][1:])])
    untouched = next(r for r in stored if r.record_id not in others)
    value = json.loads(last[record_key("digits", untouched.record_id)])
    assert value["features"][10] == value["features"][20] == 0
    assert value["label"] == untouched.label

    # an old RecordAdded of a relabelled record (its poisoned label, produced before the
    # correction: a replay of the topic, an offset reset) is never learned again; a record
    # produced after the removal is learned without the columns
    old = RecordAdded(
        event_id="replayed-old",
        model_id="digits",
        record_id=others[1],
        subject_id="person-1",
        features=list(X[int(others[1][1:])]),
        label=int(bad[int(others[1][1:])]),
        ts=FAR_PAST,
    )
    late = RecordAdded(
        event_id="late",
        model_id="digits",
        record_id="late-1",
        subject_id="newcomer",
        features=[0.5] * 64,
        label=4,
    )
    part = partition_for("digits", range(3))
    for ev in (old, late):
        producer.send(
            pipe.topics.records,
            key=record_key("digits", ev.record_id),
            value=encode_event(ev),
            partition=part,
        )
    producer.flush()
    producer.close()
    learned = pipe.wait_for(lambda: store.records.get("digits", "late-1"), 30, "the late record")
    assert not learned.features[[10, 20]].any() and learned.features[0] == 0.5
    assert store.records.get("digits", others[1]).label == y[int(others[1][1:])]
    assert np.all(store.models.get("digits").coef[:, [10, 20]] == 0)

    # the request applied again changes nothing: its receipt is final
    done = pipe.cli(
        "forget-feature", "digits", "px10", "20", "--request-id", "drop", "--wait", "30"
    )
    assert done.returncode == 0, done.stderr
    assert store.receipts.get_one("drop", "digits") == drop
    # unknown column from the CLI: the rejection's reason, no traceback
    done = pipe.cli("forget-feature", "digits", "zip", "--wait", "30")
    assert done.returncode != 0 and "no feature named 'zip'" in done.stderr
    assert "Traceback" not in done.stderr
    done = pipe.cli("relabel", "digits", "--record", others[2], "--label", "3", "--wait", "30")
    assert done.returncode == 0, done.stderr
    assert store.records.get("digits", others[2]).label == 3

    # a full retrain afterwards keeps the columns forgotten and the labels corrected
    before = store.models.current_version("digits")
    done = pipe.cli("retrain", "digits")
    assert done.returncode == 0, done.stderr
    retrained = pipe.wait_for(
        lambda: next((m for m in store.models.history("digits") if m.method == "retrain"), None),
        90,
        "the retrain to be merged",
    )
    assert retrained.version > before
    published = store.models.get("digits", retrained.version)
    assert np.all(published.coef[:, [10, 20]] == 0)
    exact = refit_exact(store, "digits", (10, 20))
    assert relative(published.coef, exact.coef_) < 1e-3
    assert store.records.get("digits", others[0]).label == y[int(others[0][1:])]


def test_a_retrain_in_flight_gets_the_changes_on_merge(pipe) -> None:
    X, y = digits()
    bad = poisoned(y, range(300))
    table = Table(
        X=X, y=bad, subjects=[f"s{i % 120}" for i in range(len(y))],
        ids=[f"r{i}" for i in range(len(y))],
    )  # fmt: skip
    store = pipe.store
    train_model(store, "inflight", table, params={**LOGISTIC, "fit_intercept": True}, holdout=0.1)
    done = pipe.cli("retrain", "inflight")
    assert done.returncode == 0, done.stderr
    pipe.wait_for(
        lambda: (
            (m := store.client.get(store.keys.retrain_inflight("inflight")))
            and "progress" in json.loads(m)
        ),
        30,
        "the retrain to take its snapshot",
    )
    snapshot_seq = store.models.applied_seq("inflight")
    held = store.records.ids("inflight")
    fix = {f"r{i}": int(y[i]) for i in range(300) if f"r{i}" in held}
    doomed = sorted(held - set(fix))[:5]
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        requests = [
            client.forget_features("inflight", [7, 40]),
            client.relabel("inflight", fix),
            client.request(record_ids=doomed, model_ids=["inflight"]),
        ]
    receipts = final_receipts(pipe, "inflight", requests)
    assert all(r.status is ReceiptStatus.APPLIED for r in receipts), receipts
    assert store.client.exists(store.keys.retrain_inflight("inflight"))  # mid-retrain
    assert receipts[0].columns == [7, 40] and receipts[1].n_records == len(fix)

    retrained = pipe.wait_for(
        lambda: next((m for m in store.models.history("inflight") if m.method == "retrain"), None),
        90,
        "the retrain to be merged",
    )
    # merged, not discarded: the refit of the snapshot taken before the changes
    assert retrained.extra["retrain"]["snapshot_seq"] == snapshot_seq
    assert all(r.version < retrained.version for r in receipts)
    published = store.models.get("inflight", retrained.version)
    assert np.all(published.coef[:, [7, 40]] == 0)
    exact = refit_exact(store, "inflight", (7, 40))
    assert relative(published.coef, exact.coef_) < 1e-3
    ckpt = store.checkpoints.load("inflight")
    assert ckpt is not None and ckpt.version == retrained.version
    assert all(store.records.get("inflight", r).label == label for r, label in fix.items())
    assert not any(store.records.get("inflight", r) for r in doomed)
    # stored labels and the merged model agree: the poisoned labels left with the merge
    assert published.metadata.n_records == len(held) - len(doomed)


def test_malformed_requests_are_dead_lettered_and_the_rest_applies(pipe) -> None:
    X, y = digits()
    table = Table(
        X=X[:300], y=y[:300], subjects=[f"s{i}" for i in range(300)],
        ids=[f"r{i}" for i in range(300)],
    )  # fmt: skip
    store = pipe.store
    train_model(store, "small", table, params={**LOGISTIC, "fit_intercept": True}, holdout=0)
    malformed = json.dumps(
        {"type": "FeatureRemovalRequested", "request_id": "m1", "model_id": "small", "columns": []}
    ).encode()
    nowhere = FeatureRemovalRequested(request_id="m2", model_id="nope", columns=[1])
    good = RelabelRequested(
        request_id="m3", model_id="small", labels=[{"record_id": "r5", "label": 1}]
    )
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, linger_ms=50, acks="all")
    for value in (malformed, encode_event(nowhere), encode_event(good)):
        producer.send(pipe.topics.deletions, key=b"small", value=value)
    producer.flush()
    producer.close()
    (applied,) = final_receipts(pipe, "small", ["m3"])
    assert applied.status is ReceiptStatus.APPLIED and applied.relabelled == ["r5"]
    assert store.records.get("small", "r5").label == 1
    (rejected,) = final_receipts(pipe, "nope", ["m2"])
    assert rejected.status is ReceiptStatus.REJECTED and "'nope' does not exist" in rejected.reason
    letters = pipe.wait_for(
        lambda: (
            (found := [json.loads(m.value) for m in read_topic(
                pipe.bootstrap, pipe.topics.dead_letter, 2, timeout=5
            )])
            and len(found) >= 2
            and found
        ),
        30,
        "two dead letters",
    )  # fmt: skip
    assert sorted(d["reason"] for d in letters) == ["schema", "unknown_model"]
    assert store.receipts.get_one("m1", "small") is None  # never decoded: no receipt

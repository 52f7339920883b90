"""Records, erasure and receipts on a real redis-server."""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import redis

from pipeline.events import ReceiptStatus
from pipeline.store import ModelSpec, Store, StoredRecord


def model(seq: int = 0) -> ModelSpec:
    return ModelSpec(
        kind="ridge",
        coef=np.zeros(3),
        intercept=0.0,
        method="influence",
        seq=seq,
        certificate=0.125,
        budget=2.0,
    )


def rec(record_id: str, subject: str, features: list[float], label: float = 1.0) -> StoredRecord:
    return StoredRecord(record_id, subject, np.array(features), label)


def every_value(client: redis.Redis, pattern: str) -> dict[bytes, bytes]:
    """Every key under ``pattern`` with all its bytes (name and values) concatenated."""
    out = {}
    for key in client.scan_iter(match=pattern, count=1000):
        kind = client.type(key)
        if kind == b"string":
            parts = [client.get(key)]
        elif kind == b"hash":
            parts = [b for kv in client.hgetall(key).items() for b in kv]
        elif kind == b"set":
            parts = list(client.smembers(key))
        elif kind == b"zset":
            parts = [m for m, _ in client.zrange(key, 0, -1, withscores=True)]
        elif kind == b"stream":
            parts = [b for _, f in client.xrange(key) for kv in f.items() for b in kv]
        elif kind == b"list":
            parts = client.lrange(key, 0, -1)
        else:
            raise AssertionError(f"unexpected type {kind!r} for {key!r}")
        out[key] = key + b"".join(p or b"" for p in parts)
    return out


def test_add_is_idempotent_and_indexed(store: Store) -> None:
    first = store.records.add("m", [rec("r1", "alice", [1, 2, 3]), rec("r2", "bob", [4, 5, 6])])
    again = store.records.add("m", [rec("r1", "alice", [9, 9, 9]), rec("r3", "alice", [7, 8, 9])])
    assert first == ["r1", "r2"] and again == ["r3"]
    assert store.records.count("m") == 3
    got = store.records.get("m", "r1")
    assert got is not None and got.subject_id == "alice" and got.label == 1.0
    np.testing.assert_array_equal(got.features, [1, 2, 3])
    assert store.records.subject_record_ids("m", "alice") == {"r1", "r3"}
    assert store.records.models_for_subject("alice") == {"m"}
    assert {r.record_id for r in store.records.scan("m", batch=2)} == {"r1", "r2", "r3"}


def test_erasure_leaves_no_feature_bytes_anywhere(store: Store, redis_client: redis.Redis) -> None:
    secret = [123.456789, -98765.4321, 3.14159e-7]
    alice = [rec(f"a{i}", "alice@example.org", [x + i for x in secret]) for i in range(5)]
    bob = [rec(f"b{i}", "bob", [float(i), 0.5, -0.5]) for i in range(5)]
    first = store.models.publication("m", 0).set_model(model(1)).add_records(alice + bob)
    first.checkpoint({"hessian": np.eye(3), "n": 10}).commit()
    store.records.add("other", [rec("x", "bob", [0.0, 0.0, 1.0])])
    store.receipts.received("req-1", ["m"])

    pattern = f"{store.keys.namespace}*"
    needles = [np.asarray(r.features, dtype="<f8").tobytes() for r in alice]
    needles += [b"alice@example.org"]
    before = b"".join(every_value(redis_client, pattern).values())
    assert all(n in before for n in needles)  # the check can see them

    result = (
        store.models.publication("m", 1)
        .set_model(model(2))
        .erase_subject("alice@example.org")
        .receipt("req-1", ReceiptStatus.APPLIED, n_records=5)
        .checkpoint({"hessian": 2 * np.eye(3), "n": 5})
        .commit()
    )
    assert sorted(result.erased) == [f"a{i}" for i in range(5)] and result.absent == []
    assert result.metadata.n_records == 5

    after = every_value(redis_client, pattern)
    leaks = [key for key, blob in after.items() if any(n in blob for n in needles)]
    assert leaks == []
    assert store.records.subject_record_ids("m", "alice@example.org") == set()
    assert store.records.models_for_subject("alice@example.org") == set()
    assert store.records.count("m") == 5
    assert store.records.models_for_subject("bob") == {"m", "other"}


def test_receipts_follow_the_publication(store: Store) -> None:
    store.models.publication("m", 0).set_model(model()).add_records(
        [rec("r1", "s1", [1, 1, 1]), rec("r2", "s1", [2, 2, 2])]
    ).commit()
    store.models.publish("n", model(), 0)
    [opened] = store.receipts.received("req-7", ["m"])
    assert opened.status is ReceiptStatus.RECEIVED
    assert opened.due_at - opened.received_at == timedelta(days=30)
    assert [rid for rid, _ in store.receipts.pending("m")] == ["req-7"]

    result = (
        store.models.publication("m", 1)
        .set_model(model(5))
        .erase_records(["r1", "ghost"])
        .receipt("req-7", ReceiptStatus.APPLIED, n_records=1)
        .applied_seq(5)
        .commit()
    )
    assert result.erased == ["r1"] and result.absent == ["ghost"]
    [done] = result.receipts
    assert (done.status, done.version, done.method) == (ReceiptStatus.APPLIED, 2, "influence")
    assert (done.certificate, done.budget, done.n_records) == (0.125, 2.0, 1)
    assert done.received_at == opened.received_at and done.due_at == opened.due_at
    assert done.completed_at is not None
    assert store.receipts.pending("m") == []
    assert store.models.applied_seq("m") == 5

    # a replay of the same request does not rewrite the final receipt
    replay = (
        store.models.publication("m", 2)
        .set_model(model(6))
        .erase_records(["r1"])
        .receipt("req-7", ReceiptStatus.ALREADY_ABSENT)
        .commit()
    )
    assert replay.absent == ["r1"] and replay.receipts == [] and replay.kept[0].version == 2
    assert store.receipts.received("req-7", ["m"])[0].status is ReceiptStatus.APPLIED

    rejected = store.receipts.reject("req-7", "n", "model n is frozen by a legal hold")
    assert rejected.status is ReceiptStatus.REJECTED
    by_model = {r.model_id: r for r in store.receipts.get("req-7")}
    assert set(by_model) == {"m", "n"} and by_model["m"].version == 2
    assert store.receipts.get("unknown-request") == []


def test_pending_retrain_stays_open(store: Store) -> None:
    store.models.publish("m", model(), 0)
    store.receipts.received("req-1", ["m"])
    result = (
        store.models.publication("m", 1)
        .set_model(model(1))
        .receipt("req-1", ReceiptStatus.PENDING_RETRAIN)
        .commit()
    )
    assert result.receipts[0].completed_at is None
    assert store.receipts.oldest_pending("m") is not None
    store.models.publication("m", 2).set_model(model(2)).receipt(
        "req-1", ReceiptStatus.COMPLETED
    ).commit()
    assert store.receipts.oldest_pending("m") is None
    assert store.receipts.get_one("req-1", "m").version == 3

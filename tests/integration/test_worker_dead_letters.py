"""Bad input never stops a worker: 1,000 malformed events of varied kinds, valid ones between.

Every malformed event must reach the dead-letter topic with its origin and a reason, and
every valid event interleaved with them must be applied.
"""

from __future__ import annotations

import base64
import json
import time
from collections import Counter

import numpy as np
import pytest
from kafka import KafkaConsumer, KafkaProducer, TopicPartition
from sklearn.datasets import load_digits

from pipeline.events import DeletionRequested, ReceiptStatus, RecordAdded, encode_event
from pipeline.training import Table, train_model

MAX_BYTES = 20_000


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory("deadletters", max_event_bytes=MAX_BYTES, max_batch=200) as pipeline:
        yield pipeline


def record(i: int, **over) -> dict:
    event = {
        "schema": 1,
        "type": "RecordAdded",
        "event_id": f"ev{i}",
        "model_id": "digits",
        "record_id": f"new{i}",
        "subject_id": f"newbie{i}",
        "features": [0.1] * 64,
        "label": i % 10,
    }
    event.update(over)
    return event


def malformed(i: int) -> tuple[str, bytes, str]:
    """(topic kind, value, expected reason) for the i-th bad event."""
    kind = i % 10
    if kind == 0:
        return "records", b"{not json", "malformed_json"
    if kind == 1:
        return "deletions", b"[1, 2, 3]", "schema"
    if kind == 2:
        return (
            "records",
            json.dumps({k: v for k, v in record(i).items() if k != "label"}).encode(),
            "schema",
        )
    if kind == 3:
        return "records", json.dumps(record(i, type="Receipt")).encode(), "wrong_type"
    if kind == 4:
        return "records", json.dumps(record(i)).replace("0.1,", "NaN,", 1).encode(), "non_finite"
    if kind == 5:
        return (
            "records",
            json.dumps(record(i)).replace("0.1,", "Infinity,", 1).encode(),
            "non_finite",
        )
    if kind == 6:
        return "records", json.dumps(record(i, features=[0.5] * 10)).encode(), "feature_count"
    if kind == 7:
        return "records", json.dumps(record(i, model_id="no-such-model")).encode(), "unknown_model"
    if kind == 8:
        bad = {"schema": 1, "request_id": f"bad{i}", "subject_id": "x", "model_ids": ["ghost"]}
        return "deletions", json.dumps(bad).encode(), "unknown_model"
    return "records", json.dumps(record(i, features=[0.25] * 5_000)).encode(), "oversized"


def test_malformed_events_go_to_the_dead_letter_topic(pipe) -> None:
    X, y = load_digits(return_X_y=True)
    subjects = [f"p{i % 100}" for i in range(len(y))]
    train_model(
        pipe.store,
        "digits",
        Table(X=X / 16.0, y=y, subjects=subjects, ids=[f"r{i}" for i in range(len(y))]),
        params={"lam": 1e-3, "sigma": 1.0, "fit_intercept": True},
        holdout=0.0,
    )

    producer = KafkaProducer(
        bootstrap_servers=pipe.bootstrap, linger_ms=10, acks="all", max_request_size=1_048_576
    )
    topic = {"records": pipe.topics.records, "deletions": pipe.topics.deletions}
    expected: Counter[str] = Counter()
    valid_records, valid_requests = [], []
    for i in range(1_000):
        kind, value, reason = malformed(i)
        expected[reason] += 1
        producer.send(topic[kind], key=f"bad-{i}".encode(), value=value)
        if i % 20 == 0:  # a valid record and a valid deletion between the bad ones
            rng = np.random.default_rng(i)
            ev = RecordAdded(
                event_id=f"good{i}",
                model_id="digits",
                record_id=f"good{i}",
                subject_id=f"g{i}",
                features=rng.random(64).tolist(),
                label=i % 10,
            )
            producer.send(topic["records"], key=ev.record_id.encode(), value=encode_event(ev))
            valid_records.append(ev.record_id)
            req = DeletionRequested(request_id=f"ok{i}", subject_id=f"p{(i // 20) % 100}")
            producer.send(topic["deletions"], key=b"p", value=encode_event(req))
            valid_requests.append(req.request_id)
    producer.flush()
    producer.close()

    store = pipe.store
    pipe.wait_for(
        lambda: set(valid_records) <= store.records.ids("digits"), 90, "the valid records"
    )
    pipe.wait_for(
        lambda: all(
            (r := store.receipts.get_one(q, "digits")) and r.status.final for q in valid_requests
        ),
        60,
        "the valid deletions",
    )
    assert all(
        store.receipts.get_one(q, "digits").status
        in (ReceiptStatus.APPLIED, ReceiptStatus.ALREADY_ABSENT)
        for q in valid_requests
    )
    assert not any(store.records.subject_record_ids("digits", f"p{k}") for k in range(50))

    consumer = KafkaConsumer(bootstrap_servers=pipe.bootstrap, enable_auto_commit=False)
    dlq = pipe.topics.dead_letter
    tps = [TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or [])]
    consumer.assign(tps)
    consumer.seek_to_beginning(*tps)
    letters: list[dict] = []
    deadline = time.monotonic() + 60
    while len(letters) < 1_000 and time.monotonic() < deadline:
        for batch in consumer.poll(timeout_ms=200).values():
            letters.extend(json.loads(m.value) for m in batch)
    for batch in consumer.poll(timeout_ms=500).values():
        letters.extend(json.loads(m.value) for m in batch)
    consumer.close()

    assert len(letters) == 1_000
    assert Counter(dl["reason"] for dl in letters) == expected
    origins = {(dl["topic"], dl["partition"], dl["offset"]) for dl in letters}
    assert len(origins) == 1_000  # each with its own topic/partition/offset
    assert {dl["topic"] for dl in letters} == set(topic.values())
    sample = next(dl for dl in letters if dl["reason"] == "feature_count")
    assert "expects 64" in sample["error"]
    assert base64.b64decode(sample["key_b64"]).startswith(b"bad-")
    assert pipe.procs["worker"].poll() is None  # still running


def test_messages_of_several_megabytes_are_dead_lettered_and_the_worker_goes_on(
    pipeline_factory,
) -> None:
    """Events far over UNLEARN_MAX_EVENT_BYTES (default 1 MiB), up to twice the consumer's
    fetch size: each is dead-lettered as oversized and the valid record after it applied.
    """
    with pipeline_factory("huge") as huge:
        X, y = load_digits(return_X_y=True)
        ids = [f"r{i}" for i in range(len(y))]
        table = Table(X=X / 16.0, y=y, subjects=[f"s{i}" for i in range(len(y))], ids=ids)
        train_model(huge.store, "digits", table, params={"lam": 1e-3, "sigma": 1.0})
        producer = KafkaProducer(
            bootstrap_servers=huge.bootstrap, acks="all", max_request_size=16 << 20
        )
        rng = np.random.default_rng(0)
        sizes = []
        for k, n in enumerate((150_000, 400_000)):  # about 3 MB and 8 MB of JSON
            value = json.dumps(record(k, features=rng.random(n).tolist())).encode()
            sizes.append(len(value))
            producer.send(huge.topics.records, key=b"huge", value=value).get(30)
            good = RecordAdded(
                event_id=f"after{k}",
                model_id="digits",
                record_id=f"after{k}",
                subject_id="g",
                features=rng.random(64).tolist(),
                label=1,
            )
            producer.send(huge.topics.records, key=b"good", value=encode_event(good)).get(30)
            huge.wait_for(
                lambda k=k: f"after{k}" in huge.store.records.ids("digits"),
                60,
                f"the record sent after a {sizes[-1]:,}-byte event",
            )
        producer.close()
        assert sizes[0] > 2 * 1_048_576 and sizes[1] > 8_000_000

        consumer = KafkaConsumer(bootstrap_servers=huge.bootstrap, enable_auto_commit=False)
        dlq = huge.topics.dead_letter
        tps = [TopicPartition(dlq, p) for p in sorted(consumer.partitions_for_topic(dlq) or [])]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        letters: list[dict] = []
        deadline = time.monotonic() + 30
        while len(letters) < 2 and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                letters.extend(json.loads(m.value) for m in batch)
        consumer.close()
        assert [dl["reason"] for dl in letters] == ["oversized", "oversized"]
        assert all(len(base64.b64decode(dl["value_b64"])) <= 65_536 for dl in letters)
        assert huge.procs["worker"].poll() is None

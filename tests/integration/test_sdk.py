"""The SDK against the real broker and redis-server: what a user publishes and reads."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import jsonschema
import numpy as np
import pytest
from kafka import KafkaConsumer, TopicPartition

from pipeline.embedded import EmbeddedServices
from pipeline.errors import SchemaError, UnknownModel
from pipeline.events import DeletionRequested, ReceiptStatus, RecordAdded, decode_event
from pipeline.sdk import DeletionClient, ModelClient
from pipeline.sdk.deletions import partition_for
from pipeline.store import ModelSpec, Store
from pipeline.topics import Topics, record_key

SCHEMAS = Path(__file__).resolve().parents[2] / "docs" / "schemas"


def read_all(bootstrap: str, topic: str, expected: int, timeout: float = 15.0) -> list:
    """Every record of ``topic`` (manual assignment: no group join), polling until ``expected``."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap, enable_auto_commit=False)
    try:
        partitions = consumer.partitions_for_topic(topic) or set()
        tps = [TopicPartition(topic, p) for p in sorted(partitions)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        records: list = []
        deadline = time.monotonic() + timeout
        while len(records) < expected and time.monotonic() < deadline:
            for batch in consumer.poll(timeout_ms=200).values():
                records.extend(batch)
        return records
    finally:
        consumer.close()


def schema(name: str) -> dict:
    return json.loads((SCHEMAS / f"{name}.json").read_text())


def test_deletion_request_round_trip(services: EmbeddedServices, topics: Topics) -> None:
    with DeletionClient(services.kafka_bootstrap, topics.prefix) as client:
        by_subject = client.request(subject_id="alice", reason="GDPR Art. 17")
        by_records = client.request(
            record_ids=["r1", "r2"], model_ids=["churn"], request_id="client-chosen-id"
        )
        manager = client._producer._transaction_manager
        assert client._producer.config["enable_idempotence"] is True
        assert manager is not None and manager.producer_id_and_epoch.producer_id >= 0
    assert by_records == "client-chosen-id" and len(by_subject) == 32

    records = read_all(services.kafka_bootstrap, topics.deletions, expected=2)
    assert len(records) == 2
    validator = jsonschema.Draft202012Validator(schema("DeletionRequested"))
    events = {}
    for record in records:
        raw = json.loads(record.value)
        validator.validate(raw)
        event = decode_event(record.value, DeletionRequested)
        events[event.request_id] = (record.key, event, dict(record.headers))
    key, event, headers = events[by_subject]
    assert key == b"alice" and event.subject_id == "alice" and event.reason == "GDPR Art. 17"
    assert event.model_ids is None and headers["type"] == b"DeletionRequested"
    key, event, _ = events["client-chosen-id"]
    assert key == b"r1" and event.record_ids == ["r1", "r2"] and event.model_ids == ["churn"]


def test_invalid_request_sends_nothing(services: EmbeddedServices, topics: Topics) -> None:
    with DeletionClient(services.kafka_bootstrap, topics.prefix) as client:
        with pytest.raises(SchemaError, match="names nothing"):
            client.request(reason="forgot the subject")
        with pytest.raises(SchemaError) as err:
            client.add_records(
                "m",
                [
                    {"record_id": "ok", "subject_id": "s", "features": [1.0], "label": 0},
                    {"record_id": "bad", "subject_id": "s", "features": [float("nan")], "label": 0},
                ],
            )
        assert err.value.field.startswith("records[1].features")
        client.request(subject_id="marker")
    assert len(read_all(services.kafka_bootstrap, topics.deletions, expected=2, timeout=0.5)) == 1
    assert read_all(services.kafka_bootstrap, topics.records, expected=1, timeout=0.5) == []


def test_add_records_round_trip(services: EmbeddedServices, topics: Topics) -> None:
    rows = [
        {
            "record_id": f"r{i}",
            "subject_id": f"s{i % 3}",
            "features": [i, 0.5, -1e-3],
            "label": i % 2,
        }
        for i in range(20)
    ]
    with DeletionClient(services.kafka_bootstrap, topics.prefix) as client:
        ids = client.add_records("churn", rows)
    assert len(set(ids)) == 20
    records = read_all(services.kafka_bootstrap, topics.records, expected=20)
    validator = jsonschema.Draft202012Validator(schema("RecordAdded"))
    partition = partition_for("churn", range(3))
    for record in records:
        validator.validate(json.loads(record.value))
        assert record.partition == partition
        assert record.key == record_key("churn", json.loads(record.value)["record_id"])
    events = sorted(
        (decode_event(r.value, RecordAdded) for r in records), key=lambda e: int(e.record_id[1:])
    )
    assert [e.record_id for e in events] == [f"r{i}" for i in range(20)]
    assert events[7].features == [7.0, 0.5, -1e-3] and events[7].model_id == "churn"


def publish(store: Store, model_id: str, expected: int, value: float) -> None:
    spec = ModelSpec(
        kind="logistic",
        coef=np.array([value, -value]),
        intercept=0.1,
        classes=["no", "yes"],
        method="influence",
        seq=expected,
    )
    store.models.publish(model_id, spec, expected)


def test_model_client_get_and_receipts(services: EmbeddedServices, store: Store) -> None:
    publish(store, "churn", 0, 1.0)
    store.receipts.received("req-1", ["churn"])
    store.models.publication("churn", 1).set_model(
        ModelSpec(
            kind="logistic",
            coef=np.array([2.0, -2.0]),
            intercept=0.1,
            classes=["no", "yes"],
            method="fisher",
            seq=2,
            certificate=0.02,
        )
    ).receipt("req-1", ReceiptStatus.APPLIED, n_records=1).commit()

    with ModelClient(services.redis_url, namespace=store.keys.namespace) as client:
        clf = client.get("churn")
        X = np.array([[1.0, 0.0], [0.0, 1.0]])
        assert clf.version == 2 and clf.metadata.method == "fisher"
        assert list(clf.predict(X)) == ["yes", "no"]
        p = 1.0 / (1.0 + np.exp(-(X @ np.array([2.0, -2.0]) + 0.1)))
        np.testing.assert_allclose(clf.predict_proba(X)[:, 1], p, rtol=1e-12)
        assert client.get("churn", 1).coef_[0] == 1.0
        assert [m.version for m in client.history("churn")] == [2, 1]
        [receipt] = client.receipt("req-1")
        assert (receipt.status, receipt.version, receipt.certificate) == ("applied", 2, 0.02)
        with pytest.raises(UnknownModel):
            client.get("missing")


def test_watch_yields_each_new_version(services: EmbeddedServices, store: Store) -> None:
    publish(store, "live", 0, 1.0)
    with ModelClient(services.redis_url, namespace=store.keys.namespace) as client:
        assert list(client.watch("live", idle_timeout=0.2)) == []  # nothing new

        def writer() -> None:
            for v in range(1, 4):
                publish(store, "live", v, float(v + 1))

        thread = threading.Thread(target=writer)
        seen = []
        thread.start()
        for clf in client.watch("live", after_version=1, idle_timeout=5.0):
            seen.append((clf.version, clf.coef_[0]))
            if clf.version == 4:
                break
        thread.join()
    assert seen == [(2, 2.0), (3, 3.0), (4, 4.0)]

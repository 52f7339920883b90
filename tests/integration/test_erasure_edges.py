"""An acknowledged erasure is permanent, at every edge (issue "An acknowledged erasure...").

One worker for the module, over the session's real Tansu broker and redis-server. Each
test trains its own small model and drives the worker as an application would, with raw
kafka-python where it needs control over what the SDK hides (a message's timestamp, a
hostile payload). What each test proves is in its docstring.
"""

from __future__ import annotations

import json
import time
import uuid
from datetime import UTC, datetime, timedelta

import numpy as np
import pytest
from kafka import KafkaProducer

from pipeline.applier import Applier
from pipeline.config import load_settings
from pipeline.errors import ConfigError
from pipeline.events import DeletionRequested, ReceiptStatus, RecordAdded, encode_event
from pipeline.ops import Forget
from pipeline.sdk import DeletionClient, ModelClient
from pipeline.sdk.deletions import partition_for
from pipeline.store.keys import subject_token
from pipeline.store.models import UnknownVersion
from pipeline.topics import record_key
from pipeline.training import Table, load_holdout, train_model

from .test_worker_deletions import read_topic

D = 6
PARAMS = {"lam": 1e-2, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory("erasure", max_batch=500) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def producer(pipe):
    prod = KafkaProducer(bootstrap_servers=pipe.bootstrap, acks="all", linger_ms=5)
    yield prod
    prod.close()


def _table(n: int = 120, seed: int = 0, prefix: str = "p") -> Table:
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (X @ np.arange(1, D + 1) > 0).astype(int)
    subjects, ids = [f"{prefix}{i // 2}" for i in range(n)], [f"r{i}" for i in range(n)]
    return Table(X=X, y=y, subjects=subjects, ids=ids)


def _train(pipe, model: str, holdout: float = 0.0) -> Table:
    table = _table()
    train_model(pipe.store, model, table, holdout=holdout, params=PARAMS)
    return table


def _send_record(
    pipe, producer, model: str, record_id: str, subject: str, *, produced: datetime, ts=True
) -> str:
    """A RecordAdded as an application's producer sent it at ``produced``."""
    event = RecordAdded(
        event_id=f"ev-{uuid.uuid4().hex}",
        model_id=model,
        record_id=record_id,
        subject_id=subject,
        features=[0.3] * D,
        label=1,
        ts=produced,
    )
    value = json.loads(encode_event(event))
    if not ts:
        del value["ts"]  # a client that leaves the event time to the pipeline
    parts = producer.partitions_for(pipe.topics.records)
    producer.send(
        pipe.topics.records,
        key=record_key(model, record_id),
        value=json.dumps(value).encode(),
        partition=partition_for(model, parts),
        timestamp_ms=int(produced.timestamp() * 1000),
    )
    producer.flush()
    return event.event_id


def _final(pipe, request_id: str, n: int = 1):
    return pipe.wait_for(
        lambda: (
            (r := pipe.store.receipts.get(request_id))
            and len(r) >= n
            and all(x.status.final for x in r)
            and r
        ),
        60,
        f"final receipts of {request_id}",
    )


def _held(pipe, model: str, record_id: str) -> bool:
    return pipe.store.records.get(model, record_id) is not None


def test_a_backlogged_record_of_an_erased_subject_is_never_learned(pipe, producer) -> None:
    """A record produced before the erasure but consumed after it is suppressed.

    The subject has no record yet when the request arrives (receipt: already_absent);
    their record, produced an hour earlier, arrives afterwards from the backlog, once with
    its event time and once with only the broker's timestamp. Neither is learned, both
    get a tombstone on the compacted records topic; a record of another subject sent
    after them is learned, so the worker did read them.
    """
    model = "supp-backlog"
    _train(pipe, model)
    subject = "late-subject"
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        request_id = client.request(subject_id=subject, reason="GDPR Art. 17")
    receipts = _final(pipe, request_id)
    assert {r.status for r in receipts} == {ReceiptStatus.ALREADY_ABSENT}

    hour_ago = datetime.now(UTC) - timedelta(hours=1)
    _send_record(pipe, producer, model, "old-1", subject, produced=hour_ago)
    _send_record(pipe, producer, model, "old-2", subject, produced=hour_ago, ts=False)
    _send_record(pipe, producer, model, "other-1", "someone-else", produced=datetime.now(UTC))
    pipe.wait_for(lambda: _held(pipe, model, "other-1"), 60, "the later record learned")
    assert not _held(pipe, model, "old-1") and not _held(pipe, model, "old-2")
    assert pipe.store.records.subject_record_ids(model, subject) == set()
    expected = {record_key(model, "old-1"), record_key(model, "old-2")}
    tombstones = read_topic(pipe.bootstrap, pipe.topics.records, 0, timeout=3)
    assert expected <= {t.key for t in tombstones if t.value is None}

    # data the subject gives after the erasure is new data, and is learned
    _send_record(pipe, producer, model, "new-1", subject, produced=datetime.now(UTC))
    pipe.wait_for(lambda: _held(pipe, model, "new-1"), 60, "the subject's new record learned")


def test_an_objection_keeps_the_subject_out_until_it_is_lifted(pipe, producer) -> None:
    """GDPR Art. 21: a request with ``objection`` suppresses later records too, until lifted."""
    model = "supp-objection"
    _train(pipe, model)
    subject = "objector"
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        request_id = client.request(subject_id=subject, objection=True)
    _final(pipe, request_id)
    _send_record(pipe, producer, model, "after-1", subject, produced=datetime.now(UTC))
    _send_record(pipe, producer, model, "marker-1", "bystander", produced=datetime.now(UTC))
    pipe.wait_for(lambda: _held(pipe, model, "marker-1"), 60, "the marker learned")
    assert not _held(pipe, model, "after-1")

    done = pipe.cli("objection", "lift", "--subject", subject)
    assert done.returncode == 0, done.stderr
    time.sleep(0.01)  # the lift's instant is before the next record's
    _send_record(pipe, producer, model, "after-2", subject, produced=datetime.now(UTC))
    pipe.wait_for(lambda: _held(pipe, model, "after-2"), 60, "a record after the lift learned")


def test_valid_requests_survive_hostile_neighbours_in_one_batch(pipe, producer) -> None:
    """Hostile messages are dead-lettered one by one; every valid request is applied."""
    model = "hostile"
    table = _train(pipe, model)
    parts = producer.partitions_for(pipe.topics.deletions)
    valid = [
        DeletionRequested(
            request_id=f"ok-{i}-{uuid.uuid4().hex[:6]}", subject_id=f"p{i}", model_ids=[model]
        )
        for i in range(20)
    ]
    hostile = [
        b"[" * 10_000 + b"]" * 10_000,
        b'{"schema": 1, "request_id": "x", "subject_id": ' + b"9" * 4_400 + b"}",
        encode_event(DeletionRequested(request_id="L" * 256, subject_id="p30", model_ids=[model])),
    ]
    values = [encode_event(v) for v in valid[:10]] + hostile + [encode_event(v) for v in valid[10:]]
    for value in values:  # one partition, so one batch holds them all
        producer.send(pipe.topics.deletions, key=b"k", value=value, partition=parts and min(parts))
    producer.flush()
    for request in valid:
        receipts = _final(pipe, request.request_id)
        assert [r.status for r in receipts] == [ReceiptStatus.APPLIED], receipts
    long_receipts = _final(pipe, "L" * 256)  # the longest id the schema accepts works too
    assert [r.status for r in long_receipts] == [ReceiptStatus.APPLIED]
    letters = read_topic(pipe.bootstrap, pipe.topics.dead_letter, 2, timeout=10)
    reasons = [json.loads(m.value)["reason"] for m in letters]
    assert len(reasons) == 2 and "internal_error" not in reasons, reasons
    assert pipe.store.records.count(model) == len(table.ids) - 2 * 21


def test_an_erasure_retires_every_earlier_version_and_rollback_is_gone(pipe) -> None:
    """Versions that predate an applied erasure, and their checkpoints, are not served."""
    model = "retire"
    _train(pipe, model)
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        request_id = client.request(subject_id="p3", model_ids=[model])
    (receipt,) = _final(pipe, request_id)
    assert receipt.status is ReceiptStatus.APPLIED and receipt.version == 2
    with ModelClient(pipe.services.redis_url, pipe.namespace) as models:
        assert models.get(model).version == 2
        with pytest.raises(UnknownVersion):
            models.get(model, 1)
        assert [m.version for m in models.history(model)] == [2]
    assert pipe.store.checkpoints.load(model, 1) is None


def test_holdout_rows_go_with_their_subject_and_with_named_records(pipe) -> None:
    """A subject whose only rows are in the holdout, and a record id that is, are erased."""
    model = "holdout-erasure"
    table = _table(n=200, prefix="h")  # subjects no other model of the module holds
    train_model(pipe.store, model, table, holdout=0.3, params=PARAMS, seed=1)
    holdout = load_holdout(pipe.store, model)
    trained = set(pipe.store.records.ids(model))
    subject_of = dict(zip(table.ids, table.subjects, strict=True))
    in_training = {subject_of[r] for r in trained}
    only_holdout = sorted({subject_of[r] for r in holdout.ids} - in_training)
    assert only_holdout, "the split left no subject entirely in the holdout"
    subject = only_holdout[0]
    named = next(r for r in holdout.ids if subject_of[r] != subject)
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        by_subject = client.request(subject_id=subject)
        by_record = client.request(record_ids=[named], model_ids=[model])
    for request_id in (by_subject, by_record):
        receipts = _final(pipe, request_id)
        assert [(r.model_id, r.status) for r in receipts] == [(model, ReceiptStatus.APPLIED)]
    after = load_holdout(pipe.store, model)
    assert subject_token(subject) not in after.tokens and named not in after.ids
    assert (
        len(after.ids) == len(holdout.ids) - sum(subject_of[r] == subject for r in holdout.ids) - 1
    )


def test_a_models_last_records_can_be_erased(pipe) -> None:
    """Deleting every record a model holds ends in a defined, empty version, never a dead
    letter: every request gets ``applied``, the model holds nothing and predicts."""
    model = "emptied"
    table = _table(n=8, prefix="e")
    train_model(pipe.store, model, table, holdout=0.0, params=PARAMS)
    subjects = sorted(set(table.subjects))
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        requests = [client.request(subject_id=s, model_ids=[model]) for s in subjects]
    for request_id in requests:
        (receipt,) = _final(pipe, request_id)
        assert receipt.status is ReceiptStatus.APPLIED, receipt
    assert pipe.store.records.count(model) == 0
    with ModelClient(pipe.services.redis_url, pipe.namespace) as models:
        empty = models.get(model)
        assert empty.metadata.n_records == 0
        assert not np.any(empty.coef_)
        assert len(empty.predict(np.zeros((2, D)))) == 2
    letters = read_topic(pipe.bootstrap, pipe.topics.dead_letter, 0, timeout=3)
    assert not [m for m in letters if model.encode() in (m.value or b"")]


def test_a_grace_period_keeps_retired_versions_readable_by_number_only(store_for_grace) -> None:
    """UNLEARN_ERASED_VERSIONS_GRACE_S: the versions an erasure retires expire after the
    grace period instead of at once; ``current`` never points at them."""
    store, applier = store_for_grace
    table = _table(n=20, prefix="g")
    train_model(store, "grace", table, holdout=0.0, params=PARAMS)
    applier.apply("grace", [Forget(DeletionRequested(request_id="g1", subject_id="g1"))])
    assert store.models.current_version("grace") == 2
    assert store.models.get("grace", 1).metadata.version == 1  # readable by number
    ttl = store.client.ttl(store.keys.version("grace", 1))
    assert 0 < ttl <= 60


def test_a_grace_longer_than_the_legal_deadline_is_refused() -> None:
    with pytest.raises(ConfigError, match="UNLEARN_ERASED_VERSIONS_GRACE_S"):
        load_settings(erased_versions_grace_s=31 * 86_400, legal_deadline_days=30)


@pytest.fixture
def store_for_grace(store):
    return store, Applier(store, erased_versions_grace=timedelta(seconds=60))

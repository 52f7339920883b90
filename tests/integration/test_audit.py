"""The audit (pipeline.audit, ``unlearn audit``) against the real redis-server.

Models are trained with ``train_model`` and driven with the worker's logic
(``pipeline.applier.Applier``) directly, so no broker is needed except where the audit reads
the request's event and the tombstones from the topics (the last test). Each tamper test
changes Redis as an attacker or a careless operator would, and checks that the audit fails
on the part that should catch it, and only because of the change.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from kafka import KafkaProducer
from sklearn.datasets import load_digits

from pipeline.applier import Applier
from pipeline.audit import UnknownRequest, audit, latest_report, load_report
from pipeline.errors import UnknownModel
from pipeline.events import DeletionRequested, RecordAdded, encode_event
from pipeline.intake import Message
from pipeline.metrics import Metrics
from pipeline.ops import Forget, Learn
from pipeline.routing import Router
from pipeline.sdk.deletions import partition_for
from pipeline.store import Store
from pipeline.store.codec import encode_array
from pipeline.topics import record_key
from pipeline.training import Table, load_holdout, train_model
from workers.processes import child_env

UNLEARN = str(Path(sys.executable).with_name("unlearn"))

PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}


@pytest.fixture(scope="module")
def digits_table() -> Table:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    X = X / np.linalg.norm(X, axis=1).max()  # rows within the unit ball, as certified
    ids = [f"r{i}" for i in range(len(y))]
    return Table(X=X, y=y, subjects=[f"s{i % 100}" for i in range(len(y))], ids=ids)


@pytest.fixture
def model(store: Store, digits_table: Table) -> str:
    train_model(store, "digits", digits_table, params=PARAMS, holdout=0.2, seed=1)
    return "digits"


def erase(store: Store, model_id: str, request: DeletionRequested):
    """Route and apply one request as the worker does (suppression, receipts, erasure)."""
    applier = Applier(store)
    by_model, _ = Router(applier.store).route([Forget(request)])
    return applier.apply(model_id, by_model[model_id])


def checks(report, part: str) -> dict[str, bool | None]:
    return {f.check: f.ok for f in report.part(part).findings}


def test_an_untampered_model_passes_after_deletions(store: Store, model: str) -> None:
    first = audit(store, model)
    assert first.version == 1 and first.verdict == "pass"
    assert first.part("erasure").verdict == "skipped"  # no request named
    assert first.part("membership").verdict == "skipped"  # no erased features given
    assert first.part("disparity").verdict == "skipped"  # no reference asked for

    request = DeletionRequested(request_id="req-1", subject_id="s7", record_ids=["r10", "r11"])
    out = erase(store, model, request)
    assert out.published is not None and out.published.version == 2
    report = audit(store, model, "req-1", request=request)
    assert report.version == 2
    assert report.verdict == "pass", report.to_json()
    assert all(checks(report, "erasure").values())
    figures = report.part("certificate").figures
    assert figures["residual"] <= figures["recorded_certificate"] + figures["roundoff_allowance"]
    assert figures["recorded_certificate"] <= figures["budget"]
    # stored with the version, and read back the same
    stored = load_report(store, model, 2)
    assert stored is not None and stored.to_dict() == report.to_dict()
    assert latest_report(store, model) == stored
    assert load_report(store, model, 1) is None  # retired with its version


def test_the_membership_part_compares_with_a_model_refitted_from_the_store(
    store: Store, model: str, digits_table: Table
) -> None:
    """Tests know the erased features (the pipeline does not keep them): the attack on the
    erased records does no better against the published model than against a refit."""
    gone = sorted(store.records.subject_record_ids(model, "s7"))
    rows = [digits_table.ids.index(r) for r in gone]
    request = DeletionRequested(request_id="req-m", subject_id="s7")
    erase(store, model, request)
    erased = (digits_table.X[rows], digits_table.y[rows])
    report = audit(store, model, "req-m", request=request, erased=erased)
    part = report.part("membership")
    assert part.verdict == "pass", part.to_dict()
    assert part.figures["n_erased"] == len(gone) and part.figures["n_unseen"] == 120  # holdout
    assert abs(part.figures["gap"]) <= 0.02
    # LiRA's shadows are drawn from the held records, its targets are every erased and
    # never-seen record here (fewer than max_targets)
    assert {f.check: f.ok for f in part.findings} == {"loss_threshold": True, "lira": True}
    assert part.figures["lira_targets"] == [len(gone), 120]
    assert abs(part.figures["lira_gap"]) <= 0.02
    # the erased records also give the disparity part its AccDis
    disparity = report.part("disparity")
    assert disparity.verdict == "pass", disparity.to_dict()
    assert disparity.figures["n_erased"] == len(gone) and disparity.figures["acc_dis"] <= 0.02


def test_the_disparity_part_compares_with_a_reference_refitted_from_the_store(
    store: Store, model: str
) -> None:
    """``reference=True`` (``unlearn audit --reference``): per-class holdout accuracy of
    the published version against a refit; a class whose coefficients were damaged after
    publication is named (and integrity fails too)."""
    erase(store, model, DeletionRequested(request_id="req-d", subject_id="s4"))
    report = audit(store, model, reference=True)
    part = report.part("disparity")
    assert part.verdict == "pass", part.to_dict()
    assert part.figures["acc_err"] <= 0.02 and len(part.figures["classes"]) == 10
    assert checks(report, "disparity")["acc_dis"] is None  # the erased features are gone

    key = store.keys.version(model, 2)
    meta = json.loads(store.client.hget(key, "meta"))
    intercept = np.frombuffer(store.client.hget(key, "intercept"), dtype="<f8").copy()
    assert len(intercept) == meta["coef_spec"]["shape"][0] == 10
    intercept[6] -= 50.0  # class 6 is never predicted again
    store.client.hset(key, "intercept", encode_array(intercept)[0])
    report = audit(store, model, reference=True)
    assert checks(report, "disparity")["class_accuracy"] is False
    assert "'6'" in report.part("disparity").failures[-1].detail
    assert checks(report, "integrity")["coefficients"] is False


def test_erased_features_written_back_fail_the_erasure_audit(
    store: Store, model: str, digits_table: Table
) -> None:
    request = DeletionRequested(request_id="req-2", subject_id="s7")
    erase(store, model, request)
    assert audit(store, model, "req-2", request=request).verdict == "pass"

    # the features of one erased record come back, under its old key only
    row = digits_table.ids.index("r7")
    store.client.hset(
        store.keys.record(model, "r7"),
        mapping={
            "features": digits_table.X[row].astype("<f8").tobytes(),
            "label": json.dumps(int(digits_table.y[row])).encode(),
            "subject": b"s7",
        },
    )
    report = audit(store, model, "req-2", request=request)
    assert report.verdict == "fail"
    assert checks(report, "erasure")["absent"] is False
    assert checks(report, "integrity")["no_orphan_features"] is False
    assert "'r7'" in report.part("integrity").failures[0].detail

    # ... and back in the record set and the subject index too: the counts disagree
    store.client.sadd(store.keys.records(model), "r7")
    store.client.sadd(store.keys.subject_records(model, "s7"), "r7")
    report = audit(store, model, "req-2", request=request)
    integrity = checks(report, "integrity")
    assert integrity["n_records"] is False and integrity["checkpoint_records"] is False
    assert checks(report, "erasure")["absent"] is False


def test_coefficients_changed_after_publication_fail_integrity_and_certificate(
    store: Store, model: str
) -> None:
    erase(store, model, DeletionRequested(request_id="req-3", subject_id="s3"))
    key = store.keys.version(model, 2)
    meta = json.loads(store.client.hget(key, "meta"))
    coef = np.frombuffer(store.client.hget(key, "coef"), dtype="<f8").reshape(
        meta["coef_spec"]["shape"]
    )
    tampered = coef.copy()
    tampered[4, 20] += 0.05  # one weight of one class, nudged
    store.client.hset(key, "coef", encode_array(tampered)[0])
    report = audit(store, model)
    assert report.verdict == "fail"
    assert checks(report, "integrity")["coefficients"] is False
    assert checks(report, "certificate")["upper_bound"] is False
    certificate = report.part("certificate").figures
    assert certificate["residual"] > certificate["recorded_certificate"]

    # the checkpoint changed to match: integrity can no longer tell, the certificate can
    ckpt = store.keys.checkpoint(model, 2)
    manifest = json.loads(store.client.hget(ckpt, "__manifest__"))
    W = np.frombuffer(store.client.hget(ckpt, "a:W"), dtype="<f8").reshape(
        manifest["arrays"]["W"]["shape"]
    )
    W = W.copy()
    W[4, 20] += 0.05
    store.client.hset(ckpt, "a:W", encode_array(W)[0])
    report = audit(store, model)
    assert checks(report, "integrity")["coefficients"] is True
    assert checks(report, "certificate")["upper_bound"] is False
    assert report.verdict == "fail"


def test_a_restored_version_fails_the_erasure_audit(store: Store, model: str) -> None:
    """A version older than the erasure, brought back from a backup, is caught."""
    backup = store.client.dump(store.keys.version(model, 1))
    request = DeletionRequested(request_id="req-4", record_ids=["r20"])
    out = erase(store, model, request)
    assert out.published is not None and out.published.version == 2
    assert audit(store, model, "req-4", request=request).verdict == "pass"
    store.client.restore(store.keys.version(model, 1), 0, backup)
    report = audit(store, model, "req-4", request=request)
    assert checks(report, "erasure")["earlier_versions_retired"] is False
    assert "[1]" in report.part("erasure").failures[0].detail


def test_an_erasure_of_holdout_rows_only_keeps_earlier_versions_and_passes(
    store: Store, model: str
) -> None:
    """Nothing the model learned went, so nothing was retired: not a failure."""
    holdout = load_holdout(store, model)
    assert holdout is not None
    named = holdout.ids[0]
    request = DeletionRequested(request_id="req-5", record_ids=[named])
    out = erase(store, model, request)
    assert out.published is not None and out.published.version == 2
    assert store.models.metadata(model, 1).version == 1  # still readable
    report = audit(store, model, "req-5", request=request)
    assert report.verdict == "pass", report.to_json()
    retired = next(f for f in report.part("erasure").findings if f.check.startswith("earlier"))
    assert retired.ok and "erased no training record" in retired.detail


def test_a_ridge_model_passes_after_deletions(store: Store, digits_table: Table) -> None:
    table = Table(
        digits_table.X, digits_table.y.astype(float), digits_table.subjects, digits_table.ids
    )
    train_model(store, "ridge", table, kind="ridge", holdout=0.2, seed=1, params={"alpha": 1.0})
    request = DeletionRequested(request_id="req-6", subject_id="s5")
    erase(store, "ridge", request)
    report = audit(store, "ridge", "req-6", request=request)
    assert report.verdict == "pass", report.to_json()
    assert checks(report, "certificate")["within_budget"] is None  # sigma 0: exact, no budget


def test_unknown_model_and_request_raise_errors_that_name_them(store: Store, model: str) -> None:
    with pytest.raises(UnknownModel, match="'nope'"):
        audit(store, "nope")
    with pytest.raises(UnknownRequest, match="'req-never'"):
        audit(store, model, "req-never")


def test_the_metrics_show_the_last_stored_audit(store: Store, model: str) -> None:
    audit(store, model)
    metrics = Metrics()
    metrics.refresh_models(store)
    value = metrics.registry.get_sample_value
    assert value("unlearn_audit_verdict", {"model": model, "part": "overall"}) == 1.0
    assert value("unlearn_audit_verdict", {"model": model, "part": "erasure"}) == -1.0
    assert value("unlearn_audit_version", {"model": model}) == 1.0
    assert value("unlearn_audit_gap", {"model": model, "measure": "acc_err"}) is None

    audit(store, model, reference=True)  # the disparity figures join the gauges
    metrics.refresh_models(store)
    assert value("unlearn_audit_verdict", {"model": model, "part": "disparity"}) == 1.0
    assert value("unlearn_audit_gap", {"model": model, "measure": "acc_err"}) == 0.0
    assert value("unlearn_audit_gap", {"model": model, "measure": "worst_class_gap"}) == 0.0


def test_the_cli_prints_the_report_and_exits_1_on_a_failed_audit(
    services, store: Store, model: str, test_id: str
) -> None:
    env = child_env(
        redis_url=services.redis_url,
        kafka_bootstrap=services.kafka_bootstrap,
        key_namespace=test_id,
    )

    def run(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [UNLEARN, "audit", *args], env=env, capture_output=True, text=True, timeout=120
        )

    request = DeletionRequested(request_id="req-cli", subject_id="s9")
    erase(store, model, request)
    done = run(model, "--request", "req-cli", "--no-broker", "--json")
    assert done.returncode == 0, done.stderr
    report = json.loads(done.stdout)
    assert report["verdict"] == "pass" and report["version"] == 2
    shown = run(model)
    assert shown.returncode == 0 and "certificate" in shown.stdout and "pass" in shown.stdout
    compared = run(model, "--reference", "--json")
    assert compared.returncode == 0, compared.stderr
    parts = {p["part"]: p for p in json.loads(compared.stdout)["parts"]}
    assert parts["disparity"]["verdict"] == "pass" and "acc_err" in parts["disparity"]["figures"]

    store.client.hset(store.keys.version(model, 2), "intercept", encode_array(np.zeros(10))[0])
    failed = run(model)
    assert failed.returncode == 1 and "fail" in failed.stdout

    missing = run("no-such-model")
    assert missing.returncode == 2
    assert missing.stderr.strip().count("\n") == 0 and "Traceback" not in missing.stderr
    assert "'no-such-model'" in missing.stderr


def _record(model: str, record_id: str, subject: str, x, label) -> RecordAdded:
    return RecordAdded(
        event_id=f"ev-{record_id}",
        model_id=model,
        record_id=record_id,
        subject_id=subject,
        features=[float(v) for v in x],
        label=label,
    )


def test_the_audit_reads_the_request_and_the_tombstones_from_the_broker(
    services, store: Store, model: str, topics, digits_table: Table
) -> None:
    """With the broker, the request's ids come from ``unlearn.deletions`` and each erased
    record's last message on ``unlearn.records`` must be a tombstone."""
    producer = KafkaProducer(bootstrap_servers=services.kafka_bootstrap, acks="all")
    parts = sorted(producer.partitions_for(topics.records))
    part = partition_for(model, parts)
    try:
        # two records of subject "eve" reach the model through the records topic
        events = [
            _record(model, f"eve-{i}", "eve", digits_table.X[i], int(digits_table.y[i]))
            for i in range(2)
        ]
        applier = Applier(store)
        learn = []
        for ev in events:
            key = record_key(model, ev.record_id)
            producer.send(topics.records, key=key, value=encode_event(ev), partition=part)
            learn.append(Learn(ev, Message(topics.records, part, 0, key, encode_event(ev))))
        producer.flush()
        applier.apply(model, learn)
        assert {"eve-0", "eve-1"} <= store.records.ids(model)

        request = DeletionRequested(request_id="req-eve", subject_id="eve")
        producer.send(topics.deletions, key=b"eve", value=encode_event(request))
        producer.flush()
        out = erase(store, model, request)
        assert sorted(out.tombstones) == ["eve-0", "eve-1"]

        def broker_audit():
            return audit(
                store, model, "req-eve", bootstrap=services.kafka_bootstrap,
                topic_prefix=topics.prefix,
            )  # fmt: skip

        # the worker died before sending the tombstones: the features are still on the topic
        report = broker_audit()
        erasure = checks(report, "erasure")
        assert report.part("erasure").figures["request_event_found"] is True
        assert erasure["absent"] is True and erasure["tombstoned"] is False
        assert "awaiting the worker's next batch" in report.part("erasure").failures[0].detail

        for rid in out.tombstones:  # as the worker sends them
            producer.send(topics.records, key=record_key(model, rid), value=None, partition=part)
        producer.flush()
        assert broker_audit().verdict == "pass"

        # the subject comes back with new data, after the request: learned, and accepted
        late = _record(model, "eve-2", "eve", digits_table.X[5], int(digits_table.y[5]))
        key = record_key(model, late.record_id)
        producer.send(topics.records, key=key, value=encode_event(late), partition=part)
        producer.flush()
        applier.apply(model, [Learn(late, Message(topics.records, part, 0, key, b"{}"))])
        assert "eve-2" in store.records.ids(model)
        report = broker_audit()
        assert report.verdict == "pass", report.to_json()
        assert "produced after the request" in next(
            f.detail for f in report.part("erasure").findings if f.check == "absent"
        )
        # without the broker the audit cannot date it: it fails, and says why
        blind = audit(store, model, "req-eve", request=request)
        assert checks(blind, "erasure")["absent"] is False
        assert "audit with the broker" in blind.part("erasure").failures[0].detail
    finally:
        producer.close()

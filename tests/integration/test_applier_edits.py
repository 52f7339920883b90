"""Feature removals and relabels through the model writer (pipeline.applier, plan, held,
merge) on a real redis-server, no broker: the state a restarted worker, the retrainer and
the audit read back from Redis after them.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipeline import LogisticUnlearner
from pipeline.applier import Applier
from pipeline.audit import audit
from pipeline.events import (
    DeletionRequested,
    FeatureRemovalRequested,
    ReceiptStatus,
    RecordAdded,
    RelabelRequested,
)
from pipeline.intake import Message
from pipeline.ops import Forget, ForgetFeatures, Learn, Relabel
from pipeline.retraining import HandBack, Retraining, refit
from pipeline.routing import Router
from pipeline.store import Store
from pipeline.store.models import UnknownVersion
from pipeline.training import Table, load_holdout, train_model

PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}


@pytest.fixture
def model(store: Store) -> str:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    ids = [f"r{i}" for i in range(len(y))]
    table = Table(X=X, y=y, subjects=[f"s{i % 100}" for i in range(len(y))], ids=ids)
    train_model(store, "digits", table, params=PARAMS, holdout=0.2, seed=1)
    return "digits"


def drop(request_id: str, *columns) -> ForgetFeatures:
    event = FeatureRemovalRequested(request_id=request_id, model_id="digits", columns=columns)
    return ForgetFeatures(event, Message("deletions", 0, 1, b"digits", b"{}"))


def relabel(request_id: str, labels: dict) -> Relabel:
    items = [{"record_id": r, "label": label} for r, label in labels.items()]
    event = RelabelRequested(request_id=request_id, model_id="digits", labels=items)
    return Relabel(event, Message("deletions", 0, 2, b"digits", b"{}"))


def exact(store: Store, model_id: str, forgotten: tuple[int, ...]) -> LogisticUnlearner:
    recs = list(store.records.scan(model_id))
    return LogisticUnlearner(**PARAMS, forgotten_features=forgotten).fit(
        np.stack([r.features for r in recs]),
        np.array([r.label for r in recs]),
        ids=[r.record_id for r in recs],
    )


def test_what_a_restarted_worker_and_the_audit_read_back(store: Store, model: str) -> None:
    held = sorted(store.records.ids(model))
    fix = {rid: (store.records.get(model, rid).label + 1) % 10 for rid in held[:20]}
    ops = [drop("cols", 5, 9), relabel("labels", fix)]
    by_model, routed = Router(store).route(ops)
    assert list(by_model) == [model] and not routed.receipts
    applier = Applier(store)
    out = applier.apply(model, by_model[model])
    cols, labels = out.receipts
    assert cols.status is ReceiptStatus.APPLIED and cols.columns == [5, 9]
    assert labels.status is ReceiptStatus.APPLIED and labels.relabelled == list(fix)
    # every held record goes back on the records topic: without the columns' values, and
    # the relabelled ones with their corrected label
    assert sorted(ev.record_id for ev in out.republish) == held
    assert all(ev.label == fix[ev.record_id] for ev in out.republish if ev.record_id in fix)
    assert all(ev.features[5] == ev.features[9] == 0 for ev in out.republish)
    holdout = load_holdout(store, model)
    assert holdout is not None and not holdout.X[:, [5, 9]].any()

    # a replay before the broker took the corrected records (a crash) sends them again,
    # as Redis holds them, under the event ids marked applied; nothing else changes
    again = applier.apply(model, by_model[model])
    assert again.published is None and again.receipts == [cols, labels]
    assert {
        (ev.event_id, ev.record_id, ev.label, tuple(ev.features)) for ev in again.republish
    } == {(ev.event_id, ev.record_id, ev.label, tuple(ev.features)) for ev in out.republish}
    # once the broker has them, a replay sends nothing
    store.records.corrections_delivered(model, [ev.record_id for ev in out.republish])
    again = applier.apply(model, by_model[model])
    assert again.published is None and again.receipts == [cols, labels] and not again.republish

    # a restarted worker loads the same model from Redis and goes on from it
    fresh = Applier(store)
    out = fresh.apply(model, [Forget(DeletionRequested(request_id="d", record_ids=[held[30]]))])
    assert out.receipts[0].status is ReceiptStatus.APPLIED
    published = store.models.get(model)
    assert np.all(published.coef[:, [5, 9]] == 0)
    rel = np.linalg.norm(published.coef - exact(store, model, (5, 9)).coef_)
    assert rel / np.linalg.norm(published.coef) < 1e-3

    # the audit recomputes the certificate and the integrity from what is stored
    report = audit(store, model, lira=False, save=False)
    assert report.part("integrity").verdict == "pass", report.part("integrity")
    assert report.part("certificate").verdict == "pass", report.part("certificate")
    [finding] = [f for f in report.part("integrity").findings if f.check == "forgotten_features"]
    assert finding.ok and "forgotten columns 5, 9" in finding.detail

    # a forgotten column's value written back into Redis is found
    rec = store.records.get(model, held[50])
    x = rec.features.copy()
    x[9] = 0.75
    store.client.hset(store.keys.record(model, held[50]), "features", x.astype("<f8").tobytes())
    report = audit(store, model, lira=False, save=False)
    [finding] = [f for f in report.part("integrity").findings if f.check == "forgotten_features"]
    assert finding.ok is False and held[50] in finding.detail


def test_a_relabel_of_a_record_deleted_earlier_is_rejected_alone(store: Store, model: str) -> None:
    held = sorted(store.records.ids(model))
    before = store.records.get(model, held[1]).label
    ops = [
        Forget(DeletionRequested(request_id="d", record_ids=[held[0]])),
        relabel("bad", {held[0]: 1, held[1]: 2}),
        relabel("good", {held[2]: 3}),
        drop("out", 64),
    ]
    by_model, _ = Router(store).route(ops)
    out = Applier(store).apply(model, by_model[model])
    by_id = {r.request_id: r for r in out.receipts}
    assert by_id["d"].status is ReceiptStatus.APPLIED
    assert by_id["bad"].status is ReceiptStatus.REJECTED and "forgotten" in by_id["bad"].reason
    assert by_id["out"].status is ReceiptStatus.REJECTED and "out of range" in by_id["out"].reason
    assert by_id["good"].status is ReceiptStatus.APPLIED
    assert store.records.get(model, held[1]).label == before  # the bad request changed nothing
    assert store.records.get(model, held[2]).label == 3


def test_a_refit_handed_back_after_the_changes_is_merged_with_them(
    store: Store, model: str
) -> None:
    retraining = Retraining(store, min_interval=0)
    applier = Applier(store, retraining=retraining)
    assert retraining.try_start(model, "operator", "rt-1") is None
    snapshot = retraining.snapshot(model)  # taken before the changes
    applier.apply(model, [drop("warm", 0)])  # the writer learns a retrain is in flight

    held = sorted(store.records.ids(model))
    fix = {rid: (store.records.get(model, rid).label + 3) % 10 for rid in held[:30]}
    applier.apply(model, [drop("cols", 12, 33), relabel("labels", fix)])
    applier.apply(model, [Forget(DeletionRequested(request_id="d", record_ids=held[40:45]))])

    from pipeline.retraining import engine_from_state

    engine = engine_from_state(snapshot.state, snapshot.records)
    seconds = refit(engine)
    handed = HandBack(
        model_id=model,
        snapshot_version=snapshot.version,
        snapshot_seq=snapshot.seq,
        reason="operator",
        request_id="rt-1",
        duration_s=seconds,
        state=engine.state_dict(),
    )
    assert retraining.hand_back(handed)
    out = applier.merge_retrain(model)
    assert out is not None and out.completed is not None  # merged, not discarded
    published = store.models.get(model)
    assert published.metadata.method == "retrain"
    assert np.all(published.coef[:, [0, 12, 33]] == 0)
    reference = exact(store, model, (0, 12, 33))
    rel = np.linalg.norm(published.coef - reference.coef_) / np.linalg.norm(reference.coef_)
    assert rel < 1e-3


@pytest.mark.parametrize("operation", ["feature_removal", "relabel"])
def test_an_edit_retires_every_earlier_version(store: Store, model: str, operation: str) -> None:
    """Versions that used a forgotten column or learned a corrected (poisoned) label are not
    served after the edit, by alias or by number, as an erasure retires its versions."""
    held = sorted(store.records.ids(model))
    if operation == "feature_removal":
        op = drop("retire-cols", 5)
    else:
        op = relabel("retire-labels", {held[0]: (store.records.get(model, held[0]).label + 1) % 10})
    by_model, _ = Router(store).route([op])
    out = Applier(store).apply(model, by_model[model])
    assert out.receipts[0].status is ReceiptStatus.APPLIED and out.receipts[0].version == 2
    with pytest.raises(UnknownVersion):
        store.models.get(model, 1)
    assert [m.version for m in store.models.history(model)] == [2]
    assert store.checkpoints.load(model, 1) is None


def test_a_record_learned_after_a_removal_goes_back_on_the_topic_without_the_columns(
    store: Store, model: str
) -> None:
    """The application may go on sending a forgotten column: the record is learned and
    stored without it, and sent back zeroed so the records topic does not keep the value."""
    by_model, _ = Router(store).route([drop("cols-later", 5, 9)])
    applier = Applier(store)
    applier.apply(model, by_model[model])
    store.records.corrections_delivered(model, store.records.unsent_corrections(model))

    def learn(record_id: str, features: np.ndarray) -> Learn:
        event = RecordAdded(
            event_id=f"e-{record_id}", model_id=model, record_id=record_id,
            subject_id="late", features=features.tolist(), label=3,
        )  # fmt: skip
        return Learn(event, Message("records", 0, 9, f"{model}/{record_id}".encode(), b"{}"))

    with_values = np.linspace(0.1, 1.0, 64)
    without = with_values.copy()
    without[[5, 9]] = 0.0
    out = applier.apply(model, [learn("late-1", with_values), learn("late-2", without)])
    assert out.published is not None
    [sent] = out.republish  # only the record that carried the columns' values
    assert sent.record_id == "late-1" and sent.features[5] == sent.features[9] == 0.0
    assert np.allclose(np.delete(sent.features, [5, 9]), np.delete(with_values, [5, 9]))
    stored = store.records.get(model, "late-1")
    assert stored is not None and not stored.features[[5, 9]].any()
    applied = store.client.zscore(store.keys.applied_events(model), sent.event_id)
    assert applied is not None  # reading it back learns nothing
    assert store.records.unsent_corrections(model) == {"late-1": sent.event_id}

"""The model writer (pipeline.applier, with plan, held and merge) on a real redis-server, no broker.

Events are built as the agents build them; what is checked is what Redis holds after each
batch and what the worker would publish.
"""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.datasets import load_digits

from pipeline import LogisticUnlearner
from pipeline.applier import Applier
from pipeline.events import (
    DeletionRequested,
    FeatureRemovalRequested,
    ReceiptStatus,
    RecordAdded,
)
from pipeline.intake import Message
from pipeline.ops import Forget, ForgetFeatures, Learn
from pipeline.policy import RetrainPolicy
from pipeline.retraining import HandBack, Retraining, refit
from pipeline.routing import Router
from pipeline.store import Store
from pipeline.training import Table, train_model
from pipeline.unlearning.base import decode_ids

PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}


@pytest.fixture(scope="module")
def digits_table() -> Table:
    X, y = load_digits(return_X_y=True)
    X, y = X[:600] / 16.0, y[:600]
    ids = [f"r{i}" for i in range(len(y))]
    return Table(X=X, y=y, subjects=[f"s{i % 100}" for i in range(len(y))], ids=ids)


@pytest.fixture
def model(store: Store, digits_table: Table) -> str:
    train_model(store, "digits", digits_table, params=PARAMS, holdout=0.2, seed=1)
    return "digits"


def forget(request_id: str, **fields) -> Forget:
    return Forget(DeletionRequested(request_id=request_id, **fields))


def learn(event_id: str, record_id: str, subject: str, x, label, model="digits") -> Learn:
    ev = RecordAdded(
        event_id=event_id,
        model_id=model,
        record_id=record_id,
        subject_id=subject,
        features=[float(v) for v in x],
        label=label,
    )
    return Learn(ev, Message("records", 0, 0, record_id.encode(), b"{}"))


def held_ids(store: Store, model_id: str) -> set[str]:
    return store.records.ids(model_id)


def refit_on(store: Store, model_id: str) -> LogisticUnlearner:
    recs = list(store.records.scan(model_id))
    return LogisticUnlearner(**PARAMS).fit(
        np.stack([r.features for r in recs]),
        np.array([r.label for r in recs]),
        ids=[r.record_id for r in recs],
    )


def test_deleting_a_subject_erases_it_with_one_receipt(store: Store, model: str) -> None:
    applier = Applier(store)
    subject_ids = store.records.subject_record_ids(model, "s7")
    assert subject_ids
    by_model, routed = Router(applier.store).route([forget("req-1", subject_id="s7")])
    assert list(by_model) == [model] and not routed.receipts
    out = applier.apply(model, by_model[model])

    assert out.published is not None and out.published.version == 2
    [receipt] = out.receipts
    assert receipt.status is ReceiptStatus.APPLIED and receipt.version == 2
    assert receipt.n_records == len(subject_ids)
    assert sorted(out.tombstones) == sorted(subject_ids)
    assert not (held_ids(store, model) & subject_ids)
    assert all(store.records.get(model, rid) is None for rid in subject_ids)
    assert store.records.models_for_subject("s7") == set()

    # agrees with an exact refit on what is left (tolerance: 1e-3 relative)
    exact = refit_on(store, model)
    published = store.models.get(model)
    rel = np.linalg.norm(published.coef - exact.coef_) / np.linalg.norm(exact.coef_)
    assert rel < 1e-3

    # a replay changes nothing and writes no second receipt: it announces the same one
    again = applier.apply(model, by_model[model])
    assert again.published is None and again.receipts == [receipt] and again.skipped == 1
    assert store.models.current_version(model) == 2
    assert store.receipts.get("req-1") == [receipt]
    # a restarted worker (a new applier) replays the same way
    fresh = Applier(store).apply(model, by_model[model])
    assert fresh.published is None and fresh.receipts == [receipt]


def test_unknown_subject_gets_already_absent_receipts(store: Store, model: str) -> None:
    applier = Applier(store)
    by_model, routed = Router(applier.store).route([forget("req-x", subject_id="nobody")])
    assert by_model == {}
    [receipt] = routed.receipts
    assert receipt.status is ReceiptStatus.ALREADY_ABSENT and receipt.version == 1
    _, again = Router(applier.store).route([forget("req-x", subject_id="nobody")])
    # a replay writes nothing new and announces the same receipt again (at least once)
    assert [r.event_id for r in again.receipts] == [receipt.event_id] and again.skipped == 1

    by_model, routed = Router(applier.store).route(
        [forget("req-y", subject_id="s1", model_ids=["nope"])]
    )
    assert by_model == {} and routed.receipts[0].status is ReceiptStatus.REJECTED
    assert routed.rejected == []  # no message attached: nothing to dead-letter


def test_records_are_learned_replaced_and_replays_skipped(store: Store, model: str) -> None:
    applier = Applier(store)
    x = np.linspace(0, 1, 64)
    ops = [
        learn("e1", "new-1", "alice", x, 3),
        learn("e2", "r0", "s0", x[::-1], 4),  # replaces r0 (a training record)
        learn("e3", "new-2", "bob", x, 5),
    ]
    out = applier.apply(model, ops)
    assert out.published is not None and out.published.version == 2
    held = held_ids(store, model)
    assert {"new-1", "new-2", "r0"} <= held
    r0 = store.records.get(model, "r0")
    assert r0 is not None and r0.label == 4 and np.allclose(r0.features, x[::-1])
    assert out.tombstones == []  # a replacement keeps its key: no tombstone
    n = out.published.n_records

    again = applier.apply(model, ops)
    assert again.published is None and again.skipped == 3
    assert store.models.metadata(model).n_records == n

    # learned and deleted in the same batch: never stored, tombstoned, counted
    batch = [learn("e4", "new-3", "carol", x, 1), forget("req-c", subject_id="carol")]
    out = applier.apply(model, batch)
    assert "new-3" not in held_ids(store, model) and out.tombstones == ["new-3"]
    assert out.receipts[0].n_records == 1 and out.receipts[0].status is ReceiptStatus.APPLIED
    # and its replay does not bring the record back
    applier.apply(model, [learn("e4", "new-3", "carol", x, 1)])
    assert "new-3" not in held_ids(store, model)


def test_bad_records_are_rejected_with_reasons(store: Store, model: str) -> None:
    applier = Applier(store)
    out = applier.apply(
        model,
        [
            learn("b1", "bad-1", "z", np.zeros(10), 1),
            learn("b2", "bad-2", "z", np.zeros(64), 42),
            learn("b3", "good", "z", np.zeros(64), 2),
        ],
    )
    assert [r.reason for r in out.rejected] == ["feature_count", "unknown_class"]
    assert "expects 64" in out.rejected[0].error
    assert "good" in held_ids(store, model)
    unknown = applier.apply(
        "missing-model", [learn("b4", "x", "z", np.zeros(64), 1, "missing-model")]
    )
    assert [r.reason for r in unknown.rejected] == ["unknown_model"]


def test_retrain_merge_forgets_what_was_deleted_after_the_snapshot(
    store: Store, model: str
) -> None:
    applier = Applier(store)
    retraining = Retraining(store, min_interval=0)
    assert retraining.try_start(model, "operator", "rq-1") is None
    assert retraining.try_start(model, "budget", "rq-2") == "in_flight"  # coalesced

    snap = retraining.snapshot(model)
    # deletions and additions arrive while the retrainer fits
    applier.apply(model, [forget("d1", subject_id="s3"), forget("d2", record_ids=["r10"])])
    x = np.full(64, 0.25)
    applier.apply(model, [learn("n1", "late-1", "dave", x, 6), forget("d3", subject_id="s4")])
    gone = {"r10"} | {f"r{i}" for i in range(600) if i % 100 in (3, 4)}

    from pipeline.retraining import engine_from_state

    engine = engine_from_state(snap.state, snap.records)
    seconds = refit(engine)
    handed = HandBack(
        model, snap.version, snap.seq, "operator", "rq-1", seconds, engine.state_dict()
    )
    # a stale retrain (its claim expired and was taken by another) may not hand back
    stale = HandBack(model, snap.version, snap.seq, "budget", "rq-old", seconds, {})
    assert not retraining.hand_back(stale)
    assert retraining.hand_back(handed)
    [out] = applier.poll_retrains()
    assert out.published is not None and out.published.method == "retrain"
    assert out.completed is not None and out.completed.snapshot_seq == snap.seq

    ckpt = store.checkpoints.load(model)
    assert ckpt is not None and ckpt.version == out.published.version
    in_model = set(decode_ids(ckpt.state["record_ids_json"]))
    assert not (in_model & gone)
    assert "late-1" in in_model and in_model == held_ids(store, model)
    assert retraining.in_flight(model) is None

    exact = refit_on(store, model)
    published = store.models.get(model)
    rel = np.linalg.norm(published.coef - exact.coef_) / np.linalg.norm(exact.coef_)
    assert rel < 1e-3


def test_a_batch_that_overshoots_the_budget_is_refitted_before_publishing(
    store: Store, model: str, caplog: pytest.LogCaptureFixture
) -> None:
    rng = np.random.default_rng(0)
    noise = [learn(f"n{i}", f"noise-{i}", "n", rng.random(64) * 8, i % 10) for i in range(40)]
    with caplog.at_level("WARNING", logger="pipeline.held"):
        out = Applier(store).apply(model, noise)
    assert "over the budget" in caplog.text  # the update alone overshot
    pub = out.published
    assert pub is not None and pub.certificate is not None and pub.budget is not None
    assert pub.certificate <= pub.budget
    assert [r.method for r in out.reports][-1] == "retrain"
    # the published model is the exact optimum on the held records (same objective and b)
    exact = refit_on(store, model)
    published = store.models.get(model)
    assert np.linalg.norm(published.coef - exact.coef_) <= 1e-3 * np.linalg.norm(exact.coef_)


def test_tombstones_survive_a_crash_between_the_commit_and_the_broker(
    store: Store, model: str
) -> None:
    """The erased ids wait in Redis until the worker says the broker took their tombstones.

    A worker that dies after the Redis commit and before the broker's ack replays the batch;
    the requests are final by then, yet the replay must still tombstone the records.
    """
    applier = Applier(store)
    doomed = sorted(store.records.subject_record_ids(model, "s7"))
    first = applier.apply(model, [forget("req-s7", subject_id="s7")])
    assert sorted(first.tombstones) == doomed
    # the worker died here: nothing was delivered; a new worker replays the batch
    again = Applier(store).apply(model, [forget("req-s7", subject_id="s7")])
    assert again.skipped == 1 and sorted(again.tombstones) == doomed
    store.records.tombstones_delivered(model, again.tombstones)
    last = Applier(store).apply(model, [forget("req-s7", subject_id="s7")])
    assert last.tombstones == []


def test_a_refused_record_is_tombstoned_unless_the_model_holds_its_id(
    store: Store, model: str, digits_table: Table
) -> None:
    """A record that will never be learned leaves the compacted topic; a held id stays."""
    held = sorted(store.records.ids(model))[0]
    x = digits_table.X[0]
    out = Applier(
        store
    ).apply(
        model,
        [
            learn("e-bad", "never", "s1", x[:10], 1),  # wrong feature count
            learn("e-class", "odd", "s1", x, 99),  # unknown class
            learn("e-held", held, "s1", x[:10], 1),  # refused, but the old record stays
        ],
    )
    assert sorted(out.tombstones) == ["never", "odd"]
    assert {r.reason for r in out.rejected} == {"feature_count", "unknown_class"}
    gone = Applier(store).apply(
        "no-such-model", [learn("e-x", "lost", "s1", x, 1, "no-such-model")]
    )
    assert gone.tombstones == ["lost"]


def test_a_routed_request_is_received_and_pending_before_it_is_applied(
    store: Store, model: str
) -> None:
    """A request that reaches the worker is on record at once: lost later, it stays
    visible to the overdue-deletion alert instead of vanishing."""
    applier = Applier(store)
    by_model, _ = Router(applier.store).route([forget("req-seen", subject_id="s3")])
    assert list(by_model) == [model]
    receipt = store.receipts.get_one("req-seen", model)
    assert receipt is not None and receipt.status is ReceiptStatus.RECEIVED
    assert [rid for rid, _ in store.receipts.pending(model)] == ["req-seen"]
    out = applier.apply(model, by_model[model])  # then applied: final, no longer pending
    assert [r.status for r in out.receipts] == [ReceiptStatus.APPLIED]
    assert store.receipts.pending(model) == []


def test_a_replayed_request_keeps_the_receipts_it_had(store: Store, model: str) -> None:
    """Replayed after its data was erased, a request is not newly `already_absent` in
    every other model: it keeps exactly one receipt per model it concerned."""
    train_model(
        store,
        "other",
        Table(
            X=np.eye(3), y=np.array([0, 1, 0]), subjects=["o1", "o2", "o3"], ids=["x1", "x2", "x3"]
        ),
        params={"lam": 1e-2, "sigma": 0.0},
        holdout=0.0,
    )
    router, applier = Router(store), Applier(store)
    by_model, _ = router.route([forget("req-once", subject_id="s5")])
    assert list(by_model) == [model]
    applier.apply(model, by_model[model])
    by_model, again = router.route([forget("req-once", subject_id="s5")])  # the replay
    assert by_model == {} and again.skipped == 1
    assert [r.model_id for r in again.receipts] == [model]  # announced again, not widened
    assert [r.model_id for r in store.receipts.get("req-once")] == [model]


def test_the_bias_watch_fires_when_one_class_is_forgotten_away(
    store: Store, digits_table: Table
) -> None:
    """Per-class holdout accuracy is published with each version; erasing most of one
    class's records makes that class fail while the others hold: a class_accuracy retrain."""
    train_model(store, "bias", digits_table, params=PARAMS, holdout=0.3, seed=4)
    first = store.models.metadata("bias").holdout_metrics
    assert {f"accuracy[{c}]" for c in range(10)} <= set(first)
    assert first["accuracy"] == pytest.approx(
        np.mean([first[f"accuracy[{c}]"] for c in range(10)]), abs=0.1
    )
    held = store.records.ids("bias")
    doomed = [
        r for r, y in zip(digits_table.ids, digits_table.y, strict=True) if y == 3 and r in held
    ]
    policy = RetrainPolicy(accuracy_drop=1.0, deleted_fraction=1.0)  # only the bias watch
    out = Applier(store, policy=policy).apply(
        "bias", [forget("req-3s", record_ids=doomed[: len(doomed) - 2])]
    )
    metrics = store.models.metadata("bias").holdout_metrics
    assert metrics["accuracy[3]"] < first["accuracy[3]"] - 0.05
    assert out.retrain is not None and out.retrain.reason == "class_accuracy"


class _Failing(Applier):
    """A writer that fails every batch (a bug, Redis gone): the stage's error path."""

    def apply(self, model_id, ops, *, _attempt=0):
        raise RuntimeError("the writer failed")


def test_the_intake_stage_leaves_a_request_it_could_not_apply_visible_as_pending(
    store: Store, model: str
) -> None:
    """A request the intake applies itself gets its final receipt from the publication
    directly; if applying fails, it is opened as ``received`` before the error goes on, so
    the overdue alert sees it until a retry applies it. A request forwarded to another
    worker's model is opened at once."""
    from workers.stages import route_deletions

    held = sorted(held_ids(store, model))
    router = Router(store)
    done = forget("local-ok", record_ids=[held[0]], model_ids=[model])
    outcomes = route_deletions(router, Applier(store), [done], lambda m: True, 1_000_000)
    [receipt] = [r for out in outcomes for r in out.receipts]
    assert receipt.status is ReceiptStatus.APPLIED
    assert receipt.received_at == done.request.ts
    assert receipt.due_at == done.request.ts + store.receipts.legal_deadline

    failing = forget("local-fails", record_ids=[held[1]], model_ids=[model])
    with pytest.raises(RuntimeError, match="the writer failed"):
        route_deletions(router, _Failing(store), [failing], lambda m: True, 1_000_000)
    opened = store.receipts.get_one("local-fails", model)
    assert opened is not None and opened.status is ReceiptStatus.RECEIVED
    assert "local-fails" in [request_id for request_id, _ in store.receipts.pending(model)]

    remote = forget("remote", record_ids=[held[2]], model_ids=[model])
    outcomes = route_deletions(router, Applier(store), [remote], lambda m: False, 1_000_000)
    assert [ops.model_id for ops in outcomes[0].forward] == [model]
    forwarded = store.receipts.get_one("remote", model)
    assert forwarded is not None and forwarded.status is ReceiptStatus.RECEIVED


def test_a_model_without_an_engine_checkpoint_refuses_requests_with_the_reason(
    store: Store, model: str
) -> None:
    """A federated model (published by the coordinator, no engine checkpoint, no records
    here) cannot take a deletion, a feature removal or a relabel from the worker: each gets
    a ``rejected`` receipt saying so, and its message a dead letter, instead of an error
    that isolates it as ``internal_error`` and leaves it pending for the overdue alert. The
    other model of the batch is applied."""
    from pipeline.store.versions import ModelSpec
    from workers.stages import route_deletions

    spec = ModelSpec(
        kind="logistic", coef=np.zeros(64), intercept=0.0, classes=[0, 1], method="fit", seq=1
    )
    store.models.publish("fed", spec, 0)
    message = Message("deletions", 0, 5, b"fed", b"{}")
    deletion = DeletionRequested(request_id="del-fed", record_ids=["x"], model_ids=["fed"])
    removal = FeatureRemovalRequested(request_id="cols-fed", model_id="fed", columns=[1])
    ops = [
        Forget(deletion, message),
        ForgetFeatures(removal, message),
        forget("del-digits", record_ids=[sorted(held_ids(store, model))[0]], model_ids=[model]),
    ]
    outcomes = route_deletions(Router(store), Applier(store), ops, lambda m: True, 1_000_000)
    by_request = {r.request_id: r for out in outcomes for r in out.receipts}
    for request_id in ("del-fed", "cols-fed"):
        receipt = by_request[request_id]
        assert receipt.status is ReceiptStatus.REJECTED and receipt.model_id == "fed"
        assert "checkpoint" in receipt.reason
        assert store.receipts.get_one(request_id, "fed").status is ReceiptStatus.REJECTED
    assert not [q for q, _ in store.receipts.pending("fed")]
    rejected = [rej for out in outcomes for rej in out.rejected]
    assert [rej.reason for rej in rejected] == ["unsupported_model", "unsupported_model"]
    assert by_request["del-digits"].status is ReceiptStatus.APPLIED

"""pipeline.edits: a batch's relabels and feature removals on the engine, and what they change
in the stored records, the records topic and the receipts (no Redis)."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest

from pipeline import LogisticUnlearner
from pipeline.edits import corrected_records, edit, receipt_fields
from pipeline.events import ReceiptStatus
from pipeline.plan import Change, Plan
from pipeline.store.records import StoredRecord

HELD = {f"r{i}": f"s{i}" for i in range(120)}


@pytest.fixture
def engine(digits):
    X, y = digits
    return LogisticUnlearner(lam=1e-3, sigma=1.0, seed=3).fit(X[:120], y[:120], ids=list(HELD))


def test_columns_are_zeroed_everywhere_and_kept_while_a_retrain_runs(engine, digits) -> None:
    X, _ = digits
    plan = Plan(columns={4: None, 9: None}, removed={"r0": None})
    plan.added["new"] = StoredRecord("new", "s-new", np.full(64, 0.5), 3)
    reports: list = []
    edits = edit(engine, HELD, plan, reports, in_flight=True)
    assert engine.forgotten_features_ == (4, 9) and len(reports) == 1
    assert edits.methods == {"feature_removal": reports[0].method}
    assert set(edits.features) == set(HELD) - {"r0"}  # a deleted record is not rewritten
    assert all(not x[[4, 9]].any() for x in edits.features.values())
    np.testing.assert_array_equal(edits.features["r5"][:4], X[5, :4])
    assert not plan.added["new"].features[[4, 9]].any() and plan.added["new"].features[0] == 0.5
    columns, values = edits.kept_columns
    assert columns == (4, 9) and np.array_equal(values["r5"], X[5, [4, 9]])
    assert not edits.labels
    # every held record goes back on the records topic without the columns' values, and
    # so does the new record whose message carried values in them
    assert set(edits.republish) == set(edits.features) | {"new"}
    x_new, label_new = edits.republish["new"]
    assert not x_new[[4, 9]].any() and x_new[0] == 0.5 and label_new == 3
    x, label = edits.republish["r5"]
    assert not x[[4, 9]].any() and label == engine.held_records(["r5"])[1][0]


def test_a_relabel_rewrites_labels_only_and_sends_the_records_back(engine) -> None:
    plan = Plan(relabels={"r1": 7, "r2": 0})
    old = engine.held_records(["r1", "r2"])[1].tolist()
    edits = edit(engine, HELD, plan, [], in_flight=True)
    assert edits.labels == {"r1": 7, "r2": 0} and not edits.features
    assert edits.kept_labels == dict(zip(["r1", "r2"], old, strict=True))
    assert engine.held_records(["r1"])[1].tolist() == [7]
    now = datetime(2026, 1, 1, tzinfo=UTC)
    [first, _] = corrected_records("m", edits, HELD, 12, now)
    assert first.event_id == "corrected:m:r1:12" and first.label == 7 and first.subject_id == "s1"
    assert first.ts == now and len(first.features) == 64
    # nothing is kept when no retrain runs
    assert edit(engine, HELD, Plan(relabels={"r3": 1}), [], in_flight=False).kept_labels == {}


def test_receipts_say_what_changed_or_why_not() -> None:
    plan = Plan(
        changes_of={
            "cols": Change("feature_removal", columns=(2, 3)),
            "none": Change("feature_removal"),
            "labels": Change("relabel", relabelled=("r1",)),
            "bad": Change("relabel"),
        },
        refused={"bad": "model 'm' holds no record 'x'"},
    )
    methods = {"feature_removal": "second-order", "relabel": "exact"}
    status, fields = receipt_fields(plan, "cols", 2, methods)
    assert status is ReceiptStatus.APPLIED and fields["columns"] == [2, 3]
    assert fields["method"] == "second-order" and fields["n_records"] == 0
    status, fields = receipt_fields(plan, "none", 0, methods)
    assert status is ReceiptStatus.ALREADY_ABSENT and fields["columns"] == []
    status, fields = receipt_fields(plan, "labels", 1, methods)
    assert status is ReceiptStatus.APPLIED and fields["relabelled"] == ["r1"]
    assert fields["n_records"] == 1 and fields["method"] == "exact"
    status, fields = receipt_fields(plan, "bad", 0, methods)
    assert status is ReceiptStatus.REJECTED and fields["reason"].startswith("model 'm'")
    assert fields["operation"] == "relabel"
    status, fields = receipt_fields(plan, "deletion", 3, methods)
    assert status is ReceiptStatus.APPLIED and fields == {"n_records": 3}

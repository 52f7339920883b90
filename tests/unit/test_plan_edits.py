"""pipeline.plan: feature removals and relabels in a batch, in order with its other ops."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.events import (
    DeletionRequested,
    FeatureRemovalRequested,
    RecordAdded,
    RelabelRequested,
)
from pipeline.intake import Message
from pipeline.ops import Forget, ForgetFeatures, Learn, Relabel
from pipeline.plan import Change, Facts, plan_batch

HELD = {f"r{i}": f"s{i % 20}" for i in range(200)}
NAMES = [f"px{i}" for i in range(64)]


@pytest.fixture(scope="module")
def engine(digits):
    X, y = digits
    return LogisticUnlearner(lam=1e-3, sigma=1.0, seed=3).fit(
        X[:200], y[:200], ids=[f"r{i}" for i in range(200)]
    )


def drop(request_id: str, *columns) -> ForgetFeatures:
    return ForgetFeatures(
        FeatureRemovalRequested(request_id=request_id, model_id="m", columns=list(columns))
    )


def relabel(request_id: str, **labels) -> Relabel:
    items = [{"record_id": rid, "label": label} for rid, label in labels.items()]
    return Relabel(RelabelRequested(request_id=request_id, model_id="m", labels=items))


def forget(request_id: str, *record_ids: str) -> Forget:
    return Forget(DeletionRequested(request_id=request_id, record_ids=list(record_ids)))


def learn(event_id: str, record_id: str, label=3) -> Learn:
    ev = RecordAdded(
        event_id=event_id,
        model_id="m",
        record_id=record_id,
        subject_id="s1",
        features=[0.5] * 64,
        label=label,
    )
    return Learn(ev, Message("records", 0, 0, record_id.encode(), b"{}"))


def plan(engine, ops, names=None):
    return plan_batch(
        "m", ops, Facts(), engine=engine, held=HELD, holdout=None, feature_names=names
    )


def test_columns_resolve_by_index_or_name_and_count_once(engine) -> None:
    p = plan(engine, [drop("q1", 3, "px5", 3), drop("q2", 5, 7)], names=NAMES)
    assert list(p.columns) == [3, 5, 7] and p.changes
    assert p.requests == {"q1": 2, "q2": 1}  # q2's column 5 was q1's already
    assert p.changes_of["q1"] == Change("feature_removal", columns=(3, 5))
    assert p.changes_of["q2"] == Change("feature_removal", columns=(7,))
    assert not p.refused


@pytest.mark.parametrize(
    ("column", "names", "reason"),
    [
        (64, NAMES, "column 64 is out of range: model 'm' has 64 features (columns 0 to 63)"),
        ("zip", NAMES, "model 'm' has no feature named 'zip'"),
        ("px1", None, "has no feature names"),
    ],
)
def test_a_bad_column_refuses_its_request_and_nothing_else(engine, column, names, reason) -> None:
    p = plan(engine, [drop("bad", 1, column), drop("good", 2), forget("del", "r9")], names=names)
    assert reason in p.refused["bad"] and p.requests["bad"] == 0
    assert list(p.columns) == [2] and list(p.removed) == ["r9"]
    assert p.changes_of["bad"].operation == "feature_removal"


def test_a_relabel_marks_held_records_and_new_ones_in_the_batch(engine) -> None:
    ops = [learn("e1", "new-1"), relabel("q1", r4=1, **{"new-1": 8})]
    p = plan(engine, ops)
    assert p.relabels == {"r4": 1} and p.added["new-1"].label == 8
    assert p.requests == {"q1": 2}
    assert p.changes_of["q1"] == Change("relabel", relabelled=("r4", "new-1"))


@pytest.mark.parametrize(
    ("ops", "reason"),
    [
        ([relabel("q", r4=1, ghost=2)], "holds no record 'ghost'"),
        ([forget("d", "r4"), relabel("q", r4=1, r5=2)], "'r4' was forgotten"),
        ([relabel("q", r4=1, r5=42)], "label 42"),
    ],
)
def test_a_bad_relabel_is_refused_whole_and_the_batch_goes_on(engine, ops, reason) -> None:
    p = plan(engine, [*ops, relabel("ok", r7=2), learn("e1", "new-1")])
    assert reason in p.refused["q"] and p.requests["q"] == 0
    assert p.relabels == {"r7": 2} and "new-1" in p.added  # the rest is applied
    assert p.changes_of["q"].operation == "relabel"


def test_a_later_deletion_or_replacement_wins_over_a_relabel(engine) -> None:
    ops = [relabel("q1", r4=1, r5=2, r6=0), forget("d", "r4"), learn("e1", "r5", label=9)]
    p = plan(engine, ops)
    assert p.relabels == {"r6": 0}  # r4 is deleted, r5 replaced with its own label
    assert "r4" in p.removed and p.added["r5"].label == 9
    assert p.requests["q1"] == 3  # the request was applied as it came


def test_a_column_forgotten_already_is_a_no_op(engine) -> None:
    class Forgotten:  # the engine's view, as after an earlier removal
        n_features_in_ = 64
        forgotten_features_ = (3,)

    p = plan_batch("m", [drop("q", 3)], Facts(), engine=Forgotten(), held=HELD, holdout=None)
    assert p.requests == {"q": 0} and not p.columns and not p.changes


def test_ridge_relabels_take_any_finite_number(digits) -> None:
    X, y = digits
    ridge = RidgeUnlearner(alpha=1.0).fit(X[:50], y[:50].astype(float), ids=list(HELD)[:50])
    p = plan(ridge, [relabel("q", r1=0.25)])
    assert p.relabels == {"r1": 0.25} and not p.refused
    assert np.isfinite(list(p.relabels.values())).all()

"""A model's last records can be forgotten: the model then holds no data, and learns again."""

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.store.codec import decode_state, encode_state

KINDS = {
    "logistic-binary": lambda: LogisticUnlearner(lam=1e-2, sigma=1.0, seed=3),
    "logistic-binary-exact": lambda: LogisticUnlearner(
        lam=1e-2, sigma=1.0, seed=3, certificate="exact"
    ),
    "logistic-ovr": lambda: LogisticUnlearner(lam=1e-2, sigma=1.0, seed=3, fit_intercept=True),
    "ridge": lambda: RidgeUnlearner(alpha=1.0),
    "ridge-perturbed": lambda: RidgeUnlearner(alpha=1.0, sigma=0.5, seed=3),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def data(kind, cancer, digits):
    X, y = digits if kind == "logistic-ovr" else cancer
    X, y = X[:300], y[:300]
    return (X, y.astype(float)) if kind.startswith("ridge") else (X, y)


def _empty(kind, data, *, batches=1):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    ids = list(range(len(y)))
    chunks = np.array_split(ids, batches)
    reports = [model.forget(chunk.tolist()) for chunk in chunks]
    assert reports[-1].n_removed == len(chunks[-1])
    return model, reports[-1]


def _assert_empty(model, X):
    assert model.n_records_ == 0 and model.record_ids_ == []
    assert model.certificate_ == 0.0
    assert not np.any(model.coef_) and not np.any(model.intercept_)
    if isinstance(model, LogisticUnlearner):
        np.testing.assert_array_equal(model.predict(X[:7]), [model.classes_[0]] * 7)
        np.testing.assert_array_equal(
            model.predict_proba(X[:7]), np.full((7, len(model.classes_)), 1 / len(model.classes_))
        )
    else:
        np.testing.assert_array_equal(model.predict(X[:7]), np.zeros(7))


@pytest.mark.parametrize("batches", [1, 3])
def test_forgetting_the_last_records_empties_the_model(kind, data, batches):
    X, y = data
    model, report = _empty(kind, data, batches=batches)
    assert report.method == "emptied"
    assert report.n_records == 0
    assert report.certificate == 0.0 and report.certified and not report.retrain_recommended
    assert report.budget == model.budget_
    _assert_empty(model, X)
    again = model.forget([0, 1])  # still reported, never applied twice
    assert again.n_removed == 0 and again.already_absent == (0, 1)
    assert model.refit().n_records == 0  # a refit of nothing leaves nothing
    _assert_empty(model, X)


def test_the_emptied_report_counts_the_records_it_removed(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    model.forget(range(100))
    report = model.forget(range(50, len(y)))  # 50 already gone, the rest held
    assert report.method == "emptied"
    assert report.n_removed == len(y) - 100
    assert report.already_absent == tuple(range(50, 100))


def test_an_empty_model_learns_as_a_fresh_fit_with_the_same_b(kind, data):
    X, y = data
    model, _ = _empty(kind, data)
    key = "B" if isinstance(model, LogisticUnlearner) else "b"
    b = model.state_dict()[key]
    new_ids = [f"new-{i}" for i in range(120)]
    report = model.learn(X[:120], y[:120], ids=new_ids)
    assert report.method == "fit" and report.n_added == 120 and report.n_records == 120
    assert report.certified or model.budget_ == 0
    fresh = KINDS[kind]().fit(X[:120], y[:120], ids=new_ids)  # same seed: same b
    np.testing.assert_array_equal(model.state_dict()[key], b)
    np.testing.assert_allclose(model.coef_, fresh.coef_, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(model.intercept_, fresh.intercept_, rtol=1e-9, atol=1e-12)
    assert model.certificate_ == pytest.approx(fresh.certificate_, rel=1e-6, abs=1e-12)
    assert model.record_ids_ == new_ids
    model.forget(new_ids[:10])  # and goes on as any model
    assert model.n_records_ == 110


def test_learning_one_class_on_an_empty_classifier(cancer):
    X, y = cancer
    model = LogisticUnlearner(lam=1e-2, sigma=1.0).fit(X[:100], y[:100])
    model.forget(range(100))
    ones = np.flatnonzero(y == 1)[:5]
    report = model.learn(X[ones], y[ones], ids=["a", "b", "c", "d", "e"])
    assert report.method == "fit" and model.n_records_ == 5
    assert report.certified and model.classes_.tolist() == [0, 1]


@pytest.mark.parametrize("include_records", [False, True])
def test_an_empty_model_round_trips_a_checkpoint(kind, data, include_records):
    X, y = data
    model, _ = _empty(kind, data)
    state = decode_state(encode_state(model.state_dict(include_records=include_records)))
    if include_records:
        resumed = type(model).from_state_dict(state)
    else:
        resumed = type(model).from_state_dict(state, np.empty((0, X.shape[1])), [], [])
    _assert_empty(resumed, X)
    assert resumed.get_params() == model.get_params()
    assert resumed.forget([3]).already_absent == (3,)
    ids = [f"new-{i}" for i in range(80)]
    model.learn(X[:80], y[:80], ids=ids)
    resumed.learn(X[:80], y[:80], ids=ids)
    np.testing.assert_array_equal(resumed.coef_, model.coef_)

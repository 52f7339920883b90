"""A contract every unlearner kind honours, whatever its maths."""

import numpy as np
import pytest

from pipeline import LogisticUnlearner, PipelineError, RidgeUnlearner
from pipeline.errors import DuplicateRecord, InvalidInput, UnknownRecord

KINDS = {
    "logistic-binary-fisher": lambda: LogisticUnlearner(lam=1e-2, sigma=1.0, seed=3),
    "logistic-binary-influence": lambda: LogisticUnlearner(
        lam=1e-2, sigma=1.0, seed=3, method="influence"
    ),
    "logistic-binary-bound": lambda: LogisticUnlearner(
        lam=1e-2, sigma=1.0, seed=3, method="influence", certificate="bound"
    ),
    "logistic-ovr": lambda: LogisticUnlearner(lam=1e-2, sigma=1.0, seed=3, fit_intercept=True),
    "ridge": lambda: RidgeUnlearner(alpha=1.0),
}


@pytest.fixture(params=sorted(KINDS))
def kind(request):
    return request.param


@pytest.fixture
def data(kind, cancer, digits):
    X, y = digits if kind == "logistic-ovr" else cancer
    return X[:400], y[:400]


def _params(model):
    return np.concatenate([np.ravel(model.coef_), np.ravel(model.intercept_)])


def test_inputs_are_not_mutated(kind, data):
    X, y = data
    X0, y0 = X.copy(), y.copy()
    model = KINDS[kind]().fit(X, y)
    model.forget(range(5))
    model.learn(X[:5], y[:5], ids=[f"new-{i}" for i in range(5)])
    model.predict(X)
    np.testing.assert_array_equal(X, X0)
    np.testing.assert_array_equal(y, y0)


def test_seeded_runs_are_deterministic(kind, data):
    X, y = data
    a, b = KINDS[kind]().fit(X, y), KINDS[kind]().fit(X, y)
    a.forget([1, 2, 3])
    b.forget([1, 2, 3])
    np.testing.assert_array_equal(_params(a), _params(b))


def test_forget_then_learn_restores_the_model(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    before, cert_before = _params(model), model.certificate_
    removed = list(range(10, 30))
    model.forget(removed)
    assert model.n_records_ == len(y) - len(removed)
    assert not np.allclose(_params(model), before, rtol=1e-6)
    model.learn(X[removed], y[removed], ids=removed)
    assert model.n_records_ == len(y)
    if isinstance(model, RidgeUnlearner):
        np.testing.assert_allclose(_params(model), before, rtol=1e-9, atol=1e-12)
    else:
        # Both are near-minimisers of the same lam*n-strongly convex objective, so their
        # distance is at most the sum of their gradient norms (the certificates) / (lam n).
        bound = (model.certificate_ + cert_before) / (model.lam * len(y))
        assert np.linalg.norm(_params(model) - before) <= bound
        assert bound < 1e-2 * np.linalg.norm(before)


def test_checkpoint_round_trip_resumes_identically(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    model.forget(range(5))
    ids = list(range(5, len(y)))
    resumed = type(model).from_state_dict(model.state_dict(), X[5:][::-1], y[5:][::-1], ids[::-1])
    r1, r2 = model.forget(range(5, 15)), resumed.forget(range(5, 15))
    np.testing.assert_allclose(_params(resumed), _params(model), rtol=1e-10, atol=1e-12)
    assert r1.certificate == pytest.approx(r2.certificate, rel=1e-6, abs=1e-12)
    with_records = type(model).from_state_dict(model.state_dict(include_records=True))
    np.testing.assert_array_equal(_params(with_records), _params(model))


def test_unknown_id_raises_and_names_it(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    before = _params(model)
    with pytest.raises(UnknownRecord, match="'no-such-record'"):
        model.forget([3, "no-such-record"])
    assert isinstance(UnknownRecord(1), PipelineError)
    np.testing.assert_array_equal(_params(model), before)
    assert model.n_records_ == len(y)


def test_forgetting_twice_is_reported_not_applied(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    first = model.forget([7, 7, 8])
    assert first.n_removed == 2
    after_first = _params(model)
    second = model.forget([7, 8])
    assert second.n_removed == 0
    assert second.already_absent == (7, 8)
    np.testing.assert_array_equal(_params(model), after_first)


def test_learning_a_held_id_raises(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    with pytest.raises(DuplicateRecord, match="5"):
        model.learn(X[:1], y[:1], ids=[5])


def test_bad_features_are_rejected_with_the_row(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    bad = X[:3].copy()
    bad[2, 1] = np.nan
    with pytest.raises(InvalidInput, match="row 2"):
        model.learn(bad, y[:3], ids=["a", "b", "c"])
    with pytest.raises(InvalidInput, match="features"):
        model.learn(X[:2, :-1], y[:2], ids=["a", "b"])


def test_held_records_are_the_features_and_labels_learned(kind, data):
    X, y = data
    model = KINDS[kind]().fit(X, y)
    model.forget([0, 1])
    model.learn(X[:2], y[:2], ids=["again-0", "again-1"])
    ids = [7, "again-1", 3]
    features, labels = model.held_records(ids)
    np.testing.assert_array_equal(features, X[[7, 1, 3]])
    np.testing.assert_array_equal(labels, y[[7, 1, 3]])
    features[:] = 0.0  # a copy: the model keeps its records
    np.testing.assert_array_equal(model.held_records([7])[0], X[[7]])
    with pytest.raises(UnknownRecord, match="0"):
        model.held_records([0])  # forgotten
    with pytest.raises(UnknownRecord, match="nope"):
        model.held_records(["nope"])

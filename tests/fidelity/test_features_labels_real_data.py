"""Forgetting columns and correcting labels on the real datasets, against refits from scratch.

Guo et al.'s parameters (lambda = 1e-3, sigma = 10) and the default method: the result is
within the certificate of the refit on the changed data (strong convexity:
``||w - w*|| <= (||grad L(w)|| + ||grad L(w*)||) / (lambda n)``), 1e-3 relative, and the
certificate is the gradient norm recomputed here from the public coefficients and b.
"""

import numpy as np
import pytest

from bench.engine import adult
from bench.features import run as features_bench
from pipeline import LogisticUnlearner
from pipeline.unlearning import loss

GUO = {"lam": 1e-3, "sigma": 10.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}


@pytest.fixture(scope="module")
def adult_a9a():
    return adult()


def _weights(model):
    return np.append(model.coef_, model.intercept_)


def _residual(model, X, y):
    """||grad L_b(w; D)|| over (X, y), the forgotten weights' coordinates left out."""
    Xa = np.hstack([X, np.ones((len(X), 1))]) if model.fit_intercept else X
    W = _weights(model)[None, : Xa.shape[1]]
    B = np.asarray(model.state_dict()["B"]).reshape(W.shape)
    G = loss.gradient(Xa, loss.signs(y, 1), W, B, model.lam)
    G[:, list(model.forgotten_features_)] = 0.0
    return float(np.linalg.norm(G))


def _within_certificate(model, reference, report, n):
    gap = np.linalg.norm(_weights(model) - _weights(reference))
    assert gap <= (report.certificate + reference.certificate_) / (model.lam * n) * (1 + 1e-6)
    assert gap / np.linalg.norm(_weights(reference)) < 1e-3


@pytest.mark.parametrize("k", [1, 10])
def test_adult_columns_removed_match_a_refit_without_them(adult_a9a, k):
    ds = adult_a9a
    params = {**GUO, "fit_intercept": True}
    model = LogisticUnlearner(**params).fit(ds.X, ds.y)
    cols = sorted(np.argsort(-np.abs(model.coef_))[:k].tolist())  # what the model leans on
    report = model.forget_features(cols)
    assert report.certified and report.columns == tuple(cols)
    assert np.all(model.coef_[cols] == 0.0)
    Xz = ds.X.copy()
    Xz[:, cols] = 0.0
    assert report.certificate == pytest.approx(_residual(model, Xz, ds.y), rel=1e-6)
    reference = LogisticUnlearner(**params, forgotten_features=cols).fit(ds.X, ds.y)
    _within_certificate(model, reference, report, len(ds.y))
    assert model.score(ds.X_test, ds.y_test) == pytest.approx(
        reference.score(ds.X_test, ds.y_test), abs=0.002
    )


def test_mnist_label_flips_repaired_match_the_clean_fit(mnist_3v8):
    """1% of MNIST 3 vs 8's labels flipped, the poisoned model fitted, then ``relabel``."""
    ds = mnist_3v8
    flipped = np.random.default_rng(3).choice(len(ds.y), len(ds.y) // 100, replace=False)
    y = ds.y.copy()
    y[flipped] = 1 - y[flipped]
    model = LogisticUnlearner(**GUO).fit(ds.X, y)
    report = model.relabel(flipped.tolist(), ds.y[flipped])
    assert report.certified and report.n_relabelled == len(flipped)
    assert report.certificate == pytest.approx(_residual(model, ds.X, ds.y), rel=1e-6)
    clean = LogisticUnlearner(**GUO).fit(ds.X, ds.y)
    _within_certificate(model, clean, report, len(ds.y))
    assert model.score(ds.X_test, ds.y_test) == pytest.approx(
        clean.score(ds.X_test, ds.y_test), abs=0.002
    )


def test_the_quick_bench_reports_what_it_measured():
    """``bench.features`` (``make bench``'s section) end to end at its quick sizes: figures
    where the report reads them; correctness only, never times."""
    results = features_bench(quick=True)
    assert len(results["columns"]["rows"]) == 4
    for row in results["columns"]["rows"]:
        assert row["relative_parameter_distance"] < 1e-3 and row["certified"]
        assert row["test_accuracy"] == pytest.approx(row["test_accuracy_refit"], abs=0.002)
    for row in results["labels"]["rows"]:
        assert row["relative_parameter_distance"] < 1e-3 < row["poisoned_distance"]
        assert row["test_accuracy_repaired"] == pytest.approx(row["test_accuracy_clean"], abs=0.002)

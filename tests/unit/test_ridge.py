"""Ridge removal is exact: it equals retraining, to round-off."""

import numpy as np
from sklearn.linear_model import Ridge

from pipeline import RidgeUnlearner


def test_ridge_matches_scikit_learn(cancer):
    X, y = cancer
    ours = RidgeUnlearner(alpha=0.5).fit(X, y)
    sk = Ridge(alpha=0.5).fit(X, y)
    np.testing.assert_allclose(ours.coef_, sk.coef_, rtol=1e-9, atol=1e-12)
    assert abs(ours.intercept_ - sk.intercept_) < 1e-10
    assert abs(ours.score(X, y) - sk.score(X, y)) < 1e-12


def test_ridge_removal_equals_retraining(digits):
    X, y = digits[0], digits[1].astype(float)
    model = RidgeUnlearner(alpha=1.0).fit(X, y)
    removed = np.random.default_rng(0).choice(len(y), size=400, replace=False)
    for batch in np.array_split(removed, 8):
        model.forget(batch.tolist())
    keep = np.setdiff1d(np.arange(len(y)), removed)
    retrained = RidgeUnlearner(alpha=1.0).fit(X[keep], y[keep])
    rel = np.linalg.norm(model.coef_ - retrained.coef_) / np.linalg.norm(retrained.coef_)
    assert rel < 1e-9
    assert abs(model.intercept_ - retrained.intercept_) < 1e-9 * max(1.0, abs(retrained.intercept_))
    model.learn(X[removed], y[removed], ids=removed.tolist())
    full = RidgeUnlearner(alpha=1.0).fit(X, y)
    assert np.linalg.norm(model.coef_ - full.coef_) / np.linalg.norm(full.coef_) < 1e-9

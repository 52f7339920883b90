"""LinearPredictor against scikit-learn and against the formulas."""

from __future__ import annotations

from datetime import UTC, datetime

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_diabetes, load_iris
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.preprocessing import StandardScaler

from pipeline.errors import InvalidInput
from pipeline.sdk import LinearPredictor
from pipeline.store.codec import encode_array
from pipeline.store.versions import ModelSpec, ModelVersion, VersionMetadata


def predictor(spec: ModelSpec) -> LinearPredictor:
    coef, intercept = spec.checked()
    meta = VersionMetadata(
        model_id="m",
        version=1,
        kind=spec.kind,
        method=spec.method,
        seq=0,
        n_records=0,
        n_features=coef.shape[-1],
        classes=spec.classes,
        created_at=datetime.now(UTC),
        coef_spec=encode_array(coef)[1],
        intercept_spec=encode_array(intercept)[1],
    )
    return LinearPredictor(ModelVersion(meta, coef, intercept))


def test_binary_logistic_matches_sklearn() -> None:
    X, y = load_breast_cancer(return_X_y=True)
    X = StandardScaler().fit_transform(X)
    sk = LogisticRegression(max_iter=1000).fit(X, y)
    clf = predictor(
        ModelSpec(
            kind="logistic",
            coef=sk.coef_[0],
            intercept=sk.intercept_[0],
            classes=sk.classes_.tolist(),
            method="fit",
            seq=0,
        )
    )
    assert clf.coef_.shape == (30,) and clf.intercept_.shape == ()
    np.testing.assert_allclose(clf.predict_proba(X), sk.predict_proba(X), rtol=1e-9, atol=1e-14)
    np.testing.assert_array_equal(clf.predict(X), sk.predict(X))
    assert clf.score(X, y) == pytest.approx(sk.score(X, y))
    with pytest.raises(ValueError):
        clf.coef_[0] = 1.0  # read-only


def test_one_vs_rest_normalises_the_sigmoids() -> None:
    X, y = load_iris(return_X_y=True)
    rng = np.random.default_rng(0)
    coef, intercept = rng.standard_normal((3, 4)), rng.standard_normal(3)
    clf = predictor(
        ModelSpec(
            kind="logistic",
            coef=coef,
            intercept=intercept,
            classes=["setosa", "versicolor", "virginica"],
            method="fit",
            seq=0,
        )
    )
    sig = 1.0 / (1.0 + np.exp(-(X @ coef.T + intercept)))
    proba = clf.predict_proba(X)
    np.testing.assert_allclose(proba, sig / sig.sum(axis=1, keepdims=True), rtol=1e-12)
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    assert list(clf.predict(X[:3])) == [clf.classes_[i] for i in np.argmax(sig[:3], axis=1)]
    assert 0.0 <= clf.score(X, np.array(clf.classes_)[y]) <= 1.0


def test_ridge_matches_sklearn() -> None:
    X, y = load_diabetes(return_X_y=True)
    sk = Ridge(alpha=0.5).fit(X, y)
    reg = predictor(
        ModelSpec(kind="ridge", coef=sk.coef_, intercept=sk.intercept_, method="fit", seq=0)
    )
    np.testing.assert_allclose(reg.predict(X), sk.predict(X), rtol=1e-12)
    assert reg.score(X, y) == pytest.approx(sk.score(X, y))
    assert reg.classes_ is None
    with pytest.raises(InvalidInput, match="no predict_proba"):
        reg.predict_proba(X)


def test_bad_input_is_explained() -> None:
    reg = predictor(ModelSpec(kind="ridge", coef=np.ones(3), intercept=0.0, method="fit", seq=0))
    with pytest.raises(InvalidInput, match=r"expects \(n_samples, 3\)"):
        reg.predict(np.ones((2, 4)))
    with pytest.raises(InvalidInput, match="NaN"):
        reg.predict(np.array([[1.0, np.nan, 0.0]]))

"""Logistic unlearning against exact refits, on scikit-learn's bundled datasets."""

import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression

from pipeline import LogisticUnlearner
from pipeline.unlearning.loss import gradient


def test_unperturbed_fit_matches_scikit_learn(cancer):
    """With sigma = 0 the objective is scikit-learn's with C = 1 / (lam n), no intercept."""
    X, y = cancer
    lam = 1e-2
    ours = LogisticUnlearner(lam=lam, sigma=0.0).fit(X, y)
    sk = LogisticRegression(
        C=1.0 / (lam * len(y)), fit_intercept=False, tol=1e-12, max_iter=10_000
    ).fit(X, y)
    np.testing.assert_allclose(ours.coef_, sk.coef_[0], rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(ours.predict_proba(X), sk.predict_proba(X), atol=1e-6)


def _true_residual(model):
    rec = model._records
    return np.linalg.norm(
        gradient(rec.X, model._signs(rec.targets), model._W, model._B, model.lam, rec.weights),
        axis=1,
    ).sum()


@pytest.mark.parametrize("dataset", ["cancer", "digits"])
@pytest.mark.parametrize("method", ["fisher", "influence"])
def test_certificates_hold_at_every_version(request, dataset, method):
    """The exact certificate is the residual; the bound and adaptive ones never fall below it."""
    X, y = request.getfixturevalue(dataset)
    models = {
        kind: LogisticUnlearner(
            lam=1e-3, sigma=1.0, method=method, certificate=kind, fit_intercept=True
        ).fit(X, y)
        for kind in ("exact", "bound", "adaptive")
    }
    order = np.random.default_rng(0).permutation(len(y))
    for step in range(8):
        batch = order[step * 5 : (step + 1) * 5].tolist()
        reports = {kind: model.forget(batch) for kind, model in models.items()}
        truth = {kind: _true_residual(model) for kind, model in models.items()}
        assert reports["exact"].certificate == pytest.approx(truth["exact"], rel=1e-9, abs=1e-12)
        assert reports["bound"].certificate >= truth["bound"]
        assert reports["adaptive"].certificate >= truth["adaptive"] * (1 - 1e-9)
    for kind, model in models.items():
        learned = model.learn(X[:3], y[:3], ids=["a", "b", "c"])
        assert learned.certificate >= _true_residual(model) * (1 - 1e-9), kind


def test_budget_exhaustion_recommends_retrain_and_refit_resets(digits):
    X, y = digits
    model = LogisticUnlearner(lam=1e-3, sigma=0.05, method="influence", fit_intercept=True).fit(
        X, y
    )
    report = model.forget(range(300))
    assert report.certificate > report.budget
    assert report.retrain_recommended and not report.certified
    refit = model.refit()
    assert refit.method == "retrain"
    assert refit.certified and not refit.retrain_recommended
    assert refit.certificate < 1e-3 * refit.budget
    assert refit.worst_case == 0.0


def test_drift_recomputes_the_curvature_and_says_so(digits):
    X, y = digits
    model = LogisticUnlearner(
        lam=1e-3, sigma=1.0, method="influence", certificate="exact", drift_tol=1e-6
    ).fit(X, y)
    recomputes = model.n_curvature_recomputes_
    report = model.forget(range(200))
    assert report.curvature_recomputed
    assert model.n_curvature_recomputes_ == recomputes + 1


def test_labels_of_any_type_and_class_count(digits):
    X, y = digits
    names = np.array(["zero", "one", "two"])[y % 3]
    model = LogisticUnlearner(lam=1e-3, sigma=0.0, fit_intercept=True).fit(X, names)
    assert model.coef_.shape == (3, X.shape[1])
    assert set(model.predict(X[:50])) <= set(names)
    proba = model.predict_proba(X[:50])
    np.testing.assert_allclose(proba.sum(axis=1), 1.0)
    binary = LogisticUnlearner(lam=1e-3, sigma=0.0).fit(X, y % 2 == 0)
    assert binary.coef_.shape == (X.shape[1],)
    assert binary.classes_.tolist() == [False, True]


def test_reported_method_is_the_step_taken(cancer):
    """An "adaptive" model between measurements cannot take a Fisher step (it needs the
    residual at the current model); the report says "influence" then, not the default."""
    X, y = cancer
    model = LogisticUnlearner(lam=1e-3, sigma=1.0, seed=0).fit(X, y)  # fisher, adaptive
    assert model.method == "fisher" and model.certificate == "adaptive"
    first = model.forget([0, 1, 2])  # the fit measured the residual: a Fisher step
    assert first.method == "fisher"
    assert first.certificate < model.measure_above * first.budget  # so nothing measured
    second = model.forget([3, 4, 5])  # residual unknown: an influence step, no correction
    assert second.method == "influence"
    learned = model.learn(X[:3], y[:3], ids=["a", "b", "c"])
    assert learned.method == "influence"
    exact = LogisticUnlearner(lam=1e-3, sigma=1.0, seed=0, certificate="exact").fit(X, y)
    assert [exact.forget([i]).method for i in range(3)] == ["fisher"] * 3


def test_a_measurement_that_corrects_is_reported_as_fisher(cancer):
    """Between measurements the step is an influence step; when the batch passes
    ``measure_above`` the residual is measured, and only if it is still over that fraction
    is the model corrected by a Newton step on the remaining data's gradient: "fisher"."""
    X, y = cancer
    methods = {}
    for measure_above in (1e-2, 1e-3):
        model = LogisticUnlearner(lam=1e-3, sigma=1.0, seed=0, measure_above=measure_above)
        model.fit(X, y).forget([0, 1, 2])
        report = model.forget(list(range(3, 13)))
        assert report.certificate < measure_above * report.budget
        methods[measure_above] = report.method
    # 1%: measured below the threshold, left as it was; 0.1%: measured over it, corrected
    assert methods == {1e-2: "influence", 1e-3: "fisher"}


def test_a_cold_refit_is_a_fit_from_scratch_with_the_same_b(digits):
    """``refit(warm_start=False)`` is the model retrained on the remaining records with the
    same (secret) b: the reference a removal is compared with."""
    X, y = digits
    model = LogisticUnlearner(lam=1e-3, sigma=1.0, fit_intercept=True).fit(X, y)
    model.forget(range(100))
    B = model.state_dict()["B"]
    report = model.refit(warm_start=False)
    assert report.method == "retrain" and report.certified
    scratch = LogisticUnlearner.from_state_dict(model.state_dict(include_records=True))
    np.testing.assert_array_equal(scratch.state_dict()["B"], B)
    seeded = LogisticUnlearner(lam=1e-3, sigma=1.0, fit_intercept=True, seed=5)
    fresh, cold = seeded.fit(X[100:], y[100:]), LogisticUnlearner(**seeded.get_params())
    cold.fit(X, y).forget(range(100))
    cold.refit(warm_start=False)
    np.testing.assert_allclose(cold.coef_, fresh.coef_, rtol=1e-9, atol=1e-12)

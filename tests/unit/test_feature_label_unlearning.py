"""Forgetting feature columns and correcting labels (issue 18), against refits from scratch.

Warnecke, Pirch, Wressnegger, Rieck, "Machine Unlearning of Features and Labels" (NDSS 2023):
the model after ``forget_features`` equals one fitted on the data without those columns
(same objective on the remaining weights, the forgotten ones exactly 0), the model after
``relabel`` one fitted on the corrected labels. Ridge to round-off; logistic within what
its certificate says (strong convexity: ``||w - w*|| <= ||grad L(w)|| / (lambda n)``),
and the certificate is the gradient norm recomputed here, independently of the engine.
"""

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput, UnknownClass, UnknownRecord
from pipeline.store.codec import decode_state, encode_state
from pipeline.unlearning import loss

# -- the models and their references ------------------------------------------------------


def _logistic(**extra):
    # measure_above tiny: corrective Newton steps until the residual is ~1e-9 of the data's
    params = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "measure_above": 1e-6, **extra}
    return LogisticUnlearner(**params)


def _ridge(**extra):
    return RidgeUnlearner(**{"alpha": 0.5, "sigma": 0.1, "seed": 3, **extra})


MODELS = {
    "binary": (_logistic, "cancer"),
    "ovr": (_logistic, "digits"),
    "ridge": (_ridge, "cancer_regression"),
}


@pytest.fixture(scope="module")
def cancer_regression(cancer):
    """Cancer's features with a real-valued target (the first feature's neighbour, mean
    radius, predicted from the rest is too easy: the label as a float plus a feature)."""
    X, y = cancer
    return X, y.astype(float) + 0.5 * X[:, 3]


def _data(request, name):
    X, y = request.getfixturevalue(MODELS[name][1])
    ids = [f"r{i}" for i in range(len(y))]
    return X, y, ids


def _coef(model):
    """Coefficients and intercept as one (K, d + 1) array."""
    coef = np.atleast_2d(model.coef_)
    return np.hstack([coef, np.reshape(model.intercept_, (coef.shape[0], -1))])


def _gradient_norm(model, X, y):
    """||grad L_b(w; D)|| on the records (X, y), from the engine's public coefficients and
    its b: the certificate recomputed outside the engine (summed over one-vs-rest)."""
    state = model.state_dict()
    width = X.shape[1] + int(model.fit_intercept)
    Xa = np.hstack([X, np.ones((len(X), 1))]) if model.fit_intercept else X
    if isinstance(model, RidgeUnlearner):
        w = (
            np.concatenate([model.coef_, [model.intercept_]])
            if model.fit_intercept
            else model.coef_
        )
        penalty = np.full(width, model.alpha)
        if model.fit_intercept:
            penalty[-1] = 0.0
        free = np.ones(width, dtype=bool)
        free[list(model.forgotten_features_)] = False
        g = Xa.T @ (Xa @ w - y) + penalty * w + state["b"]
        return float(np.linalg.norm(g[free]))
    W = np.atleast_2d(model.coef_)
    if model.fit_intercept:
        W = np.hstack([W, np.reshape(model.intercept_, (-1, 1))])
    K = W.shape[0]
    idx = np.searchsorted(model.classes_, y)
    Y = loss.signs(idx, K)
    G = loss.gradient(Xa, Y, W, np.asarray(state["B"]).reshape(K, width), model.lam)
    G[:, list(model.forgotten_features_)] = 0.0  # those weights are fixed at 0
    return float(np.linalg.norm(G, axis=1).sum())


def _without(X, columns):
    """X with the columns zeroed (the data "without those columns")."""
    out = X.copy()
    out[:, list(columns)] = 0.0
    return out


def _close_to_refit(model, refit, X, y, report):
    """Logistic: within the certificates' strong-convexity bound and 1e-3 relative; ridge:
    to round-off. The report's certificate is the gradient norm recomputed here."""
    got, want = _coef(model), _coef(refit)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert report.certificate == pytest.approx(_gradient_norm(model, X, y), rel=1e-6, abs=1e-9)
    if isinstance(model, RidgeUnlearner):
        assert rel < 1e-8
        return
    n = len(y)
    bound = (report.certificate + refit.certificate_) / (model.lam * n)
    assert np.linalg.norm(got - want) <= bound * (1 + 1e-6) + 1e-12
    assert rel < 1e-3


# -- forget_features ----------------------------------------------------------------------


@pytest.mark.parametrize("intercept", [False, True], ids=["no-intercept", "intercept"])
@pytest.mark.parametrize("columns", [(4,), (0, 7, 11, 20)], ids=["one", "several"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_forget_features_equals_a_refit_without_the_columns(request, name, columns, intercept):
    X, y, ids = _data(request, name)
    factory = MODELS[name][0]
    model = factory(fit_intercept=intercept).fit(X, y, ids=ids)
    report = model.forget_features(columns)
    assert model.forgotten_features_ == tuple(sorted(columns))
    assert report.columns == tuple(sorted(columns)) and report.already_forgotten == ()
    assert np.all(np.atleast_2d(model.coef_)[:, list(columns)] == 0.0)
    assert report.method == ("exact" if name == "ridge" else "second-order")
    # the reference: fitted from scratch on the data without the columns, same objective
    # (the same seed gives the same b on the remaining weights)
    refit = factory(fit_intercept=intercept, forgotten_features=columns).fit(X, y, ids=ids)
    assert np.all(np.atleast_2d(refit.coef_)[:, list(columns)] == 0.0)
    _close_to_refit(model, refit, _without(X, columns), y, report)
    if name != "ridge":
        assert report.certified and not report.retrain_recommended


@pytest.mark.parametrize("name", ["binary", "ridge"])
def test_forget_features_equals_a_model_never_given_the_columns(request, name):
    """Unperturbed (sigma = 0), the reference needs no shared b: a model fitted on X with
    the columns deleted, as any library would fit it."""
    X, y, ids = _data(request, name)
    factory = MODELS[name][0]
    columns = [2, 9, 10]
    model = factory(sigma=0.0, fit_intercept=True).fit(X, y, ids=ids)
    report = model.forget_features(columns)
    narrow = factory(sigma=0.0, fit_intercept=True).fit(np.delete(X, columns, axis=1), y)
    keep = np.setdiff1d(np.arange(X.shape[1]), columns)
    got = np.append(np.atleast_2d(model.coef_)[0, keep], model.intercept_)
    want = np.append(np.atleast_2d(narrow.coef_)[0], narrow.intercept_)
    rel = np.linalg.norm(got - want) / np.linalg.norm(want)
    assert rel < (1e-8 if name == "ridge" else 1e-6)
    assert report.certificate == pytest.approx(
        _gradient_norm(model, _without(X, columns), y), rel=1e-6, abs=1e-9
    )


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_forgotten_column_is_a_reported_no_op(request, name):
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X, y, ids=ids)
    model.forget_features([3])
    before = _coef(model)
    report = model.forget_features([3, 3])
    assert report.columns == () and report.already_forgotten == (3,)
    np.testing.assert_array_equal(_coef(model), before)
    report = model.forget_features(np.array([5, 3]))
    assert report.columns == (5,) and report.already_forgotten == (3,)
    assert model.forgotten_features_ == (3, 5)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_learn_ignores_the_forgotten_columns(request, name):
    """New rows' values in a forgotten column never reach the model: learning them equals
    learning the same rows with the column zeroed."""
    X, y, ids = _data(request, name)
    factory = MODELS[name][0]
    a = factory().fit(X[:300], y[:300], ids=ids[:300])
    b = factory().fit(X[:300], y[:300], ids=ids[:300])
    a.forget_features([1, 6])
    b.forget_features([1, 6])
    loud = X[300:340].copy()
    loud[:, [1, 6]] = 50.0  # would dominate the model if learned
    a.learn(loud, y[300:340], ids=ids[300:340])
    b.learn(_without(X[300:340], [1, 6]), y[300:340], ids=ids[300:340])
    np.testing.assert_allclose(_coef(a), _coef(b), rtol=1e-10, atol=1e-12)
    assert np.all(np.atleast_2d(a.coef_)[:, [1, 6]] == 0.0)
    # the features the model holds are as learned: zero in those columns
    held, _ = a.held_records(ids[300:302])
    assert np.all(held[:, [1, 6]] == 0.0)
    assert np.all(loud[:, [1, 6]] == 50.0)  # inputs are never mutated


# -- relabel ------------------------------------------------------------------------------


def _new_labels(name, y, picks):
    if name == "ridge":
        return y[picks] + 3.0
    if name == "ovr":
        return (y[picks] + 1) % 10  # another class
    return 1 - y[picks]


@pytest.mark.parametrize("intercept", [False, True], ids=["no-intercept", "intercept"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_relabel_equals_a_refit_on_the_corrected_labels(request, name, intercept):
    X, y, ids = _data(request, name)
    factory = MODELS[name][0]
    model = factory(fit_intercept=intercept).fit(X, y, ids=ids)
    picks = np.random.default_rng(1).choice(len(y), size=12, replace=False)
    labels = _new_labels(name, y, picks)
    report = model.relabel([ids[i] for i in picks], labels)
    assert report.n_relabelled == 12
    assert report.method == ("exact" if name == "ridge" else "second-order")
    fixed = y.copy()
    fixed[picks] = labels
    refit = factory(fit_intercept=intercept).fit(X, fixed, ids=ids)
    _close_to_refit(model, refit, X, fixed, report)
    _, held = model.held_records([ids[i] for i in picks])
    np.testing.assert_array_equal(held, labels)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_relabelling_to_the_same_label_is_a_no_op(request, name):
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X, y, ids=ids)
    before = _coef(model)
    report = model.relabel(ids[:5], y[:5])
    assert report.n_relabelled == 0
    assert report.already_labelled == tuple(ids[:5])
    np.testing.assert_array_equal(_coef(model), before)


# -- the other methods --------------------------------------------------------------------


@pytest.mark.parametrize("name", ["binary", "ovr"])
def test_first_order_and_retrain_report_what_they_did(request, name):
    X, y, ids = _data(request, name)
    picks = np.arange(0, 60, 5)
    fixed = y.copy()
    fixed[picks] = _new_labels(name, y, picks)
    first = _logistic().fit(X, y, ids=ids)
    report = first.relabel([ids[i] for i in picks], fixed[picks], method="first-order")
    assert report.method == "first-order"
    # the certificate of a first-order step is measured, whatever it is
    assert report.certificate == pytest.approx(_gradient_norm(first, X, fixed), rel=1e-6)
    assert report.retrain_recommended == (report.certificate > report.budget)
    again = _logistic().fit(X, y, ids=ids)
    report = again.forget_features([0, 5], method="retrain")
    assert report.method == "retrain" and report.certified
    refit = _logistic(forgotten_features=(0, 5)).fit(X, y, ids=ids)
    _close_to_refit(again, refit, _without(X, [0, 5]), y, report)
    with pytest.raises(InvalidInput, match="method"):
        again.forget_features([1], method="sideways")


# -- bad input changes nothing ------------------------------------------------------------


def _snapshot(model):
    state = model.state_dict(include_records=True)
    return {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in state.items()}


def _unchanged(model, before):
    after = _snapshot(model)
    assert set(after) == set(before)
    for key, value in before.items():
        if isinstance(value, np.ndarray):
            np.testing.assert_array_equal(after[key], value, err_msg=key)
        else:
            assert after[key] == value, key


BAD_COLUMNS = [
    ([30], "30"),  # out of range: cancer has 30 features
    ([2, -1], "-1"),
    ([1.5], "1.5"),
    (["age"], "'age'"),
    ([True], "True"),
    ([[1, 2]], r"\[1, 2\]"),
]


@pytest.mark.parametrize(("columns", "named"), BAD_COLUMNS)
@pytest.mark.parametrize("name", ["binary", "ridge"])
def test_a_bad_column_is_refused_naming_it_and_changes_nothing(request, name, columns, named):
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X, y, ids=ids)
    model.forget_features([7])
    before = _snapshot(model)
    with pytest.raises(InvalidInput, match=named):
        model.forget_features(columns)
    _unchanged(model, before)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_bad_relabel_is_refused_and_changes_nothing(request, name):
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X, y, ids=ids)
    model.forget(ids[:3])
    before = _snapshot(model)
    good = _new_labels(name, y, np.array([10, 11]))
    with pytest.raises(UnknownRecord, match="'r1'") as forgotten:
        model.relabel([ids[10], ids[1]], good)
    assert "forgotten" in str(forgotten.value)
    with pytest.raises(UnknownRecord, match="'nobody'"):
        model.relabel([ids[10], "nobody"], good)
    with pytest.raises(InvalidInput, match="2 ids"):
        model.relabel([ids[10], ids[11]], good[:1])
    with pytest.raises(InvalidInput, match="'r10'"):
        model.relabel([ids[10], ids[10]], np.array([good[0], y[10]]))
    if name == "ridge":
        with pytest.raises(InvalidInput, match="NaN"):
            model.relabel([ids[10]], [np.nan])
    else:
        with pytest.raises(UnknownClass, match="42"):
            model.relabel([ids[10], ids[11]], np.array([good[0], 42]))
    _unchanged(model, before)


# -- chains, checkpoints and parameters ---------------------------------------------------


@pytest.mark.parametrize("intercept", [False, True], ids=["no-intercept", "intercept"])
@pytest.mark.parametrize("name", sorted(MODELS))
def test_chained_operations_equal_one_refit(request, name, intercept):
    """Forget columns, forget records, learn rows, relabel, forget another column: the
    result equals one fit on the final data."""
    X, y, ids = _data(request, name)
    factory = MODELS[name][0]
    model = factory(fit_intercept=intercept).fit(X[:400], y[:400], ids=ids[:400])
    model.forget_features([2, 8])
    model.forget(ids[:30])
    model.learn(X[400:450], y[400:450], ids=ids[400:450])
    picks = np.arange(100, 400, 25)
    labels = _new_labels(name, y, picks)
    model.relabel([ids[i] for i in picks], labels)
    report = model.forget_features([5])
    assert model.forgotten_features_ == (2, 5, 8)
    fixed = y.copy()
    fixed[picks] = labels
    rows = np.arange(30, 450)
    refit = factory(fit_intercept=intercept, forgotten_features=(2, 5, 8))
    refit.fit(X[rows], fixed[rows], ids=[ids[i] for i in rows])
    _close_to_refit(model, refit, _without(X[rows], [2, 5, 8]), fixed[rows], report)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_forgotten_columns_survive_a_checkpoint(request, name):
    """The pipeline resumes from the checkpoint and the records as stored (their original
    features): the resumed model still ignores the columns, and updates as the original."""
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X[:400], y[:400], ids=ids[:400])
    model.forget_features([0, 4])
    model.relabel(ids[:3], _new_labels(name, y, np.arange(3)))
    state = decode_state(encode_state(model.state_dict()))
    labels = model.held_records(model.record_ids_)[1]
    resumed = type(model).from_state_dict(state, X[:400], labels, ids[:400])
    assert resumed.forgotten_features_ == (0, 4)
    assert resumed.get_params() == model.get_params()
    np.testing.assert_array_equal(_coef(resumed), _coef(model))
    for m in (model, resumed):
        m.learn(X[400:420], y[400:420], ids=ids[400:420])
        m.forget_features([9])
    np.testing.assert_allclose(_coef(resumed), _coef(model), rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_retrain_from_the_params_ignores_the_columns(request, name):
    """What the retrainer does: ``type(m)(**m.get_params()).fit(stored X, stored y)``."""
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X, y, ids=ids)
    report = model.forget_features([3, 12])
    params = model.get_params()
    assert params["forgotten_features"] == (3, 12)
    retrained = type(model)(**params).fit(X, y, ids=ids)
    assert np.all(np.atleast_2d(retrained.coef_)[:, [3, 12]] == 0.0)
    _close_to_refit(model, retrained, _without(X, [3, 12]), y, report)
    with pytest.raises(InvalidInput, match="99"):
        type(model)(**{**params, "forgotten_features": (99,)}).fit(X, y)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_checkpoint_from_before_forgotten_features_loads(request, name):
    X, y, ids = _data(request, name)
    model = MODELS[name][0]().fit(X[:200], y[:200], ids=ids[:200])
    state = model.state_dict(include_records=True)
    del state["forgotten_features"]
    resumed = type(model).from_state_dict(state)
    assert resumed.forgotten_features_ == ()
    np.testing.assert_array_equal(_coef(resumed), _coef(model))


def test_an_empty_model_forgets_features_and_learns_without_them(cancer):
    X, y = cancer
    model = _logistic().fit(X[:20], y[:20])
    model.forget(range(20))
    report = model.forget_features([1])
    assert report.columns == (1,) and report.certificate == 0.0 and report.certified
    model.learn(X[20:200], y[20:200], ids=range(20, 200))
    assert np.all(model.coef_[[1]] == 0.0)
    refit = _logistic(forgotten_features=(1,)).fit(X[20:200], y[20:200])
    np.testing.assert_allclose(model.coef_, refit.coef_, rtol=1e-6, atol=1e-9)


# -- the curvature is down-dated, and the bounds stay bounds --------------------------------


def test_the_curvature_and_its_preconditioner_are_down_dated_exactly(digits):
    """Zeroing columns F of X zeroes rows and columns F of X'CX: the cache's down-date
    equals a rebuild from the zeroed records, and its preconditioner is the inverse of the
    down-dated matrix (float32, as the cache keeps it)."""
    from pipeline.unlearning.curvature import CurvatureCache

    X = digits[0][:500]
    weights = np.random.default_rng(0).uniform(0.05, 0.25, size=(500, 2))
    cache = CurvatureCache(2, X.shape[1])
    cache.recompute(X, weights, 0.5)
    cache.solve(np.ones((2, X.shape[1])))  # factorises: a preconditioner to down-date
    cols = np.array([3, 20, 21])
    cache.drop_features(cols, 0.5)
    rebuilt = CurvatureCache(2, X.shape[1])
    rebuilt.recompute(_without(X, cols), weights, 0.5)
    np.testing.assert_allclose(cache.to_array(), rebuilt.to_array(), rtol=1e-12, atol=1e-12)
    for k in range(2):
        P = cache._inverses[k]
        inverse = np.triu(P).astype(np.float64)
        inverse += np.triu(inverse, 1).T
        np.testing.assert_allclose(inverse @ rebuilt.to_array()[k], np.eye(64), atol=1e-4)


@pytest.mark.parametrize("certificate", ["adaptive", "bound", "exact"])
def test_every_certificate_stays_an_upper_bound_after_a_revision(digits, certificate):
    """After forget_features and relabel, later influence steps are certified by each
    certificate from its down-dated state: never below the residual it bounds."""
    X, y = digits
    ids = list(range(len(y)))
    model = _logistic(certificate=certificate, method="influence", measure_above=0.5)
    model.fit(X, y, ids=ids)
    model.forget_features([10, 30])
    model.relabel([5, 6], (y[[5, 6]] + 3) % 10)
    fixed = y.copy()
    fixed[[5, 6]] = (y[[5, 6]] + 3) % 10
    held = np.ones(len(y), dtype=bool)
    for start in range(100, 160, 20):
        report = model.forget(range(start, start + 20))
        held[start : start + 20] = False
        measured = _gradient_norm(model, _without(X[held], [10, 30]), fixed[held])
        assert report.certificate >= measured * (1 - 1e-9)
    model.learn(X[100:110], y[100:110], ids=range(100, 110))


def test_the_docs_example_runs():
    """docs/features-and-labels.md's Python example runs as written."""
    import re
    from pathlib import Path

    page = Path(__file__).resolve().parents[2] / "docs" / "features-and-labels.md"
    block = re.findall(r"```python\n(.*?)```", page.read_text(), flags=re.S)[0]
    namespace: dict = {}
    exec(compile(block, str(page), "exec"), namespace)  # noqa: S102 - our own docs
    assert namespace["model"].forgotten_features_ == (3, 7, 9)
    assert namespace["ridge"].forgotten_features_ == (0,)


def test_a_small_relabel_within_the_budget_still_takes_the_step(cancer):
    """One label corrected on a model with a wide budget: the gradient it changes is well
    within half the budget, yet Warnecke et al.'s step is taken (the model moves to the
    refit), not skipped as already certified."""
    X, y = cancer
    params = {"lam": 1e-3, "sigma": 10.0, "seed": 3}  # measure_above 0.5: budget/2 = 1.14
    model = LogisticUnlearner(**params).fit(X, y)
    before = _coef(model)
    fixed = y.copy()
    fixed[7] = 1 - y[7]
    report = model.relabel([7], [fixed[7]])
    refit = LogisticUnlearner(**params).fit(X, fixed)
    moved = np.linalg.norm(before - _coef(refit))
    assert np.linalg.norm(_coef(model) - _coef(refit)) < 1e-2 * moved
    assert report.method == "second-order" and report.certified

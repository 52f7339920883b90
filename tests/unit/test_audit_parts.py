"""The audit's membership (LiRA) and disparity parts on scikit-learn's bundled data, and the
audit's per-kind maths against the kind registry.

LiRA (Carlini et al. 2022) with shadow refits must see records that a model still
remembers (the feature-injection setting, where the trained model fits the doomed records
through a feature nothing else has) and must not see them once the default method has
forgotten them: its AUC then equals a retrain's within the issue's 0.02. Disparity
(Mahadevan & Mathioudakis 2022) must pass a model equal to its reference and fail one whose
coefficients for one class were damaged, naming that class.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import LogisticUnlearner
from pipeline.audit import (
    LinearModel,
    ShadowSetup,
    disparity,
    membership,
    roc_auc,
)
from pipeline.audit.certificate import _RESIDUALS
from pipeline.audit.integrity import COEFFICIENTS
from pipeline.audit.lira import _FITTERS
from pipeline.audit.membership import _PENALTY
from pipeline.errors import InvalidInput
from pipeline.unlearning.kinds import KINDS

PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}


def test_roc_auc_is_the_mann_whitney_statistic() -> None:
    assert roc_auc([3, 4], [1, 2]) == 1.0
    assert roc_auc([1, 2], [3, 4]) == 0.0
    assert roc_auc([1, 2], [1, 2]) == 0.5
    assert roc_auc([2, 2], [1, 3]) == 0.5  # ties count one half
    with pytest.raises(InvalidInput, match="both sides"):
        roc_auc([], [1.0])


def test_the_audits_own_maths_covers_every_registered_kind() -> None:
    """The registry lacks the residual, the checkpoint's coefficient fields, the penalty's
    name and an unperturbed shadow fit, so the audit keeps them by kind name: a new kind
    in the registry must get an entry in each."""
    for table in (_RESIDUALS, COEFFICIENTS, _FITTERS, _PENALTY):
        assert set(table) == set(KINDS)


@pytest.fixture(scope="module")
def injected(cancer):
    """Per-record memorisation: 30 doomed records, relabelled, each with a feature of its
    own (so that a shadow without the record cannot learn it from the others, as it would
    from one feature the 30 share); 100 never-seen records; a model trained with the
    doomed records, the same model after forgetting them, and a retrain without them."""
    X, y = cancer
    rng = np.random.default_rng(0)
    doomed = rng.choice(np.flatnonzero(y == 1), 30, replace=False)
    own = np.zeros((len(y), len(doomed)))
    own[doomed, np.arange(len(doomed))] = 1.0
    Xi = np.hstack([X, own])
    Xi /= np.linalg.norm(Xi, axis=1).max()
    yi = y.copy()
    yi[doomed] = 0
    rest = np.setdiff1d(np.arange(len(y)), doomed)
    unseen = np.random.default_rng(2).choice(rest, 100, replace=False)
    train = np.setdiff1d(np.arange(len(y)), unseen)
    model = LogisticUnlearner(**PARAMS).fit(Xi[train], yi[train], ids=train.tolist())
    trained = LinearModel.from_engine(model)
    model.forget(doomed.tolist())
    reference = LogisticUnlearner.from_state_dict(model.state_dict(include_records=True))
    reference.refit(warm_start=False)
    held = np.setdiff1d(train, doomed)
    shadows = ShadowSetup(X=Xi[held], y=yi[held], kind="logistic", penalty=1e-3, fit_intercept=True)
    return {
        "trained": trained,
        "forgotten": LinearModel.from_engine(model),
        "retrained": LinearModel.from_engine(reference),
        "erased": (Xi[doomed], yi[doomed]),
        "unseen": (Xi[unseen], yi[unseen]),
        "shadows": shadows,
    }


def test_lira_sees_remembered_records_and_not_forgotten_ones(injected) -> None:
    i = injected
    before = membership(
        i["trained"], i["retrained"], *i["erased"], *i["unseen"], shadows=i["shadows"]
    )
    checks = {f.check: f.ok for f in before.findings}
    assert checks == {"loss_threshold": False, "lira": False}
    assert before.figures["lira_gap"] > 0.2  # 0.63 against 0.33 under the retrain
    assert before.figures["lira_shadows"] == 8 and before.figures["lira_targets"] == [30, 100]

    after = membership(
        i["forgotten"], i["retrained"], *i["erased"], *i["unseen"], shadows=i["shadows"]
    )
    assert after.verdict == "pass", after.to_dict()
    assert abs(after.figures["lira_gap"]) <= 0.02


def test_lira_is_bounded_and_seeded(injected) -> None:
    """At most max_targets of each side are attacked and pool held records join the
    shadows' population; the same seed gives the same figures."""
    i = injected
    small = ShadowSetup(**{**i["shadows"].__dict__, "max_targets": 20, "pool": 50, "n_shadows": 4})
    runs = [
        membership(i["forgotten"], i["retrained"], *i["erased"], *i["unseen"], shadows=small)
        for _ in range(2)
    ]
    assert runs[0].figures["lira_targets"] == [20, 20]
    assert runs[0].figures["lira_population"] == 20 + 20 + 50
    assert runs[0].figures == runs[1].figures
    with pytest.raises(InvalidInput, match="even"):
        ShadowSetup(**{**i["shadows"].__dict__, "n_shadows": 3})


def test_without_shadows_lira_is_skipped_not_failed(injected) -> None:
    i = injected
    part = membership(i["forgotten"], i["retrained"], *i["erased"], *i["unseen"])
    assert {f.check: f.ok for f in part.findings}["lira"] is None
    assert part.verdict == "pass"


def test_a_ridge_model_gets_closed_form_shadows(digits) -> None:
    X, y = digits
    y = y.astype(float)
    held, erased, unseen = np.arange(0, 600), np.arange(600, 640), np.arange(700, 800)
    model = LinearModel("ridge", *_ridge(X[held], y[held]))
    part = membership(
        model, model, X[erased], y[erased], X[unseen], y[unseen],
        shadows=ShadowSetup(X=X[held], y=y[held], kind="ridge", penalty=1.0, fit_intercept=True),
    )  # fmt: skip
    assert part.verdict == "pass" and part.figures["lira_gap"] == 0.0


def _ridge(X: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    Xa = np.hstack([X, np.ones((len(y), 1))])
    P = np.eye(Xa.shape[1])
    P[-1, -1] = 0.0
    w = np.linalg.solve(Xa.T @ Xa + P, Xa.T @ y)
    return w[:-1], np.asarray(w[-1])


@pytest.fixture(scope="module")
def digits_model(digits):
    X, y = digits
    model = LogisticUnlearner(**PARAMS).fit(X[:1200], y[:1200])
    return LinearModel.from_engine(model), (X[1200:], y[1200:])


def test_disparity_passes_a_model_equal_to_its_reference(digits_model) -> None:
    model, holdout = digits_model
    part = disparity(model, model, *holdout, erased=(holdout[0][:40], holdout[1][:40]))
    assert part.verdict == "pass"
    f = part.figures
    assert f["acc_err"] == 0.0 and f["acc_dis"] == 0.0 and f["worst_class_gap"] == 0.0
    assert set(f["classes"]) == {str(c) for c in range(10)}
    assert f["classes"]["3"]["n"] == int(np.sum(holdout[1] == 3))


def test_disparity_names_the_class_a_damaged_model_fails(digits_model) -> None:
    """Class 3's coefficients zeroed and its intercept lowered: the published model stops
    predicting 3, the overall accuracy drops by about a tenth and class 3 by all of it."""
    model, holdout = digits_model
    coef, intercept = model.coef.copy(), model.intercept.copy()
    coef[3] = 0.0
    intercept[3] = -10.0
    damaged = LinearModel(model.kind, coef, intercept, model.classes)
    part = disparity(damaged, model, *holdout)
    checks = {f.check: f.ok for f in part.findings}
    assert checks["acc_err"] is False and checks["class_accuracy"] is False
    assert checks["acc_dis"] is None  # no erased records given
    failure = next(f for f in part.findings if f.check == "class_accuracy")
    assert "['3']" in failure.detail
    assert part.figures["classes"]["3"]["published"] == 0.0


def test_disparity_by_group_when_a_caller_has_one(digits_model) -> None:
    model, holdout = digits_model
    groups = np.where(np.arange(len(holdout[1])) % 2 == 0, "a", "b")
    part = disparity(model, model, *holdout, groups=groups.tolist())
    assert set(part.figures["groups"]) == {"a", "b"}
    assert {f.check: f.ok for f in part.findings}["group_accuracy"] is True


def test_a_regressor_skips_disparity() -> None:
    model = LinearModel("ridge", np.zeros(3), np.asarray(0.0))
    part = disparity(model, model, np.zeros((4, 3)), np.zeros(4))
    assert part.verdict == "skipped"

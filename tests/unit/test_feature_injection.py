"""The feature-injection test (Izzo et al., AISTATS 2021) and the membership attack (Yeom et
al., 2018) on scikit-learn's bundled breast-cancer and digits data.

A feature that is non-zero only on the records to be deleted (which are given the other
label, so that only that feature explains them) gets a large weight in training; after the
deletion, what is left of it is compared with a retrain on the remaining records (same
objective and perturbation b). With b, a retrain's weight on the feature is not 0 but
``-b_j / (lambda n')``; the figure asserted is the share of the records' contribution that is
left (``pipeline.audit.feature_injection``). Target: at most 1% for the default method.
Achieved here, with ``unlearn train``'s lambda and sigma: about 1e-15 (round-off), in one
batch or in several, because a Newton step on the remaining data lands on the retrained
weight once the feature is zero on every remaining record. Not everywhere: the default's
adaptive certificate takes influence steps between its measurements, and with a budget ten
times larger (sigma = 10, Guo et al.'s) on MNIST 3 vs 8 and Adult in batches of 10 it
measures rarely and leaves up to about 1.4%, within its certificate (a smoke run of the
bench's ``forgetting`` on subsets; ``make bench`` writes the full-size figures); measured
every batch (``certificate="exact"``) it leaves 1e-13.
"""

from __future__ import annotations

import numpy as np
import pytest

from pipeline import LogisticUnlearner
from pipeline.audit import LinearModel, feature_injection, inject_feature, membership

# the lambda and sigma `unlearn train` uses by default; a seeded b (tests only)
PARAMS = {"lam": 1e-3, "sigma": 1.0, "seed": 3, "fit_intercept": True}
TARGET = 0.01  # the target: at most 1% of the trained weight left


@pytest.fixture(scope="module")
def doomed(cancer) -> np.ndarray:
    """30 benign records, which the injection relabels malignant."""
    _, y = cancer
    return np.random.default_rng(0).choice(np.flatnonzero(y == 1), 30, replace=False)


def test_the_default_method_leaves_no_weight_on_an_injected_feature(cancer, doomed) -> None:
    X, y = cancer
    result = feature_injection(X, y, doomed, params=PARAMS, label=0)
    assert result.trained > 1.0  # the feature explains the doomed records (about 4.3)
    # a retrain's weight is the perturbation's doing, -b_j / (lambda n'), not 0
    assert result.retrained == pytest.approx(result.perturbation, rel=1e-8)
    assert result.residual["retrain"] == 0.0
    assert result.residual["fisher"] <= TARGET  # achieved: 0 to round-off
    assert result.residual["influence"] <= TARGET  # one batch: the fit's tolerance, ~1e-9
    assert result.certificate["fisher"] <= result.budget


def test_in_batches_influence_keeps_what_the_default_method_removes(cancer, doomed) -> None:
    """Six batches of five: every influence step but the last is taken while doomed records
    remain, and what it leaves is carried over; the default (Fisher) step removes it."""
    X, y = cancer
    result = feature_injection(
        X, y, doomed, params=PARAMS, label=0, batch=5, variants={"exact": {"certificate": "exact"}}
    )
    assert result.batches == 6
    assert result.residual["fisher"] <= TARGET  # achieved: ~1e-15
    assert result.residual["exact"] <= TARGET
    assert result.certificate["fisher"] <= result.budget
    # the influence model keeps about 40% of the records' weight on the feature, and its
    # certificate says so: over the budget, so the pipeline would refit before publishing
    assert result.residual["influence"] > 0.1
    assert result.certificate["influence"] > result.budget


def test_without_perturbation_the_weight_itself_goes(cancer, doomed) -> None:
    """Izzo et al.'s figure, |w_j| / |w_j trained|, where sigma = 0 makes the target 0."""
    X, y = cancer
    result = feature_injection(X, y, doomed, params={**PARAMS, "sigma": 0.0}, label=0)
    assert result.retrained == 0.0 and result.perturbation == 0.0
    assert result.raw["fisher"] <= TARGET and result.raw["influence"] <= TARGET


def test_one_vs_rest_on_digits(digits) -> None:
    """Ten problems: the weight is the L2 norm of the feature's column over the classes."""
    X, y = digits
    X = X / np.linalg.norm(X, axis=1).max()
    doomed = np.random.default_rng(1).choice(np.flatnonzero(y == 3), 20, replace=False)
    result = feature_injection(X, y, doomed, params=PARAMS, label=8, batch=10)
    assert result.trained > 1.0
    assert result.residual["fisher"] <= TARGET
    assert result.retrained == pytest.approx(result.perturbation, rel=1e-8)


def test_the_membership_attack_sees_the_injected_records_until_they_are_forgotten(
    cancer, doomed
) -> None:
    """Under the trained model the injected feature lowers the doomed records' loss: the
    attack tells them from never-seen records (AUC 0.69) far better than under a retrain,
    where their wrong labels make them the worst-fitted records there are (AUC 0). After the
    default method forgets them, the attack does exactly as well as against the retrain."""
    X, y = cancer
    Xi, yi = inject_feature(X, y, doomed, label=0)
    rest = np.setdiff1d(np.arange(len(y)), doomed)
    unseen = np.random.default_rng(2).choice(rest, 100, replace=False)
    train = np.setdiff1d(np.arange(len(y)), unseen)
    model = LogisticUnlearner(**PARAMS).fit(Xi[train], yi[train], ids=train.tolist())
    trained = LinearModel.from_engine(model)
    model.forget(doomed.tolist())
    reference = LogisticUnlearner(**PARAMS).fit(Xi[train], yi[train], ids=train.tolist())
    reference.forget(doomed.tolist())
    reference.refit(warm_start=False)
    retrained = LinearModel.from_engine(reference)
    erased, never = (Xi[doomed], yi[doomed]), (Xi[unseen], yi[unseen])

    before = membership(trained, retrained, *erased, *never)
    assert before.verdict == "fail"
    assert before.figures["gap"] > 0.5 and before.figures["auc_retrained"] < 0.1
    after = membership(LinearModel.from_engine(model), retrained, *erased, *never)
    assert after.verdict == "pass"
    assert abs(after.figures["gap"]) <= 0.02

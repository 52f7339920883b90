"""Forgetting a federated client on real MNIST: 10 non-IID clients, one-vs-rest.

To keep the unit suite fast (2 cores), a 4,000-row random subset of ``mnist_train``
(Guo et al.'s preprocessing), 2 x 2 average-pooled to 14 x 14 = 196 features and rescaled
to unit rows; the full 60k x 784 figures are in BENCHMARKS.md (``bench/federated.py``).
Guo et al.'s objective (lambda = 1e-3, sigma = 10, seed 0). Each client holds mostly two
digits. Tolerances:

* federated fit vs ``LogisticUnlearner`` on the union: relative parameter distance < 1e-6
  (both stop at a gradient norm of 1e-9 n, i.e. within 1e-6 of the same optimum);
* forgotten model vs ``LogisticUnlearner`` retrained without the client: relative
  parameter distance < 1e-3 and test accuracy within 0.002 (the removal is released at half
  the certified budget, a distance of at most certificate / (lambda n) from the optimum);
* the work: the forget takes at most half of federated retraining's rounds and fewer
  curvature rounds.
"""

import numpy as np
import pytest

from pipeline import LogisticUnlearner
from pipeline.datasets import Dataset, load
from pipeline.federated import FederatedLogistic, make_clients, split_non_iid
from pipeline.unlearning.loss import gradient

GUO = {"lam": 1e-3, "sigma": 10.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}
N = 4_000
FORGOTTEN = "client-3"


def _rel(a, b):
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _pooled(X):
    """28 x 28 images -> 14 x 14 (2 x 2 means), rows back to unit norm."""
    Z = X.reshape(-1, 14, 2, 14, 2).mean(axis=(2, 4)).reshape(len(X), 196)
    return Z / np.linalg.norm(Z, axis=1, keepdims=True)


@pytest.fixture(scope="module")
def run():
    ds = load("mnist_train")
    idx = np.random.default_rng(0).permutation(len(ds.y))[:N]
    X, y = _pooled(ds.X[idx]), ds.y[idx]
    assert ds.X_test is not None
    ds = Dataset(ds.name, X, y, _pooled(ds.X_test), ds.y_test)
    classes = np.arange(10)
    parts = split_non_iid(y, 10, seed=0)
    clients = make_clients(X, y, parts)
    fed = FederatedLogistic(classes, X.shape[1], **GUO).fit(clients)
    out = {"ds": ds, "X": X, "y": y, "parts": parts, "fed_fit_coef": fed.coef_}
    out["fit_rounds"] = (fed.last_rounds_, fed.last_curvature_rounds_)
    out["fit_acc"] = fed.score(ds.X_test, ds.y_test)
    out["central"] = LogisticUnlearner(**GUO).fit(X, y)
    fed.remove_client(FORGOTTEN)
    out["one_step_coef"] = fed.request().W  # after subtract-and-step, before any round
    out["report"] = fed.run(clients)
    out["fed"] = fed
    keep = np.setdiff1d(np.arange(N), parts[int(FORGOTTEN[-1])])
    out["keep"] = keep
    out["retrain"] = LogisticUnlearner(**GUO).fit(X[keep], y[keep])
    rest = {cid: c for cid, c in clients.items() if cid != FORGOTTEN}
    scratch = FederatedLogistic(classes, X.shape[1], **GUO).fit(rest)
    out["scratch_rounds"] = (scratch.last_rounds_, scratch.last_curvature_rounds_)
    out["scratch_coef"] = scratch.coef_
    return out


def test_clients_are_non_iid(run):
    y = run["y"]
    for p in run["parts"]:
        top2 = np.sort(np.bincount(y[p], minlength=10))[-2:].sum() / len(p)
        assert top2 > 0.75  # each client mostly two digits (IID would be ~0.2)


def test_federated_fit_equals_centralised_training_on_the_union(run):
    ds, central = run["ds"], run["central"]
    assert _rel(run["fed_fit_coef"], central.coef_) < 1e-6
    assert run["fit_acc"] == central.score(ds.X_test, ds.y_test)
    assert run["fit_acc"] > 0.6  # chance is 0.1; sigma = 10 at n = 4,000 costs accuracy


def test_forgotten_client_agrees_with_centralised_retraining(run):
    ds, fed, retrain, report = run["ds"], run["fed"], run["retrain"], run["report"]
    assert FORGOTTEN not in fed.members_
    assert report.n_removed == len(run["parts"][3]) and report.n_records == len(run["keep"])
    distance = _rel(fed.coef_, retrain.coef_)
    assert distance < 1e-3
    # the one subtract-and-step (no communication) already got most of the way
    one_step = _rel(run["one_step_coef"], retrain.coef_)
    assert distance < one_step < 1e-2 < _rel(run["fed_fit_coef"], retrain.coef_)
    acc, acc_retrain = fed.score(ds.X_test, ds.y_test), retrain.score(ds.X_test, ds.y_test)
    assert abs(acc - acc_retrain) <= 0.002
    # federated retraining from scratch reaches the same optimum as the centralised one
    assert _rel(run["scratch_coef"], retrain.coef_) < 1e-6


def test_forgetting_is_certified_by_the_remaining_clients_reports(run):
    fed, report, X, y, keep = run["fed"], run["report"], run["X"], run["y"], run["keep"]
    assert report.certified and report.certificate <= 0.5 * report.budget
    # the certificate is the exact residual of the remaining data, computed centrally
    Y = np.where(y[keep][:, None] == np.arange(10)[None, :], 1.0, -1.0)
    B = np.random.default_rng(GUO["seed"]).normal(0.0, GUO["sigma"], size=(10, X.shape[1]))
    residual = gradient(X[keep], Y, fed.coef_, B, GUO["lam"])
    assert np.linalg.norm(residual, axis=1).sum() == pytest.approx(report.certificate, rel=1e-6)
    # strong convexity: ||w - w*|| <= ||residual|| / (lambda n), per problem
    bound = np.linalg.norm(residual, axis=1) / (GUO["lam"] * len(keep))
    gap = np.linalg.norm(fed.coef_ - run["retrain"].coef_, axis=1)
    assert np.all(gap <= bound + 1e-6)


def test_forgetting_costs_far_less_than_federated_retraining(run):
    fed = run["fed"]
    rounds, curvature_rounds = fed.last_rounds_, fed.last_curvature_rounds_
    scratch_rounds, scratch_curvature = run["scratch_rounds"]
    assert curvature_rounds < scratch_curvature
    assert 2 * rounds <= scratch_rounds

"""The price of certification: baselines and the lambda frontier, on bundled data."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidInput
from pipeline.tuning import LamCandidate, baselines, choose_lam, lam_frontier


def test_baselines_score_sklearn_and_the_majority_class(cancer):
    X, y = cancer
    b = baselines("logistic", X[:400], y[:400], X[400:], y[400:])
    assert b.majority == pytest.approx(np.mean(y[400:] == np.bincount(y[:400]).argmax()))
    assert b.sklearn > b.majority + 0.2  # the data are learnable


def test_the_frontier_trades_accuracy_for_removals(cancer):
    X, y = cancer
    params = {"sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0, "fit_intercept": True}
    frontier = lam_frontier(X, y, lams=(1e-4, 1e-1), params=params, max_removed=0.2)
    small, large = frontier
    assert small.budget == large.budget > 0
    # a large penalty keeps the certificate valid longer, at a cost in accuracy
    assert large.removals_supported > small.removals_supported
    assert small.accuracy > large.accuracy
    chosen = choose_lam(frontier, min_removals=large.removals_supported)
    assert chosen.removals_supported >= large.removals_supported


def test_choosing_with_no_candidate_able_is_a_clear_error():
    frontier = [LamCandidate(1e-4, 0.9, 1.0, 0, False), LamCandidate(1e-3, 0.8, 1.0, 3, False)]
    assert choose_lam(frontier, min_removals=2).lam == 1e-3
    assert choose_lam(frontier, min_removals=0).lam == 1e-4
    with pytest.raises(InvalidInput, match="at most 3"):
        choose_lam(frontier, min_removals=10)

"""The objective's gradient and curvature against finite differences."""

import numpy as np
import pytest

from pipeline.unlearning.curvature import CurvatureCache
from pipeline.unlearning.loss import curvature_weights, gradient, objective


@pytest.fixture
def problem():
    rng = np.random.default_rng(1)
    n, d, K = 60, 7, 3
    X = rng.normal(size=(n, d))
    Y = np.where(rng.random((n, K)) < 0.5, -1.0, 1.0)
    W = rng.normal(scale=0.3, size=(K, d))
    B = rng.normal(size=(K, d))
    a = (rng.random(n) < 0.8).astype(float)
    return X, Y, W, B, a


def test_gradient_matches_finite_differences(problem):
    X, Y, W, B, a = problem
    lam, h = 0.05, 1e-6
    G = gradient(X, Y, W, B, lam, a)
    numeric = np.zeros_like(W)
    for k in range(W.shape[0]):
        for j in range(W.shape[1]):
            E = np.zeros_like(W)
            E[k, j] = h
            numeric[k, j] = (
                objective(X, Y, W + E, B, lam, a)[k] - objective(X, Y, W - E, B, lam, a)[k]
            ) / (2 * h)
    np.testing.assert_allclose(G, numeric, rtol=1e-6, atol=1e-7)


def test_curvature_matches_finite_differences_of_gradient(problem):
    X, Y, W, B, a = problem
    lam, h = 0.05, 1e-6
    n = a.sum()
    weights = curvature_weights(X @ W.T) * a[:, None]
    cache = CurvatureCache(W.shape[0], W.shape[1])
    cache.recompute(X, weights, lam * n)
    H = cache.to_array()
    for k in range(W.shape[0]):
        numeric = np.zeros((W.shape[1], W.shape[1]))
        for j in range(W.shape[1]):
            E = np.zeros_like(W)
            E[k, j] = h
            numeric[:, j] = (
                gradient(X, Y, W + E, B, lam, a)[k] - gradient(X, Y, W - E, B, lam, a)[k]
            ) / (2 * h)
        np.testing.assert_allclose(H[k], numeric, rtol=1e-6, atol=1e-7)


def test_cache_solves_after_low_rank_updates(problem):
    """PCG with a stale preconditioner solves the updated system to round-off."""
    X, Y, W, B, a = problem
    lam = 0.05
    weights = curvature_weights(X @ W.T)
    cache = CurvatureCache(W.shape[0], W.shape[1])
    cache.recompute(X, weights, lam * X.shape[0])
    cache.solve(B)  # factorise once
    cache.add(X[:10], weights[:10], lam * 10, sign=-1.0)
    fresh = CurvatureCache(W.shape[0], W.shape[1])
    fresh.recompute(X[10:], weights[10:], lam * (X.shape[0] - 10))
    np.testing.assert_allclose(cache.to_array(), fresh.to_array(), rtol=1e-12, atol=1e-12)
    V = cache.solve(B)
    np.testing.assert_allclose(cache.matvec(V), B, rtol=1e-9, atol=1e-10)
    assert cache.n_factorisations == W.shape[0]  # no refactorisation was needed

"""The cached curvature: in-place symmetric updates, one-triangle products, checked solves."""

import numpy as np
import pytest

from pipeline.unlearning.curvature import (
    CurvatureCache,
    rank_update,
    symmetric_product,
    symmetrize,
)


def test_rank_update_and_symmetric_product_match_dense(digits):
    X, _ = digits
    M = X[:300].T @ X[:300]
    dense = M.copy()
    rng = np.random.default_rng(0)
    for sign in (1.0, -1.0, 1.0):
        A = X[rng.choice(len(X), size=37, replace=False)]
        rank_update(M, A, sign)
        dense += sign * A.T @ A
        v = rng.normal(size=X.shape[1])
        np.testing.assert_allclose(symmetric_product(M, v), dense @ v, rtol=1e-12, atol=1e-10)
        V = rng.normal(size=(5, X.shape[1]))
        np.testing.assert_allclose(symmetric_product(M, V), V @ dense, rtol=1e-12, atol=1e-10)
    symmetrize(M)
    np.testing.assert_allclose(M, dense, rtol=1e-12, atol=1e-10)
    np.testing.assert_array_equal(M, M.T)


def test_cache_tracks_the_weighted_sum_of_its_records(digits):
    X, _ = digits
    n, d = X.shape
    rng = np.random.default_rng(1)
    W = rng.uniform(0.0, 0.25, size=(n, 3))
    cache = CurvatureCache(3, d)
    cache.recompute(X, W, 0.5 * n)
    held = np.ones(n, dtype=bool)
    for _ in range(6):
        rows = rng.choice(np.flatnonzero(held), size=40, replace=False)
        cache.add(X[rows], W[rows], 0.5 * len(rows), sign=-1.0)
        held[rows] = False
    back = np.flatnonzero(~held)[:25]
    cache.add(X[back], W[back], 0.5 * len(back), sign=1.0)
    held[back] = True
    H = cache.to_array()
    for k in range(3):
        Xk = X[held] * np.sqrt(W[held, k])[:, None]
        expected = Xk.T @ Xk + 0.5 * held.sum() * np.eye(d)
        np.testing.assert_allclose(H[k], expected, rtol=1e-11, atol=1e-9)
        np.testing.assert_array_equal(H[k], H[k].T)
    B = rng.normal(size=(3, d))
    V, residuals = cache.solve_checked(B)
    for k in range(3):
        np.testing.assert_allclose(V[k], np.linalg.solve(H[k], B[k]), rtol=1e-8)
        true = np.linalg.norm(H[k] @ V[k] - B[k])
        assert residuals[k] == pytest.approx(true, rel=1e-3, abs=1e-12)
    np.testing.assert_allclose(cache.matvec(V), B, rtol=1e-8, atol=1e-9)
    again = CurvatureCache.from_array(H)
    np.testing.assert_allclose(again.solve(B), V, rtol=1e-9)

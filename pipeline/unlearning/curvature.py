r"""A cached curvature for K problems that share the same records.

For problem k the cache holds

.. math:: \tilde H_k = \sum_{i \in D} c_{ik}\, x_i x_i^\top + \lambda n\, I

where :math:`c_{ik}` is record i's curvature weight taken when the record entered the cache
(at fit, at the last recomputation, or when it was learned). Removing a record subtracts
exactly the term it added, so :math:`\tilde H_k` always describes the current records only
(no trace of a forgotten record remains, up to round-off) and a batch of m records costs
``O(m d^2)`` per problem (a symmetric rank-m update); solves run preconditioned conjugate
gradients (``O(d^2)`` an iteration) against the inverse from the last ``O(d^3)``
factorisation, redone only when that has gone stale. :meth:`recompute` rebuilds every
weight at the current model from all records (``O(n d^2)`` per problem); the unlearner calls
it only when its residual shows that the cached weights have drifted.

The matrices are kept whole and symmetric and the hot path uses numpy's BLAS only
(``X.T @ X`` is a symmetric rank-k update there); SciPy's LAPACK (``dpotrf``/``dpotri``) is
called only to refactorise. Mixing two BLAS thread pools in every update made them contend
for the two cores. One-vs-rest keeps one d x d matrix per class, never a (K d) x (K d)
matrix.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import lapack

from pipeline.errors import InvalidInput

__all__ = ["CurvatureCache"]

Array = NDArray[np.float64]


class CurvatureCache:
    """Per-problem curvature matrices and PCG preconditioners, updated in place.

    Parameters
    ----------
    n_problems : int
        K, the number of stacked binary problems (1 for binary, n_classes for one-vs-rest).
    n_features : int
        d.
    """

    #: PCG iterations after which the preconditioner is rebuilt.
    refactor_after = 12

    def __init__(self, n_problems: int, n_features: int) -> None:
        self.n_problems = n_problems
        self.n_features = n_features
        self._H = np.zeros((n_problems, n_features, n_features))
        self._inverses: list[NDArray[np.float32] | None] = [None] * n_problems
        self.n_factorisations = 0
        self.last_iterations = 0

    # -- building -------------------------------------------------------------------------
    def recompute(self, X: Array, weights: Array, ridge: float) -> None:
        """Rebuild every matrix from all records.

        Parameters
        ----------
        X : ndarray of shape (n_rows, n_features)
        weights : ndarray of shape (n_rows, n_problems)
            Curvature weights, 0 for erased rows.
        ridge : float
            The regulariser's diagonal, ``lambda * n``.
        """
        if self.n_problems > 1 and (weights == weights[:, :1]).all():
            # e.g. at w = 0: every problem has the same curvature, build it once
            self._H[:] = 0.0
            self._add_one(0, X, weights[:, 0], 1.0)
            self._H[1:] = self._H[0]
        else:
            self._H[:] = 0.0
            for k in range(self.n_problems):
                self._add_one(k, X, weights[:, k], 1.0)
        self._shift(ridge)
        self._inverses = [None] * self.n_problems

    def add(self, X: Array, weights: Array, ridge: float, sign: float = 1.0) -> None:
        """Add (``sign=+1``) or subtract (``sign=-1``) records' terms and a diagonal shift.

        The preconditioners are left as they are: PCG absorbs the change.
        """
        if X.shape[0]:
            for k in range(self.n_problems):
                self._add_one(k, X, weights[:, k], sign)
        self._shift(sign * ridge)

    def _add_one(self, k: int, X: Array, weights: Array, sign: float) -> None:
        scaled = X * np.sqrt(weights)[:, None]
        update = scaled.T @ scaled  # numpy recognises A.T @ A: a symmetric rank-k update
        if sign > 0:
            self._H[k] += update
        else:
            self._H[k] -= update

    def _shift(self, ridge: float) -> None:
        if ridge:
            idx = np.arange(self.n_features)
            self._H[:, idx, idx] += ridge

    # -- using ----------------------------------------------------------------------------
    def solve(self, rhs: Array, rtol: float = 1e-10) -> Array:
        r"""Solve :math:`\tilde H_k v_k = rhs_k` for every problem; ``rhs`` is (K, d).

        Preconditioned conjugate gradients on the current matrices, preconditioned by the
        inverse from the last factorisation: after a batch the two differ by a low-rank,
        small change, so a few ``O(d^2)`` iterations replace an ``O(d^3)`` factorisation.
        When the preconditioner has gone stale (more than ``refactor_after`` iterations),
        the matrix is factorised again and the solve restarted.
        """
        out = np.empty_like(rhs)
        for k in range(self.n_problems):
            out[k] = self._solve_one(k, rhs[k], rtol)
        return out

    def _solve_one(self, k: int, b: Array, rtol: float) -> Array:
        H = self._H[k]
        bnorm = float(np.linalg.norm(b))
        if bnorm == 0.0:
            return np.zeros_like(b)
        x = np.zeros_like(b)
        for attempt in range(2):
            P = self._preconditioner(k, fresh=attempt > 0)
            x = (P @ b.astype(np.float32)).astype(np.float64)
            r = b - H @ x
            z = (P @ r.astype(np.float32)).astype(np.float64)
            p = z.copy()
            rz = float(r @ z)
            for it in range(self.refactor_after + 1):
                if float(np.linalg.norm(r)) <= rtol * bnorm:
                    self.last_iterations = it
                    return x
                Hp = H @ p
                alpha = rz / float(p @ Hp)
                x += alpha * p
                r -= alpha * Hp
                z = (P @ r.astype(np.float32)).astype(np.float64)
                rz_new = float(r @ z)
                p = z + (rz_new / rz) * p
                rz = rz_new
        self.last_iterations = self.refactor_after
        return x

    def _preconditioner(self, k: int, fresh: bool) -> NDArray[np.float32]:
        """Inverse of problem k's matrix at its last factorisation (whole, symmetric)."""
        P = self._inverses[k]
        if P is None or fresh:
            factor, info = lapack.dpotrf(self._H[k], lower=0, clean=0)
            if info == 0:
                upper, info = lapack.dpotri(factor, lower=0)
            if info != 0:
                msg = (
                    f"cached curvature of problem {k} is not positive definite "
                    f"(LAPACK info={info}); the regulariser lambda must be > 0"
                )
                raise InvalidInput(msg)
            # float32 is plenty for a preconditioner and halves its memory traffic; the
            # solve itself runs against the float64 matrix
            P = (np.triu(upper) + np.triu(upper, 1).T).astype(np.float32)
            self._inverses[k] = P
            self.n_factorisations += 1
        return P

    def matvec(self, V: Array) -> Array:
        r""":math:`\tilde H_k v_k` for every problem."""
        return np.einsum("kij,kj->ki", self._H, V)

    # -- checkpoints ----------------------------------------------------------------------
    def to_array(self) -> Array:
        """The matrices as one (K, d, d) array."""
        return self._H.copy()

    @classmethod
    def from_array(cls, matrices: Array) -> CurvatureCache:
        """Rebuild a cache from :meth:`to_array`'s output."""
        K, d, _ = matrices.shape
        cache = cls(K, d)
        cache._H = np.array(matrices, dtype=np.float64)
        return cache

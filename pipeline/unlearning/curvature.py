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

A batch updates the matrices in place with BLAS's symmetric rank-k update (``dsyrk``, one
triangle, no temporary) and multiplies with ``dsymv`` (half the memory traffic of a general
product), all on one BLAS thread (:func:`~pipeline.unlearning._blas.single_thread`: these
are sub-millisecond to millisecond products, where two threads of the two BLAS libraries
in the process contended for the two cores). Between updates only the triangle BLAS
maintains is current (:func:`symmetric_product` reads it); :meth:`CurvatureCache.to_array` and
:func:`symmetrize` restore whole symmetric matrices. One-vs-rest keeps one d x d matrix per
class, never a (K d) x (K d) matrix.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import blas, lapack

from pipeline.errors import InvalidInput
from pipeline.unlearning._blas import single_thread

__all__ = ["CurvatureCache", "rank_update", "symmetric_product", "symmetrize"]

Array = NDArray[np.float64]


def _fortran_upper(M: Array) -> Array:
    """The BLAS view of a C-ordered symmetric matrix: its transpose, Fortran-ordered, whose
    upper triangle (the C array's lower triangle) is the one kept current."""
    return M.T


def rank_update(M: Array, A: Array, alpha: float) -> None:
    """``M += alpha * A.T @ A`` in place for a C-ordered symmetric ``M`` (one triangle).

    ``A`` is (m, d). Only the triangle BLAS maintains is written: read ``M`` through
    :func:`symmetric_product` or :func:`symmetrize` it first.
    """
    if A.shape[0] == 0:
        return
    target = _fortran_upper(M)
    At = np.ascontiguousarray(A).T  # (d, m), Fortran-ordered: no copy in the wrapper
    out = blas.dsyrk(alpha=alpha, a=At, beta=1.0, c=target, trans=0, lower=0, overwrite_c=1)
    if not np.shares_memory(out, M):  # the wrapper had to copy: write the result back
        np.copyto(target, np.triu(out) + np.triu(out, 1).T)


def symmetric_product(M: Array, v: Array) -> Array:
    """``M @ v`` for a symmetric ``M`` kept by :func:`rank_update` (reads one triangle);
    ``v`` of shape (d,), or (k, d) for k vectors at once (returns (k, d))."""
    if v.ndim == 1:
        return np.asarray(blas.dsymv(1.0, _fortran_upper(M), v, lower=0), dtype=np.float64)
    if v.shape[0] <= 6:  # dsymm on a thin block is slower than a few dsymv (measured)
        return np.array([symmetric_product(M, row) for row in v]).reshape(v.shape)
    out = blas.dsymm(1.0, _fortran_upper(M), np.ascontiguousarray(v).T, side=0, lower=0)
    return np.asarray(out, dtype=np.float64).T


def symmetrize(M: Array) -> None:
    """Copy the maintained triangle over the other, in place."""
    lower = np.tril_indices(M.shape[0], -1)
    M.T[lower] = M[lower]


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
            self._H[0] = _weighted_gram(X, weights[:, 0])
            self._H[1:] = self._H[0]
        else:
            for k in range(self.n_problems):
                self._H[k] = _weighted_gram(X, weights[:, k])
        self._shift(ridge)
        self._inverses = [None] * self.n_problems

    def add(self, X: Array, weights: Array, ridge: float, sign: float = 1.0) -> None:
        """Add (``sign=+1``) or subtract (``sign=-1``) records' terms and a diagonal shift.

        The preconditioners are left as they are: PCG absorbs the change.
        """
        with single_thread():
            if X.shape[0]:
                for k in range(self.n_problems):
                    self._add_one(k, X, weights[:, k], sign)
            self._shift(sign * ridge)

    def drop_features(self, columns: NDArray[np.intp], ridge: float) -> None:
        r"""Down-date every matrix for features ``columns`` set to 0 in every record.

        Zeroing column j of X zeroes row and column j of :math:`X^\top C X`, so the matrix
        becomes its block on the other features plus ``ridge`` (:math:`\lambda n`) on the
        dropped diagonal: ``O(d |F|)`` per problem, exact, no pass over the records. The
        preconditioner (the inverse at the last factorisation, M) is down-dated by the
        Schur complement, :math:`(H_{RR})^{-1} = M_{RR} - M_{RF} M_{FF}^{-1} M_{FR}`
        (``O(d^2 |F|)``), instead of factorising again (``O(d^3)``).
        """
        cols = np.asarray(columns, dtype=np.intp)
        if cols.size == 0:
            return
        for k in range(self.n_problems):
            H = self._H[k]
            H[cols, :] = 0.0
            H[:, cols] = 0.0
            H[cols, cols] = ridge
            P = self._inverses[k]
            self._inverses[k] = (
                None if P is None or ridge <= 0 else _drop_from_inverse(P, cols, ridge)
            )

    def lipschitz(self) -> Array:
        """An upper bound of each matrix's largest eigenvalue (Gershgorin: the largest
        absolute row sum), shape (K,); ``O(K d^2)``."""
        return np.abs(self.to_array()).sum(axis=2).max(axis=1)

    def _add_one(self, k: int, X: Array, weights: Array, sign: float) -> None:
        scaled = X * np.sqrt(weights)[:, None]
        rank_update(self._H[k], scaled, 1.0 if sign > 0 else -1.0)

    def _shift(self, ridge: float) -> None:
        if ridge:
            idx = np.arange(self.n_features)
            self._H[:, idx, idx] += ridge

    # -- using ----------------------------------------------------------------------------
    def solve(self, rhs: Array, rtol: float = 1e-10) -> Array:
        r"""Solve :math:`\tilde H_k v_k = rhs_k` for every problem; ``rhs`` is (K, d)."""
        return self.solve_checked(rhs, rtol)[0]

    def solve_checked(self, rhs: Array, rtol: float = 1e-10) -> tuple[Array, Array]:
        r"""Solve :math:`\tilde H_k v_k = rhs_k` for every problem, and report how well.

        Returns the solutions and the true residual norms
        :math:`\lVert \tilde H_k v_k - rhs_k\rVert`, recomputed from the matrix at the end
        (not PCG's recursive estimate), which the certificates add to their bounds.

        Preconditioned conjugate gradients on the current matrices, preconditioned by the
        inverse from the last factorisation: after a batch the two differ by a low-rank,
        small change, so a few ``O(d^2)`` iterations replace an ``O(d^3)`` factorisation.
        When the preconditioner has gone stale (more than ``refactor_after`` iterations),
        the matrix is factorised again and the solve restarted.
        """
        out = np.empty_like(rhs)
        residuals = np.empty(rhs.shape[0])
        with single_thread():
            for k in range(self.n_problems):
                out[k], residuals[k] = self._solve_one(k, rhs[k], rtol)
        return out, residuals

    def _solve_one(self, k: int, b: Array, rtol: float) -> tuple[Array, float]:
        H = self._H[k]
        bnorm = float(np.linalg.norm(b))
        if bnorm == 0.0:
            return np.zeros_like(b), 0.0
        tol2 = (rtol * bnorm) ** 2
        Hf = _fortran_upper(H)
        dsymv, ssymv, daxpy, f32 = blas.dsymv, blas.ssymv, blas.daxpy, np.float32
        x = np.zeros_like(b)
        for attempt in range(2):
            P = self._preconditioner(k, fresh=attempt > 0)
            # start from 0: the first iteration then lands on the best multiple of P b
            # (at least as good as starting from P b, and two matrix passes cheaper)
            x = np.zeros_like(b)
            r = b.copy()
            z = ssymv(1.0, P, r.astype(f32), lower=0).astype(np.float64)
            p = z.copy()
            rz = r @ z
            for it in range(1, self.refactor_after + 1):
                Hp = dsymv(1.0, Hf, p, lower=0)
                alpha = rz / (p @ Hp)
                x = daxpy(p, x, a=alpha)  # in place: no temporaries
                r = daxpy(Hp, r, a=-alpha)
                # tested before preconditioning r: the last iteration needs no z
                if r @ r <= tol2:
                    self.last_iterations = it
                    true = float(np.linalg.norm(b - dsymv(1.0, Hf, x, lower=0)))
                    if true <= 10.0 * rtol * bnorm or attempt > 0:
                        return x, true
                    break  # the recursion drifted from the true residual: refactorise
                z = ssymv(1.0, P, r.astype(f32), lower=0).astype(np.float64)
                rz_new = r @ z
                p = daxpy(p, z, a=rz_new / rz)  # z + beta p, in z
                rz = rz_new
        self.last_iterations = self.refactor_after
        return x, float(np.linalg.norm(b - symmetric_product(H, x)))

    def _preconditioner(self, k: int, fresh: bool) -> NDArray[np.float32]:
        """Inverse of problem k's matrix at its last factorisation (upper triangle,
        Fortran-ordered, for ``ssymv``)."""
        P = self._inverses[k]
        if P is None or fresh:
            factor, info = lapack.dpotrf(_fortran_upper(self._H[k]), lower=0, clean=0)
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
            P = np.asfortranarray(upper, dtype=np.float32)
            self._inverses[k] = P
            self.n_factorisations += 1
        return P

    def matvec(self, V: Array) -> Array:
        r""":math:`\tilde H_k v_k` for every problem."""
        out = np.empty_like(V)
        with single_thread():
            for k in range(self.n_problems):
                out[k] = symmetric_product(self._H[k], V[k])
        return out

    # -- checkpoints ----------------------------------------------------------------------
    def to_array(self) -> Array:
        """The matrices as one (K, d, d) array (whole and symmetric)."""
        out = self._H.copy()
        for k in range(self.n_problems):
            symmetrize(out[k])
        return out

    @classmethod
    def from_array(cls, matrices: Array) -> CurvatureCache:
        """Rebuild a cache from :meth:`to_array`'s output."""
        K, d, _ = matrices.shape
        cache = cls(K, d)
        cache._H = np.array(matrices, dtype=np.float64, order="C")
        return cache


def _drop_from_inverse(
    P: NDArray[np.float32], cols: NDArray[np.intp], ridge: float
) -> NDArray[np.float32]:
    """The preconditioner of :meth:`CurvatureCache.drop_features`: ``P`` holds the inverse
    M in its upper triangle (Fortran order, as ``dpotri`` leaves it); returns the inverse
    of the down-dated matrix in the same form."""
    M = np.triu(P).astype(np.float64)
    M += np.triu(M, 1).T
    keep = np.setdiff1d(np.arange(M.shape[0]), cols)
    cross = M[np.ix_(keep, cols)]
    out = np.zeros_like(M)
    out[np.ix_(keep, keep)] = M[np.ix_(keep, keep)] - cross @ np.linalg.solve(
        M[np.ix_(cols, cols)], cross.T
    )
    out[cols, cols] = 1.0 / ridge
    return np.asfortranarray(out, dtype=np.float32)


_GRAM_BLOCK = 2048
"""Rows per block of :func:`_weighted_gram`: a block's scaled copy stays in cache."""


def _weighted_gram(X: Array, weights: Array) -> Array:
    """``X.T @ diag(weights) @ X`` (the ``O(n d^2)`` recomputation, not the per-batch path).

    Rows of weight 0 (erased records) are skipped, and the rest are scaled and summed a
    block at a time (numpy runs each ``S.T @ S`` as a symmetric rank-k update): on Adult
    (48,842 x 124, a fifth of the rows erased) 27 ms on one thread, against 37 ms for
    one scaled copy of the whole buffer.
    """
    rows = np.flatnonzero(weights)
    root = np.sqrt(weights)
    out = np.zeros((X.shape[1], X.shape[1]))
    for start in range(0, rows.size, _GRAM_BLOCK):
        block = rows[start : start + _GRAM_BLOCK]
        scaled = X[block] * root[block, None]
        out += scaled.T @ scaled
    return out

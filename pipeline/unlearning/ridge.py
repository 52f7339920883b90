r"""Exact removal for ridge regression.

The model minimises

.. math:: \tfrac12 \lVert y - \tilde X w\rVert^2 + \tfrac{\alpha}{2} \lVert w_{1:d}\rVert^2
          + b^\top w

where :math:`\tilde X` is X with a column of ones when ``fit_intercept`` (the intercept is not
penalised, as in scikit-learn's ``Ridge``) and b is an optional objective perturbation
(:math:`\mathcal N(0, \sigma^2 I)`, off by default). It keeps the sufficient statistics
:math:`A = \tilde X^\top \tilde X + \alpha P` and :math:`c = \tilde X^\top y`; a batch changes
them by its own rows (``O(m d^2)``) and the new solution :math:`A^{-1}(c - b)` follows from
one Cholesky factorisation (``O(d^3 / 3)``), whatever n is. The update therefore *is* the
retrained solution, up to round-off; the certificate is the normal equations' residual
:math:`\lVert A w - (c - b)\rVert`, i.e. the exact gradient norm.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable
from typing import Annotated, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.linalg import lapack

from pipeline.errors import InvalidInput
from pipeline.unlearning import certify
from pipeline.unlearning.base import BaseUnlearner, Progress, check_features
from pipeline.unlearning.features import as_columns
from pipeline.unlearning.perturbation import check_seed, draw_perturbation
from pipeline.unlearning.report import EMPTIED, UpdateReport
from pipeline.unlearning.state import Saved
from pipeline.unlearning.steps import REVISIONS

__all__ = ["RidgeUnlearner"]

Array = NDArray[np.float64]

METHODS = ("exact", "fisher", "influence")


class RidgeUnlearner(BaseUnlearner):
    """Ridge regression whose removals and additions are exact.

    Parameters
    ----------
    alpha : float
        L2 penalty on the coefficients (not the intercept), as scikit-learn's ``Ridge``.
    fit_intercept : bool
    sigma, epsilon, delta : float
        Optional objective perturbation and its guarantee; ``sigma=0`` (default) leaves
        the objective unperturbed, so the model equals scikit-learn's ``Ridge``.
    seed : int or None
        None (the default): b is drawn from the operating system's entropy, secret; an
        int makes it reproducible and voids the guarantee (tests only; see
        :mod:`pipeline.unlearning.perturbation`).
    forgotten_features : tuple of int
        Feature columns (0-based) the model never uses: zeroed in every record, their
        weights and their part of b held at 0 (:meth:`forget_features` adds to it).

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    certificate_ : float
        Norm of the objective's gradient at the released model (round-off only).
    budget_ : float

    Notes
    -----
    Forgetting a model's last records leaves a model that holds none (report method
    ``"emptied"``): ``coef_`` and ``intercept_`` are 0, so it predicts 0 for every row,
    ``certificate_`` is 0 and every report says ``certified``. It keeps b, checkpoints and
    resumes like any model, and its next :meth:`learn` fits the new records exactly
    (method ``"fit"``).
    """

    kind = "ridge"
    method = "exact"

    # fitted state, set by fit and saved in checkpoints (see pipeline.unlearning.state)
    _A: Annotated[Array, Saved()]
    _c: Annotated[Array, Saved()]
    _w: Annotated[Array, Saved()]
    _b: Annotated[Array, Saved()]
    _certificate: Annotated[float, Saved("certificate")]

    def __init__(
        self,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        sigma: float = 0.0,
        epsilon: float = 1.0,
        delta: float = 1e-4,
        seed: int | None = None,
        forgotten_features: Iterable[int] = (),
    ) -> None:
        if not alpha > 0:
            msg = f"alpha must be > 0 for the removal to stay well posed, got {alpha}"
            raise InvalidInput(msg)
        if sigma < 0 or epsilon <= 0 or not 0 < delta < 1:
            msg = f"need sigma >= 0, epsilon > 0, 0 < delta < 1; got {sigma}, {epsilon}, {delta}"
            raise InvalidInput(msg)
        self.alpha = float(alpha)
        self.fit_intercept = bool(fit_intercept)
        self.sigma = float(sigma)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.seed = check_seed(seed)
        self.forgotten_features = as_columns(forgotten_features)
        self.budget_ = certify.budget(self.sigma, self.epsilon, self.delta)

    # -- public attributes ----------------------------------------------------------------
    @property
    def coef_(self) -> Array:
        return self._w[: self.n_features_in_].copy()

    @property
    def intercept_(self) -> float:
        return float(self._w[-1]) if self.fit_intercept else 0.0

    @property
    def certificate_(self) -> float:
        return self._certificate

    @property
    def certificate_kind(self) -> str:
        return "exact"

    def predict(self, X: ArrayLike) -> Array:
        """Predicted targets, shape (n_samples,)."""
        self._fitted_records()
        return self._augment(check_features(X, self.n_features_in_)) @ self._w

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Coefficient of determination R^2, as scikit-learn's regressors."""
        y_arr = np.asarray(y, dtype=np.float64)
        resid = y_arr - self.predict(X)
        total = y_arr - y_arr.mean()
        return float(1.0 - (resid @ resid) / (total @ total))

    # -- targets --------------------------------------------------------------------------
    def _encode_fit_targets(self, y: NDArray[Any]) -> Array:
        return self._encode_learn_targets(y)

    def _encode_learn_targets(self, y: NDArray[Any]) -> Array:
        arr = np.asarray(y, dtype=np.float64)
        if not np.isfinite(arr).all():
            msg = "y contains NaN or infinity; ridge targets must be finite"
            raise InvalidInput(msg)
        return arr

    def _decode_targets(self, targets: NDArray[Any]) -> NDArray[Any]:
        return targets.copy()

    def _resolve_method(self, method: str | None) -> str:
        if method is not None and method not in METHODS:
            msg = f"method must be one of {METHODS}, got {method!r}"
            raise InvalidInput(msg)
        return "exact"

    # -- maths ----------------------------------------------------------------------------
    def _resolve_revision(self, method: str | None) -> str:
        # every step of ridge is exact; "retrain" solves again from the records
        if method is not None and method not in (*REVISIONS, "exact", "retrain"):
            msg = f"method must be one of {(*REVISIONS, 'exact', 'retrain')}, got {method!r}"
            raise InvalidInput(msg)
        return "retrain" if method == "retrain" else "exact"

    def _penalty(self) -> Array:
        diag = np.full(self._width, self.alpha)
        if self.fit_intercept:
            diag[-1] = 0.0
        return np.diag(diag)

    def _fit(self) -> None:
        rec = self._fitted_records()
        self._b = draw_perturbation(self.sigma, (self._width,), self.seed)
        self._b[list(self.forgotten_features)] = 0.0  # weights held at 0: no b there
        self._rebuild(rec.X, rec.targets)

    def _rebuild(self, X: Array, y: Array) -> None:
        self._A = X.T @ X + self._penalty()
        self._c = X.T @ y
        self._solve()

    def _solve(self) -> None:
        factor, info = lapack.dpotrf(self._A, lower=0, clean=1)
        if info != 0:
            msg = f"ridge normal equations are not positive definite (dpotrf info={info})"
            raise InvalidInput(msg)
        rhs = self._c - self._b
        self._w = lapack.dpotrs(factor, rhs)[0]
        self._certificate = float(np.linalg.norm(self._A @ self._w - rhs))

    def _update(self, X: Array, y: Array, sign: float) -> None:
        self._A += sign * (X.T @ X)
        self._c += sign * (X.T @ y)
        self._solve()

    def _clear(self) -> None:
        r"""The state of a model that holds no record: w = 0, certificate 0; b is kept.

        With no record :math:`A = \alpha P` is singular when ``fit_intercept`` (the
        intercept is not penalised) and the perturbed objective has no minimiser; the model
        released instead is the constant w = 0, which depends on no record (certificate 0).
        A and c are set exactly (:math:`\alpha P` and 0): no round-off of the forgotten
        records remains. The next :meth:`learn` fits from the new records, with the same b.
        """
        self._A = self._penalty()
        self._c = np.zeros(self._width)
        self._w = np.zeros(self._width)
        self._certificate = 0.0

    def _remove(
        self, rows: NDArray[np.intp], method: str, absent: tuple[Hashable, ...]
    ) -> UpdateReport:
        rec = self._fitted_records()
        if rows.size and rows.size == rec.n_records:  # the last records (see _clear)
            rec.erase(rows)
            rec.compact()
            self._clear()
            return self._report(EMPTIED, n_removed=int(rows.size), absent=absent)
        if rows.size:
            self._update(rec.X[rows], rec.targets[rows], -1.0)
            rec.erase(rows)
            rec.compact()
        return self._report("exact", n_removed=int(rows.size), absent=absent)

    def _add(self, rows: NDArray[np.intp]) -> UpdateReport:
        rec = self._fitted_records()
        if rows.size and rows.size == rec.n_records:  # an empty model learns as it fits
            self._rebuild(rec.X[rows], rec.targets[rows])
            return self._report("fit", n_added=int(rows.size))
        self._update(rec.X[rows], rec.targets[rows], 1.0)
        return self._report("exact", n_added=int(rows.size))

    def _refit(self, progress: Progress | None, warm_start: bool = True) -> UpdateReport:
        # the solution is exact: warm or cold, the refit solves the normal equations again
        rec = self._fitted_records()
        present = rec.weights > 0
        if present.any():
            self._rebuild(rec.X[present], rec.targets[present])
        else:  # nothing to fit: the model stays empty
            self._clear()
        if progress is not None:
            progress(1.0, "done")
        return self._report("retrain")

    def _forget_columns(self, columns: NDArray[np.intp], method: str) -> UpdateReport:
        r"""Zeroing columns F of X zeroes rows and columns F of :math:`X^\top X` and entries
        F of :math:`X^\top y` (``O(d |F|)``, no pass over the records); with :math:`b_F = 0`
        and :math:`A_{FF} = \alpha I` one solve gives the exact solution, :math:`w_F = 0`
        (the factor keeps the zero pattern: no round-off reaches those weights)."""
        rec = self._fitted_records()
        if columns.size == 0:
            return self._report(method)
        rec.zero_columns(columns)
        rec.refresh_max_norm()
        self._b[columns] = 0.0
        self._A[columns, :] = 0.0
        self._A[:, columns] = 0.0
        self._A[columns, columns] = self.alpha
        self._c[columns] = 0.0
        if rec.n_records == 0:  # w = 0 already, nothing to solve (see _clear)
            return self._report(method)
        if method == "retrain":
            return self._refit(None)
        self._solve()
        return self._report("exact")

    def _relabel(self, rows: NDArray[np.intp], targets: NDArray[Any], method: str) -> UpdateReport:
        """A changes by nothing, c by the rows' features times their change of target."""
        rec = self._fitted_records()
        if rows.size == 0:
            return self._report(method)
        change = targets - rec.targets[rows]
        rec.relabel(rows, targets)
        if method == "retrain":
            return self._refit(None)
        self._c += rec.X[rows].T @ change
        self._solve()
        return self._report("exact")

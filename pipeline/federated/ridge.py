r"""Federated ridge regression: the sufficient statistics add up, so removal is exact.

The global model minimises, over the union of the member clients' rows,

.. math:: \tfrac12 \lVert y - \tilde X w\rVert^2 + \tfrac{\alpha}{2}\lVert w_{1:d}\rVert^2
          + b^\top w

as :class:`~pipeline.unlearning.RidgeUnlearner` (intercept unpenalised, optional
perturbation b, secret unless a test fixes ``seed``). Each client reports
:math:`g_c = \tilde X_c^\top(\tilde X_c w - y_c)` and
:math:`H_c = \tilde X_c^\top \tilde X_c` once; the objective is quadratic, so the
server's Newton step :math:`w - (\sum_c H_c + \alpha P)^{-1}(\sum_c g_c + \alpha P w + b)` is
the exact solution and the gradient at any other w follows from the statistics
(:math:`g_c(w') = g_c(w) + H_c (w' - w)`). Training takes one round; forgetting a client
subtracts its statistics and takes none, and reproduces the retrained solution to
round-off (:meth:`FederatedRidge.client_statistics` computes a client's :math:`g_c, H_c`
in ``O(n_c d^2)``).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.federated.server import FederatedServer
from pipeline.federated.statistics import ClientStatistics, RoundRequest
from pipeline.unlearning.base import check_features

__all__ = ["FederatedRidge"]

Array = NDArray[np.float64]


class FederatedRidge(FederatedServer):
    """Server of a federated ridge regression whose client removals are exact.

    Parameters
    ----------
    n_features : int
    alpha : float
        L2 penalty on the coefficients (not the intercept).
    fit_intercept : bool
    sigma, epsilon, delta : float
        Optional perturbation (``sigma = 0``, the default, leaves it off) and its budget.
    seed : int or None
        None (the default): b from the operating system's entropy, secret; an int makes
        it reproducible and voids the guarantee (tests only).
    tol : float

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,)
    intercept_ : float
    certificate_ : float
        Norm of the objective's gradient at the released model (round-off only).
    """

    kind = "ridge"
    _quadratic = True
    _removal_method = "exact"

    def __init__(
        self,
        n_features: int,
        alpha: float = 1.0,
        *,
        fit_intercept: bool = True,
        sigma: float = 0.0,
        epsilon: float = 1.0,
        delta: float = 1e-4,
        seed: int | None = None,
        tol: float = 1e-9,
    ) -> None:
        if not alpha > 0 or n_features < 1:
            msg = f"need alpha > 0 and n_features >= 1, got {alpha}, {n_features}"
            raise InvalidInput(msg)
        super().__init__(
            sigma=sigma,
            epsilon=epsilon,
            delta=delta,
            seed=seed,
            tol=tol,
            max_rounds=5,
            refresh_above=0.0,
        )
        self.n_features_in_ = int(n_features)
        self.alpha = float(alpha)
        self.fit_intercept = bool(fit_intercept)

    @classmethod
    def build(cls, n_features: int, classes: Sequence[Any] | None, **params: Any) -> Self:
        return cls(n_features, **params)

    @staticmethod
    def client_statistics(
        client_id: str, X: Array, y: NDArray[Any], request: RoundRequest
    ) -> ClientStatistics:
        """The squared-error sums of the module docstring (a trailing 1 when ``augment``)."""
        if request.augment:
            X = np.hstack([X, np.ones((X.shape[0], 1))])
        w = request.W[0]
        G = (X.T @ (X @ w - y.astype(np.float64)))[None, :]
        H = (X.T @ X)[None, :, :] if request.curvature else None
        return ClientStatistics(
            client_id=client_id, round=request.round, n=int(X.shape[0]), gradient=G, hessian=H
        )

    @property
    def _shape(self) -> tuple[int, int]:
        return (1, self.n_features_in_ + int(self.fit_intercept))

    def _penalty(self, n: int) -> Array:
        diag = np.full(self._shape[1], self.alpha)
        if self.fit_intercept:
            diag[-1] = 0.0
        return diag

    def _request_fields(self) -> dict[str, Any]:
        return {"augment": self.fit_intercept}

    @property
    def coef_(self) -> Array:
        return self._W_released()[0, : self.n_features_in_].copy()

    @property
    def intercept_(self) -> float:
        return float(self._W_released()[0, -1]) if self.fit_intercept else 0.0

    def predict(self, X: ArrayLike) -> Array:
        """Predicted targets, shape (n_samples,)."""
        return check_features(X, self.n_features_in_) @ self.coef_ + self.intercept_

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Coefficient of determination R^2."""
        y_arr = np.asarray(y, dtype=np.float64)
        resid = y_arr - self.predict(X)
        total = y_arr - y_arr.mean()
        return float(1.0 - (resid @ resid) / (total @ total))

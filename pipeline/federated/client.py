r"""A federated client: its own rows, and its statistics for a given global model.

For logistic problems (labels :math:`y_{ik} = +1` when row i's label is problem k's class,
else :math:`-1`; :math:`\ell(z) = \log(1 + e^{-z})`, Guo et al., ICML 2020, eq. 2):

.. math::

    g_{ck} = \sum_{i \in D_c} -y_{ik}\,\sigma(-y_{ik} x_i^\top w_k)\,x_i, \qquad
    H_{ck} = \sum_{i \in D_c} \sigma(x_i^\top \bar w_k)\,\sigma(-x_i^\top \bar w_k)\,x_i x_i^\top

and for ridge (one problem, :math:`\tilde x_i` with a trailing 1 when the model has an
intercept) :math:`g_c = \tilde X_c^\top(\tilde X_c w - y_c)`, :math:`H_c = \tilde X_c^\top
\tilde X_c`. Computing them costs ``O(n_c d K)`` for the gradient and ``O(n_c d^2 K)`` for
the curvature (once, not K times, when every problem has the same curvature weights, as at
w = 0). The client never sends rows, only these sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.federated.statistics import ClientStatistics, RoundRequest
from pipeline.unlearning.base import check_features
from pipeline.unlearning.loss import curvature_weights, gradient_terms

__all__ = ["FederatedClient"]

Array = NDArray[np.float64]


def _gram(X: Array, weights: Array) -> Array:
    """``sum_i weights_i x_i x_i^T``, shape (d, d), as a symmetric rank-n update."""
    scaled = X * np.sqrt(weights)[:, None]
    return scaled.T @ scaled


class FederatedClient:
    """A participant holding ``X, y`` locally; answers the server's round requests.

    Parameters
    ----------
    client_id : str
    X : array-like of shape (n_samples, n_features)
    y : array-like of shape (n_samples,)
        Class labels (logistic) or real targets (ridge).
    """

    def __init__(self, client_id: str, X: ArrayLike, y: ArrayLike) -> None:
        self.client_id = str(client_id)
        self._X = check_features(X, what=f"client {client_id!r} X")
        self._y = np.asarray(y)
        if self._y.ndim != 1 or self._y.shape[0] != self._X.shape[0]:
            msg = (
                f"client {client_id!r}: y must be 1-D with one label per row of X "
                f"({self._X.shape[0]}), got shape {self._y.shape}"
            )
            raise InvalidInput(msg)
        self._selection: tuple[Any, tuple[Array, NDArray[Any]]] | None = None

    @property
    def n_samples(self) -> int:
        """Rows the client holds."""
        return int(self._X.shape[0])

    def statistics(self, request: RoundRequest) -> ClientStatistics:
        """The gradient, curvature (when asked) and count of this client's rows at ``W``.

        Parameters
        ----------
        request : RoundRequest

        Returns
        -------
        ClientStatistics
            ``gradient`` of shape (n_problems, d), ``hessian`` of shape
            (n_problems, d, d) or None.
        """
        if request.kind == "ridge":
            return self._ridge(request)
        return self._logistic(request)

    def _logistic(self, req: RoundRequest) -> ClientStatistics:
        if req.problems is None:
            msg = "a logistic round request must name its problems' classes"
            raise InvalidInput(msg)
        X, y = self._rows(req)
        W = req.W
        Y = np.where(y[:, None] == np.asarray(req.problems)[None, :], 1.0, -1.0)
        G = gradient_terms(X @ W.T, Y).T @ X
        H = None
        if req.curvature:
            at = W if req.curvature_at is None else req.curvature_at
            C = curvature_weights(X @ at.T)
            K, d = W.shape
            H = np.empty((K, d, d))
            if K > 1 and (C == C[:, :1]).all():  # e.g. at w = 0: one matrix for all problems
                H[:] = _gram(X, C[:, 0])
            else:
                for k in range(K):
                    H[k] = _gram(X, C[:, k])
        return ClientStatistics(
            client_id=self.client_id,
            round=req.round,
            n=int(X.shape[0]),
            gradient=G,
            hessian=H,
            rows_label=req.rows_label,
        )

    def _rows(self, req: RoundRequest) -> tuple[Array, NDArray[Any]]:
        """The rows a request covers (cached: rounds repeat the same selection)."""
        key = (req.rows_label, req.classes)
        if self._selection is None or self._selection[0] != key:
            if req.rows_label is not None:
                mask = self._y == req.rows_label
            elif req.classes is not None:
                mask = np.isin(self._y, np.asarray(req.classes))
            else:
                mask = np.ones(self.n_samples, dtype=bool)
            rows = (self._X, self._y) if mask.all() else (self._X[mask], self._y[mask])
            self._selection = (key, rows)
        return self._selection[1]

    def _ridge(self, req: RoundRequest) -> ClientStatistics:
        X = self._X
        if req.augment:
            X = np.hstack([X, np.ones((X.shape[0], 1))])
        y = self._y.astype(np.float64)
        w = req.W[0]
        G = (X.T @ (X @ w - y))[None, :]
        H = (X.T @ X)[None, :, :] if req.curvature else None
        return ClientStatistics(
            client_id=self.client_id, round=req.round, n=self.n_samples, gradient=G, hessian=H
        )

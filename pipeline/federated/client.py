r"""A federated client: its own rows, and its statistics for a given global model.

A round request names the model kind; the kind's federated server
(:meth:`~pipeline.federated.server.FederatedServer.client_statistics`, found through the
registry of model kinds, :mod:`pipeline.unlearning.kinds`) gives the sums, e.g. for ridge
(one problem, :math:`\tilde x_i` with a trailing 1 when the model has an intercept)
:math:`g_c = \tilde X_c^\top(\tilde X_c w - y_c)`, :math:`H_c = \tilde X_c^\top \tilde X_c`,
and for logistic the gradient and curvature of the log-loss per one-vs-rest problem
(:mod:`pipeline.federated.logistic`). The client never sends rows, only these sums.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.federated.statistics import ClientStatistics, RoundRequest
from pipeline.unlearning.base import check_features
from pipeline.unlearning.kinds import kind_named

__all__ = ["FederatedClient"]

Array = NDArray[np.float64]


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
        server = kind_named(request.kind).federated_server()
        X, y = self._rows(request)
        return server.client_statistics(self.client_id, X, y, request)

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

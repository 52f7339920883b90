r"""Federated logistic regression (binary, one-vs-rest) on Guo et al.'s perturbed objective.

The global model minimises, over the union D of the member clients' rows (labels in
{-1, +1} per one-vs-rest problem),

.. math::

    L_b(w_k; D) = \sum_{i \in D} \log(1 + e^{-y_{ik} x_i^\top w_k})
        + \frac{\lambda n}{2}\lVert w_k\rVert^2 + b_k^\top w_k

with :math:`b \sim \mathcal N(0, \sigma^2 I)` drawn once by the server exactly as
:class:`~pipeline.unlearning.LogisticUnlearner` draws it (Guo, Goldstein, Hannun, van der
Maaten, "Certified Data Removal from Machine Learning Models", ICML 2020, eq. 2): from the
operating system's entropy by default, secret. The gradient the server aggregates is the
centralised one, so with the same b (a test's fixed ``seed``) the federated fit and
``LogisticUnlearner(lam, sigma, seed=seed).fit`` on the union reach the same optimum; the
rounds are those of :class:`~pipeline.federated.server.FederatedServer`. Two classes give
one problem (``classes[1]`` -> +1), more give one problem per class, each with its own
d x d curvature.

Removing a class k (:meth:`FederatedLogistic.forget_class`) drops problem k and its slice
of b, and takes the class-k rows (negatives of every other problem) out of the remaining
problems, from the class-k contributions the clients report; afterwards the model predicts
only the remaining classes.

A client answers a round (:meth:`FederatedLogistic.client_statistics`) with, over its rows
:math:`D_c` (labels :math:`y_{ik} = +1` when row i's label is problem k's class, else
:math:`-1`; :math:`\ell(z) = \log(1 + e^{-z})`, Guo et al., eq. 2),

.. math::

    g_{ck} = \sum_{i \in D_c} -y_{ik}\,\sigma(-y_{ik} x_i^\top w_k)\,x_i, \qquad
    H_{ck} = \sum_{i \in D_c} \sigma(x_i^\top \bar w_k)\,\sigma(-x_i^\top \bar w_k)\,x_i x_i^\top

at ``O(n_c d K)`` for the gradient and ``O(n_c d^2 K)`` for the curvature (once, not K
times, when every problem has the same curvature weights, as at w = 0).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput, UnknownClass
from pipeline.federated.errors import FederatedError
from pipeline.federated.server import Clients, FederatedServer
from pipeline.federated.statistics import ClientStatistics, RoundRequest
from pipeline.unlearning.base import check_features
from pipeline.unlearning.loss import (
    class_probabilities,
    curvature_weights,
    gradient_terms,
    predicted_index,
)
from pipeline.unlearning.report import UpdateReport

__all__ = ["FederatedLogistic"]

Array = NDArray[np.float64]


def _gram(X: Array, weights: Array) -> Array:
    """``sum_i weights_i x_i x_i^T``, shape (d, d), as a symmetric rank-n update."""
    scaled = X * np.sqrt(weights)[:, None]
    return scaled.T @ scaled


class FederatedLogistic(FederatedServer):
    """Server of a federated L2-regularised logistic regression that can forget.

    Parameters
    ----------
    classes : sequence
        Every class the federation predicts (clients need not hold all of them).
    n_features : int
        d.
    lam, sigma, epsilon, delta : float
        As :class:`~pipeline.unlearning.LogisticUnlearner`: penalty ``lam * n / 2 ||w||^2``,
        perturbation b ~ N(0, sigma^2 I), the (epsilon, delta) budget.
    seed : int or None
        None (the default): b from the operating system's entropy, secret. An int makes b
        reproducible and voids the guarantee (tests only).
    tol : float
        Released when every problem's gradient norm is at most ``tol * n``.
    max_rounds : int
        Rounds allowed per fit or removal; past it the model is released with
        ``converged_ = False``.
    refresh_above : float
        Ask for fresh curvature when a step shrank the gradient norm by less than this
        factor (0: every round).
    curvature_at_release : bool
        End a fit with a round that takes the curvature at the released model, so that a
        later removal's step uses the exact Hessian there (Guo et al.'s step) and its
        refresh rounds need no curvature. One more round per fit.
    release_below : float
        A removal is released as soon as its certificate (the remaining clients' gradient
        residual at the model) is at most this fraction of the budget, as the centralised
        engine's ``measure_above``, or once it reaches ``tol``; 0 always runs to ``tol``.
        The distance to the exact optimum is at most ``certificate / (lam * n)``.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_classes, n_features)
    classes_ : ndarray of shape (n_classes,)
    certificate_, budget_ : float
    rounds_, curvature_rounds_ : int
        Rounds run so far, and those that carried curvature.
    last_rounds_, last_curvature_rounds_ : int
        The same for the last fit or removal.
    fit_report_ : UpdateReport
    """

    kind = "logistic"
    # schema-1 ClientStats always carry a Hessian: take it every round (plain Newton)
    _stream_fixed = {"refresh_above": 0.0}

    def __init__(
        self,
        classes: Sequence[Any] | ArrayLike,
        n_features: int,
        *,
        lam: float = 1e-3,
        sigma: float = 10.0,
        epsilon: float = 1.0,
        delta: float = 1e-4,
        seed: int | None = None,
        tol: float = 1e-9,
        max_rounds: int = 50,
        refresh_above: float = 0.25,
        curvature_at_release: bool = True,
        release_below: float = 0.5,
    ) -> None:
        cls_arr = np.unique(np.asarray(classes))
        if cls_arr.size < 2 or cls_arr.size != len(np.asarray(classes)):
            msg = f"classes must be at least two distinct labels, got {classes!r}"
            raise InvalidInput(msg)
        if not lam > 0 or n_features < 1:
            msg = f"need lam > 0 and n_features >= 1, got {lam}, {n_features}"
            raise InvalidInput(msg)
        super().__init__(
            sigma=sigma,
            epsilon=epsilon,
            delta=delta,
            seed=seed,
            tol=tol,
            max_rounds=max_rounds,
            refresh_above=refresh_above,
            curvature_at_release=curvature_at_release,
            release_below=release_below,
        )
        self.classes_ = cls_arr
        self.n_features_in_ = int(n_features)
        self.lam = float(lam)
        self._ovr = cls_arr.size > 2

    @classmethod
    def build(cls, n_features: int, classes: Sequence[Any] | None, **params: Any) -> Self:
        if classes is None:
            msg = "a logistic federation needs its classes"
            raise InvalidInput(msg)
        return cls(classes, n_features, **params)

    @staticmethod
    def client_statistics(
        client_id: str, X: Array, y: NDArray[Any], request: RoundRequest
    ) -> ClientStatistics:
        """The log-loss gradient (and curvature) sums of the module docstring."""
        if request.problems is None:
            msg = "a logistic round request must name its problems' classes"
            raise InvalidInput(msg)
        W = request.W
        Y = np.where(y[:, None] == np.asarray(request.problems)[None, :], 1.0, -1.0)
        G = gradient_terms(X @ W.T, Y).T @ X
        H = None
        if request.curvature:
            at = W if request.curvature_at is None else request.curvature_at
            C = curvature_weights(X @ at.T)
            K, d = W.shape
            H = np.empty((K, d, d))
            if K > 1 and (C == C[:, :1]).all():  # e.g. at w = 0: one matrix for all problems
                H[:] = _gram(X, C[:, 0])
            else:
                for k in range(K):
                    H[k] = _gram(X, C[:, k])
        return ClientStatistics(
            client_id=client_id,
            round=request.round,
            n=int(X.shape[0]),
            gradient=G,
            hessian=H,
            rows_label=request.rows_label,
        )

    # -- the model's part of the protocol ------------------------------------------------
    @property
    def _shape(self) -> tuple[int, int]:
        return (self.classes_.size if self._ovr else 1, self.n_features_in_)

    def _penalty(self, n: int) -> Array:
        return np.full(self.n_features_in_, self.lam * n)

    def _problems(self) -> tuple[Any, ...]:
        labels = self.classes_ if self._ovr else self.classes_[1:]
        return tuple(labels.tolist())

    def _request_fields(self) -> dict[str, Any]:
        return {"classes": tuple(self.classes_.tolist()), "problems": self._problems()}

    @property
    def problem_labels(self) -> list[Any] | None:
        return self.classes_.tolist() if self._ovr else None

    # -- prediction ------------------------------------------------------------------------
    @property
    def coef_(self) -> Array:
        W = self._W_released()
        return W.copy() if self._ovr else W[0].copy()

    @property
    def intercept_(self) -> Array | float:
        """0: the federated logistic model has no intercept (shape () or (n_classes,))."""
        return np.zeros(self.classes_.size) if self._ovr else 0.0

    def decision_function(self, X: ArrayLike) -> Array:
        """Margins, shape (n_samples,) for binary, (n_samples, n_classes) one-vs-rest."""
        Z = check_features(X, self.n_features_in_) @ self._W_released().T
        return Z if self._ovr else Z[:, 0]

    def predict_proba(self, X: ArrayLike) -> Array:
        """Class probabilities (one-vs-rest sigmoids normalised), shape (n_samples, n_classes)."""
        return class_probabilities(self.decision_function(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most likely class of every row (never a removed class)."""
        return self.classes_[predicted_index(self.decision_function(X))]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Mean accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    # -- class removal ---------------------------------------------------------------------
    def remove_class(self, label: Any, *, class_rows: bool = True) -> None:
        """Drop class ``label``'s problem and open the round that takes its rows out.

        Parameters
        ----------
        label : int, float or str
        class_rows : bool
            True: the first round collects the class-k rows' statistics (gradient at the
            model, curvature where the stored curvature was taken) and subtracts them.
            False: the first round asks every client for fresh statistics, with curvature,
            over the remaining classes' rows (what ``ClientStats`` schema 1 can carry).

        Raises
        ------
        UnknownClass
            ``label`` is not one of ``classes_``.
        FederatedError
            Two classes are left: removing one would leave a single class.
        """
        self._require_released()
        if self.classes_.size <= 2:
            msg = (
                f"cannot remove class {label!r} from a model of classes "
                f"{self.classes_.tolist()!r}: a single class would remain"
            )
            raise FederatedError(msg)
        hits = np.flatnonzero(self.classes_ == label)
        if hits.size == 0:
            raise UnknownClass(label, self.classes_.tolist())
        k = int(hits[0])
        n_before = self.n_records_
        self._new_operation(removal=True)
        keep = np.arange(self.classes_.size) != k
        self.classes_ = self.classes_[keep]
        self._W, self._B = self._W[keep], self._B[keep]
        assert self._W_curv is not None
        self._W_curv = self._W_curv[keep]
        for c in self._contrib.values():
            c.G = c.G[keep]
            c.H = None if c.H is None else c.H[keep]
        self._curvature_changed()
        if class_rows:
            self._rows_label = label.item() if isinstance(label, np.generic) else label
            self._begin("class")
        else:  # every stored statistic still covers class k: replace them all first
            self._n_before = n_before
            self._begin("rounds")
            self._need_curvature = True

    def forget_class(
        self, label: Any, clients: Clients, *, class_rows: bool = True
    ) -> UpdateReport:
        """Forget class ``label``: take its rows out (see :meth:`remove_class`), refresh."""
        start = time.perf_counter()
        self.remove_class(label, class_rows=class_rows)
        return replace(self.run(clients), seconds=time.perf_counter() - start)

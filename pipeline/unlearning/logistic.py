r"""Certified removal for logistic regression, binary and one-vs-rest: the estimator.

The model minimises Guo et al.'s perturbed objective (:mod:`pipeline.unlearning.loss`) with
:math:`\lambda` scaled by the current number of records n and a perturbation
:math:`b \sim \mathcal N(0, \sigma^2 I)` drawn once per fit, from the operating system's
entropy unless a ``seed`` is given for tests (:mod:`pipeline.unlearning.perturbation`).
Two classes give one problem (labels ``classes_[1]`` -> +1); K > 2 classes give K
one-vs-rest problems that share the records, each with its own curvature and its own slice
of b.

:class:`LogisticUnlearner` holds the parameters, the coefficients W (K, d) and b, the cached
curvature (:class:`~pipeline.unlearning.curvature.CurvatureCache`) with the weight each
record entered it with, prediction and the update verbs; it delegates the maths:

* fitting and refitting: damped Newton (:mod:`pipeline.unlearning.newton`);
* a batch's step, influence or Fisher (:mod:`pipeline.unlearning.steps`): ``O(m d^2)`` per
  problem for the curvature and a few ``O(d^2)`` solver iterations, whatever n is;
* forgetting feature columns and correcting labels (Warnecke et al., NDSS 2023): the data
  change (:mod:`pipeline.unlearning.features`, :mod:`pipeline.unlearning.labels`), then
  second-order steps on the changed data and a measurement
  (:func:`~pipeline.unlearning.steps.revise`);
* the certificate (:mod:`pipeline.unlearning.certificates`, ``certificate=``): ``"exact"``
  measures the residual after every batch (two passes over the records, ``O(n d)``);
  ``"bound"`` and ``"adaptive"`` bound its growth (``O(K d^2)``,
  :func:`~pipeline.unlearning.certify.residual_growth`), the latter measuring again (and a
  Fisher step correcting) once the bound passes ``measure_above`` of the budget.

Nothing costs ``O(n d^2)`` except fitting and the rare recomputation of the curvature,
triggered when the residual shows the cached curvature has drifted (``drift_tol``), or when
the curvature's staleness has forced as many measurements as a recomputation costs, and
reported as ``curvature_recomputed``.
"""

from __future__ import annotations

from collections.abc import Hashable, Iterable, Mapping
from typing import Annotated, Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning import certify, loss
from pipeline.unlearning.base import BaseUnlearner, Progress, check_features
from pipeline.unlearning.certificates import CERTIFICATE_CLASSES, Certificate
from pipeline.unlearning.curvature import CurvatureCache
from pipeline.unlearning.features import as_columns, drop_columns
from pipeline.unlearning.newton import NewtonSolver
from pipeline.unlearning.perturbation import check_seed, draw_perturbation
from pipeline.unlearning.report import EMPTIED, UpdateReport
from pipeline.unlearning.state import Part, Saved, json_array
from pipeline.unlearning.steps import REVISIONS, forget_rows, learn_rows, revise

__all__ = ["LogisticUnlearner"]

Array = NDArray[np.float64]

METHODS = ("fisher", "influence")


class LogisticUnlearner(BaseUnlearner):
    """L2-regularised logistic regression that can forget and learn records in batches.

    Parameters
    ----------
    lam : float
        Regularisation per record: the penalty is ``lam * n / 2 * ||w||^2``.
    sigma : float
        Standard deviation of the objective perturbation b; 0 switches certification off.
    epsilon, delta : float
        The removal guarantee; with ``sigma`` they set ``budget_``.
    seed : int or None
        None (the default): b is drawn from the operating system's entropy at every
        :meth:`fit`, secret as Guo et al.'s certificate requires, and kept in the
        checkpoint (see :mod:`pipeline.unlearning.perturbation`). An int makes b, and so
        the coefficients, reproducible by anyone who knows it, which voids the certified
        guarantee: for tests only. Nothing else is random: fitting is deterministic.
    method : {"fisher", "influence"}
        Default removal/addition rule for :meth:`forget` and :meth:`learn`.
    certificate : {"adaptive", "exact", "bound"}
        How the gradient residual is known (:mod:`pipeline.unlearning.certificates`):
        ``"adaptive"`` (default) bounds its growth per batch (``O(K d^2)``) and measures it
        (``O(n d)``) past ``measure_above`` of the budget, ``"exact"`` measures it after
        every update, ``"bound"`` is Guo et al.'s accumulated bound alone. Except with
        ``"exact"``, a fit ends with the curvature rebuilt at the fitted model (one more
        ``O(n d^2)`` pass), so that the bound charges nothing for its staleness.
    fit_intercept : bool
        Append a constant feature (regularised like the others, as in Guo et al.'s objective,
        which has no separate intercept).
    tol : float
        Fitting stops when every problem's gradient norm is below ``tol * n``.
    max_iter : int
        Newton iterations allowed per fit.
    drift_tol : float
        When to recompute the cached curvature from all records. When measuring: if the
        measured residual differs from the step's prediction by more than this fraction of
        the step's right-hand side. When bounding: if more than this fraction of a batch's
        bound increment comes from the cached curvature's staleness (0 recomputes before
        every batch, which is Guo et al.'s algorithm).
    max_corrections : int
        Fisher corrections allowed after a measurement while the residual exceeds
        ``measure_above`` of the budget (:func:`~pipeline.unlearning.steps.correct`).
    measure_above : float
        Fraction of the budget at which ``"adaptive"`` measures the residual exactly.
    forgotten_features : tuple of int
        Feature columns (0-based) the model never uses: zeroed in every record it fits or
        learns, their weights and their part of b held at 0 (:meth:`forget_features` adds
        to it; see :mod:`pipeline.unlearning.features`).

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_classes, n_features)
    intercept_ : ndarray of shape (1,) or (n_classes,)
    classes_ : ndarray of shape (n_classes,)
    certificate_ : float
        The current model's gradient residual norm (or its bound), summed over problems.
    budget_ : float
        ``sigma * epsilon / sqrt(2 ln(1.5 / delta))``.
    worst_case_ : float
        Guo et al.'s data-independent bound accumulated since the last full fit.
    n_records_ : int

    Notes
    -----
    Forgetting a model's last records leaves a model that holds none (report method
    ``"emptied"``): ``coef_`` and ``intercept_`` are 0, ``certificate_`` is 0 (the model
    depends on no record) and every report says ``certified``. It predicts
    ``classes_[0]`` for every row, with probability 0.5 for each class of a binary model
    and ``1 / n_classes`` one-vs-rest; it keeps its classes and b, checkpoints and resumes
    like any model, and its next :meth:`learn` fits the new records from w = 0 (method
    ``"fit"``), as :meth:`fit` would with the same b.
    """

    kind = "logistic"

    # fitted state, set by fit and saved in checkpoints (see pipeline.unlearning.state)
    classes_: Annotated[NDArray[Any], json_array("classes_json")]
    _W: Annotated[Array, Saved()]
    _B: Annotated[Array, Saved()]
    _curv: Annotated[CurvatureCache, Saved("curvature")]
    _cref: Annotated[Array, Saved(dump=_held_rows, load=_by_problem)]
    n_curvature_recomputes_: Annotated[int, Saved()]
    _certificate: Annotated[Certificate, Part()]

    #: Relative accuracy of an update's solve (what it leaves is in the certificate); tight
    #: enough that a model resumed from a checkpoint, whose preconditioner is fresher,
    #: makes the same update to 1e-10.
    step_rtol = 1e-11

    def __init__(
        self,
        lam: float = 1e-3,
        sigma: float = 10.0,
        epsilon: float = 1.0,
        delta: float = 1e-4,
        seed: int | None = None,
        *,
        method: str = "fisher",
        certificate: str = "adaptive",
        fit_intercept: bool = False,
        tol: float = 1e-9,
        max_iter: int = 50,
        drift_tol: float = 0.25,
        max_corrections: int = 10,
        measure_above: float = 0.5,
        forgotten_features: Iterable[int] = (),
    ) -> None:
        checks = [
            (lam > 0, f"lam must be > 0, got {lam}"),
            (sigma >= 0, f"sigma must be >= 0, got {sigma}"),
            (epsilon > 0, f"epsilon must be > 0, got {epsilon}"),
            (0 < delta < 1, f"delta must be in (0, 1), got {delta}"),
            (method in METHODS, f"method must be one of {METHODS}, got {method!r}"),
            (
                certificate in CERTIFICATE_CLASSES,
                f"certificate must be one of {tuple(CERTIFICATE_CLASSES)}, got {certificate!r}",
            ),
            (tol > 0 and max_iter > 0, "tol and max_iter must be > 0"),
        ]
        for ok, msg in checks:
            if not ok:
                raise InvalidInput(msg)
        self.lam = float(lam)
        self.sigma = float(sigma)
        self.epsilon = float(epsilon)
        self.delta = float(delta)
        self.seed = check_seed(seed)
        self.method = method
        self.certificate = certificate
        self.fit_intercept = bool(fit_intercept)
        self.tol = float(tol)
        self.max_iter = int(max_iter)
        self.drift_tol = float(drift_tol)
        self.max_corrections = int(max_corrections)
        self.measure_above = float(measure_above)
        self.forgotten_features = as_columns(forgotten_features)
        self.budget_ = certify.budget(self.sigma, self.epsilon, self.delta)

    # -- public attributes ----------------------------------------------------------------
    @property
    def _K(self) -> int:
        """Problems: 1 for two classes, one per class (one-vs-rest) for more."""
        return 1 if self.classes_.size == 2 else int(self.classes_.size)

    @property
    def coef_(self) -> Array:
        W = self._W[:, : self.n_features_in_]
        return W[0].copy() if self._K == 1 else W.copy()

    @property
    def intercept_(self) -> Array:
        if not self.fit_intercept:
            return np.zeros(self._K)
        return self._W[:, -1].copy()

    @property
    def certificate_(self) -> float:
        return self._certificate.total

    @property
    def certificate_kind(self) -> str:
        return self.certificate

    @property
    def worst_case_(self) -> float:
        return self._certificate.worst_case

    # -- prediction -----------------------------------------------------------------------
    def decision_function(self, X: ArrayLike) -> Array:
        """Margins, shape (n_samples,) for binary, (n_samples, n_classes) one-vs-rest."""
        self._fitted_records()
        Z = self._augment(check_features(X, self.n_features_in_)) @ self._W.T
        return Z[:, 0] if self._K == 1 else Z

    def predict_proba(self, X: ArrayLike) -> Array:
        """Class probabilities (one-vs-rest sigmoids normalised, as scikit-learn does)."""
        return loss.class_probabilities(self.decision_function(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most likely class of every row."""
        return self.classes_[loss.predicted_index(self.decision_function(X))]

    def score(self, X: ArrayLike, y: ArrayLike) -> float:
        """Mean accuracy."""
        return float(np.mean(self.predict(X) == np.asarray(y)))

    # -- targets --------------------------------------------------------------------------
    def _encode_fit_targets(self, y: NDArray[Any]) -> NDArray[np.int64]:
        classes = np.unique(y)
        if classes.size < 2:
            msg = f"y has {classes.size} class(es) {classes.tolist()!r}; need at least two"
            raise InvalidInput(msg)
        self.classes_ = classes
        return self._label_indices(y)

    def _encode_learn_targets(self, y: NDArray[Any]) -> NDArray[np.int64]:
        return self._label_indices(y)

    def _decode_targets(self, targets: NDArray[Any]) -> NDArray[Any]:
        return self.classes_[targets]

    def _resolve_method(self, method: str | None) -> str:
        method = self.method if method is None else method
        if method not in METHODS:
            msg = f"method must be one of {METHODS}, got {method!r}"
            raise InvalidInput(msg)
        return method

    def _resolve_revision(self, method: str | None) -> str:
        method = REVISIONS[0] if method is None else method
        if method not in (*REVISIONS, "retrain"):
            msg = f"method must be one of {(*REVISIONS, 'retrain')}, got {method!r}"
            raise InvalidInput(msg)
        return method

    def _signs(self, targets: NDArray[np.int64]) -> Array:
        """Labels in {-1, +1}, shape (n, K)."""
        return loss.signs(targets, self._K)

    # -- the objective over the held records ----------------------------------------------
    def _gradient(self, W: Array) -> Array:
        r"""Exact :math:`\nabla L_b(W; D)` over the held records, shape (K, d)."""
        return self._gradient_and_margins(W)[0]

    def _gradient_and_margins(self, W: Array) -> tuple[Array, Array]:
        """The exact gradient and the margins ``X @ W.T`` it was computed from."""
        rec = self._fitted_records()
        X, a = rec.X, rec.weights
        Z = loss.margins(X, W)
        R = loss.gradient_terms(Z, self._signs(rec.targets), a)
        return loss.pullback(R, X) + self.lam * rec.n_records * W + self._B, Z

    def _objective(self, W: Array) -> Array:
        rec = self._fitted_records()
        return loss.objective(rec.X, self._signs(rec.targets), W, self._B, self.lam, rec.weights)

    def _recompute_curvature(self, *, gram: bool = False) -> None:
        """Rebuild the cached curvature at the current model from all records (O(n d^2)).

        ``gram`` marks a fit or refit: the certificate rebuilds what it keeps from the
        records too (:meth:`~pipeline.unlearning.certificates.Certificate.curvature_rebuilt`).
        """
        rec = self._fitted_records()
        weights = loss.curvature_weights(loss.margins(rec.X, self._W)) * rec.weights[:, None]
        self._curv.recompute(rec.X, weights, self.lam * rec.n_records)
        self._cref = weights
        self.n_curvature_recomputes_ += 1
        self._certificate.curvature_rebuilt(self, gram=gram)

    # -- fitting --------------------------------------------------------------------------
    def _fit(self) -> None:
        self._B = draw_perturbation(self.sigma, (self._K, self._width), self.seed)
        self._B[:, list(self.forgotten_features)] = 0.0  # weights held at 0: no b there
        self.n_curvature_recomputes_ = 0
        self._fit_from_zero()

    def _fit_from_zero(self) -> None:
        """Minimise the objective with the current b over the held records, from w = 0."""
        self._start(np.zeros((self._K, self._width)))
        self._recompute_curvature(gram=True)
        self._minimise(progress=None)

    def _start(self, W: Array) -> None:
        """The model at ``W``, with an empty curvature and the certificate of no record."""
        self._W = W
        self._curv = CurvatureCache(self._K, self._width)
        self._certificate = CERTIFICATE_CLASSES[self.certificate](self._K, self._width)

    def _clear(self) -> None:
        r"""The state of a model that holds no record: w = 0, certificate 0; b is kept.

        With no record the objective :math:`L_b(w; \emptyset) = b^\top w` has no minimiser
        (its regulariser :math:`\lambda n` is 0) and Guo et al.'s residual is undefined; the
        model released instead is the constant w = 0, which depends on no record, so every
        removal that led to it is exact: its certificate is 0. The curvature, the Gram
        matrix and every bound's state are exactly zero (no round-off of the forgotten
        records remains). The next :meth:`learn` fits from w = 0 with the same b.
        """
        rec = self._fitted_records()
        self._start(np.zeros((self._K, self._width)))
        self._cref = np.zeros((rec.n_rows, self._K))
        rec.refresh_max_norm()

    def _refit(self, progress: Progress | None, warm_start: bool = True) -> UpdateReport:
        rec = self._fitted_records()
        if rec.n_records == 0:  # nothing to fit: the model stays empty
            self._clear()
            if progress is not None:
                progress(1.0, "done")
            return self._report("retrain")
        if progress is not None:
            progress(0.0, "recomputing curvature")
        self._start(self._W if warm_start else np.zeros_like(self._W))
        self._recompute_curvature(gram=True)
        self._minimise(progress)
        if progress is not None:
            progress(1.0, "done")
        return self._report("retrain", recomputed=True)

    def _minimise(self, progress: Progress | None) -> None:
        """Newton from the current model (:class:`~pipeline.unlearning.newton.NewtonSolver`),
        then the certificate of the fitted model: settled, measured, worst case 0."""
        rec = self._fitted_records()
        solver = NewtonSolver(
            objective=self._objective,
            gradient=self._gradient,
            curvature=self._curv,
            recompute=self._recompute_curvature_at,
            tol_abs=self.tol * max(rec.n_records, 1),
            max_iter=self.max_iter,
            drift_tol=self.drift_tol,
            progress=progress,
        )
        self._W = solver.solve(self._W)
        self._certificate.settle(self)
        self._certificate.remeasure(self)
        rec.refresh_max_norm()

    def _recompute_curvature_at(self, W: Array) -> None:
        self._W = W
        self._recompute_curvature()

    # -- updates --------------------------------------------------------------------------
    def _remove(
        self, rows: NDArray[np.intp], method: str, absent: tuple[Hashable, ...]
    ) -> UpdateReport:
        rec = self._fitted_records()
        m = rows.size
        if m == 0:
            return self._report(method, absent=absent)
        if m == rec.n_records:  # the last records: nothing is left to fit (see _clear)
            rec.erase(rows)
            rec.compact()
            self._clear()
            return self._report(EMPTIED, n_removed=m, absent=absent)
        step = forget_rows(self, rows, method)
        return self._report(
            step.method,
            n_removed=m,
            growth=step.growth,
            absent=absent,
            recomputed=step.recomputed,
        )

    def _add(self, rows: NDArray[np.intp]) -> UpdateReport:
        m = rows.size
        if m == 0:
            return self._report(self.method)
        if m == self._fitted_records().n_records:  # an empty model learns as it fits
            self._fit_from_zero()
            return self._report("fit", n_added=m, recomputed=True)
        step = learn_rows(self, rows, self.method)
        return self._report(step.method, n_added=m, growth=step.growth, recomputed=step.recomputed)

    def _forget_columns(self, columns: NDArray[np.intp], method: str) -> UpdateReport:
        rec = self._fitted_records()
        if columns.size == 0:
            return self._report(method)
        drop_columns(self, columns)
        if rec.n_records == 0:  # w = 0 already, nothing to correct (see _clear)
            return self._report(method)
        if method == "retrain":
            return self._refit(None)
        step = revise(self, method)
        return self._report(step.method, growth=step.growth, recomputed=step.recomputed)

    def _relabel(self, rows: NDArray[np.intp], targets: NDArray[Any], method: str) -> UpdateReport:
        if rows.size == 0:
            return self._report(method)
        # the curvature does not depend on the labels: only the gradient changes
        self._fitted_records().relabel(rows, targets)
        if method == "retrain":
            return self._refit(None)
        step = revise(self, method)
        return self._report(step.method, growth=step.growth, recomputed=step.recomputed)

    # -- checkpoints: the fields above, with every parameter (BaseUnlearner.state_dict) ---
    def _parts_state(self) -> dict[str, Any]:
        return self._certificate.state_dict()

    def _restore_parts(self, state: Mapping[str, Any]) -> None:
        certificate = CERTIFICATE_CLASSES[self.certificate]
        self._certificate = certificate.from_state_dict(state, self)


def _held_rows(model: LogisticUnlearner, cref: Array) -> Array:
    """The curvature weights of the held records, in the record table's order."""
    return cref[model._fitted_records().weights > 0]


def _by_problem(model: LogisticUnlearner, cref: Any) -> Array:
    return np.array(cref, dtype=np.float64).reshape(-1, model._K)

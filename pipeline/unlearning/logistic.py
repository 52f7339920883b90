r"""Certified removal for logistic regression, binary and one-vs-rest.

The model minimises Guo et al.'s perturbed objective (see :mod:`pipeline.unlearning.loss`)
with :math:`\lambda` scaled by the current number of records n and a perturbation
:math:`b \sim \mathcal N(0, \sigma^2 I)` drawn once per fit, from the operating system's
entropy unless a ``seed`` is given for tests (:mod:`pipeline.unlearning.perturbation`).
Two classes give one problem (labels ``classes_[1]`` -> +1); K > 2 classes give K
one-vs-rest problems that share the records, each with its own curvature and its own slice
of b.

Removing a batch R of m records (D' = D \ R), with the removed records' gradient
:math:`\Delta = \sum_{i \in R} \nabla \ell_i(w) + \lambda m w`:

``influence``  :math:`w \leftarrow w + \tilde H_{D'}^{-1} \Delta` (Guo et al., eq. 3; assumes w
               optimal for D, so the previous residual is carried over);

``fisher``     :math:`w \leftarrow w - \tilde H_{D'}^{-1} \nabla L_b(w; D')`, a corrective Newton
               step on the remaining data's full gradient, which also removes the residual
               left by earlier updates (Mahadevan & Mathioudakis, 2021, "Certifiable Machine
               Unlearning for Linear Models"). The default. It needs the residual at the
               current model: between ``"adaptive"`` measurements a ``fisher`` update takes
               the influence step, and its report says ``"influence"`` unless the
               measurement that follows corrects it with a Fisher step.

Learning a batch A is the same step with the sign of :math:`\Delta` reversed.
:math:`\tilde H` is the cached curvature (:class:`~pipeline.unlearning.curvature.CurvatureCache`):
a batch costs ``O(m d^2)`` per problem for the curvature and a few ``O(d^2)`` solver
iterations, whatever n is. Knowing the residual exactly costs two passes over the records
(``O(n d)``): the ``"exact"`` certificate pays it every batch, the default ``"adaptive"`` one
only when its running bound passes ``measure_above`` of the budget (and a Fisher step then
corrects the measured residual). The running bound
(:func:`~pipeline.unlearning.certify.residual_growth`) costs ``O(K d^2)`` a batch: it needs
the step, the Gram matrix of the held records (kept like the curvature, and so is its
product with the model's drift since the last measurement) and the cached weights' errors
noted at that measurement, and is tight enough that on MNIST 3 vs 8 a batch of 100 is
measured once in five to seven. Nothing costs ``O(n d^2)`` except fitting and
the rare recomputation of the curvature, triggered when the residual shows the cached
curvature has drifted (``drift_tol``), or when the curvature's staleness has forced as many
measurements as a recomputation costs, and reported as ``curvature_recomputed``.
"""

from __future__ import annotations

import json
import math
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning import certify
from pipeline.unlearning._blas import single_thread
from pipeline.unlearning.base import BaseUnlearner, Progress, check_features
from pipeline.unlearning.curvature import (
    CurvatureCache,
    rank_update,
    symmetric_product,
    symmetrize,
)
from pipeline.unlearning.loss import (
    KAPPA,
    class_probabilities,
    curvature_weights,
    gradient_terms,
    objective,
    predicted_index,
)
from pipeline.unlearning.newton import NewtonSolver
from pipeline.unlearning.perturbation import check_seed, draw_perturbation
from pipeline.unlearning.records import RecordTable
from pipeline.unlearning.report import EMPTIED, UpdateReport

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
        How the gradient residual is known (see :mod:`pipeline.unlearning.certify`):
        ``"adaptive"`` (default) adds a per-batch bound (``O(d^2)``,
        :func:`~pipeline.unlearning.certify.residual_growth`) to the last exact
        measurement and measures again (``O(n d)``) once it passes ``measure_above`` of
        the budget; ``"exact"`` measures after every update; ``"bound"`` is Guo et al.'s
        accumulated data-dependent bound alone. Except with ``"exact"``, fitting ends with
        the curvature rebuilt at the fitted model (one more ``O(n d^2)`` pass), which the
        bound then charges nothing for staleness.
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
        Corrective Newton steps allowed after a measurement (``fisher`` only) while the
        residual exceeds ``measure_above`` of the budget. Ordinary batches need none or
        one; a batch of records far from the data (say 20 uniform-noise images learned by
        a digits model) needs up to about 8 before Newton's quadratic phase, and each
        costs one pass over the records, far less than the refit it avoids.
    measure_above : float
        Fraction of the budget at which ``"adaptive"`` measures the residual exactly.

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

    # fitted state (set by fit / from_state_dict)
    _K: int
    _W: Array
    _B: Array
    _curv: CurvatureCache
    _cref: Array
    _residual: Array
    _residual_known: bool
    _cert: Array
    _drift: Array
    _weight_error: Array
    _err_norm: Array
    _wref: Array
    _gram_drift: Array
    _gram_drift_error: Array
    _terms: float
    _worst_case: float
    _gram: Array
    _stale_measures: int = 0  # "adaptive" measurements since the curvature was rebuilt
    _spectral: float
    n_curvature_recomputes_: int

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
    ) -> None:
        checks = [
            (lam > 0, f"lam must be > 0, got {lam}"),
            (sigma >= 0, f"sigma must be >= 0, got {sigma}"),
            (epsilon > 0, f"epsilon must be > 0, got {epsilon}"),
            (0 < delta < 1, f"delta must be in (0, 1), got {delta}"),
            (method in METHODS, f"method must be one of {METHODS}, got {method!r}"),
            (
                certificate in certify.CERTIFICATES,
                f"certificate must be one of {certify.CERTIFICATES}, got {certificate!r}",
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
        self.budget_ = certify.budget(self.sigma, self.epsilon, self.delta)

    # -- public attributes ----------------------------------------------------------------
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
        return float(self._cert.sum())

    @property
    def worst_case_(self) -> float:
        return self._worst_case

    # -- prediction -----------------------------------------------------------------------
    def decision_function(self, X: ArrayLike) -> Array:
        """Margins, shape (n_samples,) for binary, (n_samples, n_classes) one-vs-rest."""
        self._fitted_records()
        Z = self._augment(check_features(X, self.n_features_in_)) @ self._W.T
        return Z[:, 0] if self._K == 1 else Z

    def predict_proba(self, X: ArrayLike) -> Array:
        """Class probabilities (one-vs-rest sigmoids normalised, as scikit-learn does)."""
        return class_probabilities(self.decision_function(X))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Most likely class of every row."""
        return self.classes_[predicted_index(self.decision_function(X))]

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
        self._K = 1 if classes.size == 2 else classes.size
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

    def _signs(self, targets: NDArray[np.int64]) -> Array:
        """Labels in {-1, +1}, shape (n, K)."""
        if self._K == 1:
            return np.where(targets == 1, 1.0, -1.0)[:, None]
        return np.where(targets[:, None] == np.arange(self._K)[None, :], 1.0, -1.0)

    # -- linear algebra over the record buffer --------------------------------------------
    def _margins(self, X: Array, W: Array) -> Array:
        if self._K == 1:
            return (X @ W[0])[:, None]
        # (W X^T)^T: OpenBLAS runs this product about 1.4x faster than X W^T for tall X
        return np.ascontiguousarray((W @ X.T).T)

    def _pullback(self, R: Array, X: Array) -> Array:
        return (R[:, 0] @ X)[None, :] if self._K == 1 else R.T @ X

    def _gradient(self, W: Array) -> Array:
        r"""Exact :math:`\nabla L_b(W; D)` over the held records, shape (K, d)."""
        return self._gradient_and_margins(W)[0]

    def _gradient_and_margins(self, W: Array) -> tuple[Array, Array]:
        """The exact gradient and the margins ``X @ W.T`` it was computed from."""
        rec = self._fitted_records()
        X, a = rec.X, rec.weights
        Z = self._margins(X, W)
        R = gradient_terms(Z, self._signs(rec.targets), a)
        return self._pullback(R, X) + self.lam * rec.n_records * W + self._B, Z

    def _objective(self, W: Array) -> Array:
        rec = self._fitted_records()
        return objective(rec.X, self._signs(rec.targets), W, self._B, self.lam, rec.weights)

    def _recompute_curvature(self, *, gram: bool = False) -> None:
        """Rebuild the cached curvature at the current model from all records (O(n d^2)).

        ``gram`` also rebuilds the Gram matrix and the spectral-norm bound (fit, refit).
        Otherwise they stay as maintained: the Gram matrix does not depend on w and is
        exact up to round-off (still counted in ``_terms``), and the spectral bound only
        loosens when records are removed.
        """
        rec = self._fitted_records()
        weights = curvature_weights(self._margins(rec.X, self._W)) * rec.weights[:, None]
        self._curv.recompute(rec.X, weights, self.lam * rec.n_records)
        self._cref = weights
        self._weight_error = np.zeros(self._K)
        self._err_norm = np.zeros(self._K)
        self._restart_drift()
        self.n_curvature_recomputes_ += 1
        self._stale_measures = 0
        if self.certificate != "exact" and (gram or not hasattr(self, "_gram")):
            self._gram = rec.X.T @ rec.X
            self._spectral = certify.spectral_upper_bound(self._gram)
            self._terms = float(rec.n_records)
        elif self.certificate == "exact":
            self._terms = float(rec.n_records)
        else:  # the Gram matrix keeps the round-off it holds
            self._terms = max(self._terms, float(rec.n_records))

    # -- fitting --------------------------------------------------------------------------
    def _fit(self) -> None:
        self._B = draw_perturbation(self.sigma, (self._K, self._width), self.seed)
        self.n_curvature_recomputes_ = 0
        self._fit_from_zero()

    def _fit_from_zero(self) -> None:
        """Minimise the objective with the current b over the held records, from w = 0."""
        rec = self._fitted_records()
        self._W = np.zeros((self._K, self._width))
        self._curv = CurvatureCache(self._K, self._width)
        self._recompute_curvature(gram=True)
        self._newton(progress=None)
        self._settle_curvature()
        self._reset_certificates(rec)

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
        K, d = self._K, self._width
        self._W = np.zeros((K, d))
        self._curv = CurvatureCache(K, d)
        self._cref = np.zeros((rec.n_rows, K))
        self._residual = np.zeros((K, d))
        self._residual_known = False
        self._cert = np.zeros(K)
        self._weight_error = np.zeros(K)
        self._err_norm = np.zeros(K)
        self._restart_drift()
        self._stale_measures = 0
        self._terms = 0.0
        self._worst_case = 0.0
        if self.certificate != "exact":
            self._gram = np.zeros((d, d))
            self._spectral = 0.0
        rec.refresh_max_norm()

    def _refit(self, progress: Progress | None, warm_start: bool = True) -> UpdateReport:
        rec = self._fitted_records()
        if rec.n_records == 0:  # nothing to fit: the model stays empty
            self._clear()
            if progress is not None:
                progress(1.0, "done")
            return self._report("retrain", 0, 0, 0.0)
        if progress is not None:
            progress(0.0, "recomputing curvature")
        if not warm_start:
            self._W = np.zeros_like(self._W)
        self._recompute_curvature(gram=True)
        self._newton(progress)
        self._settle_curvature()
        self._reset_certificates(rec)
        if progress is not None:
            progress(1.0, "done")
        return self._report("retrain", 0, 0, 0.0, recomputed=True)

    def _settle_curvature(self) -> None:
        """Rebuild the curvature at the fitted model unless Newton's last step just did.

        The bounding certificates charge every batch for the cached weights' distance from
        the true ones (:func:`~pipeline.unlearning.certify.residual_growth`); weights taken
        a few Newton steps before the optimum cost more there (on MNIST 3 vs 8, half the
        budget per batch of 100) than one more ``O(n d^2)`` pass costs the fit.
        """
        if self.certificate != "exact" and not np.array_equal(self._wref, self._W):
            self._recompute_curvature()

    def _reset_certificates(self, rec: RecordTable) -> None:
        self._remeasure()
        self._worst_case = 0.0
        rec.refresh_max_norm()

    def _newton(self, progress: Progress | None) -> None:
        """Minimise the objective from the current model (:class:`NewtonSolver`)."""
        solver = NewtonSolver(
            objective=self._objective,
            gradient=self._gradient,
            curvature=self._curv,
            recompute=self._recompute_curvature_at,
            tol_abs=self.tol * max(self._fitted_records().n_records, 1),
            max_iter=self.max_iter,
            drift_tol=self.drift_tol,
            progress=progress,
        )
        self._W = solver.solve(self._W)

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
            return self._report(method, 0, 0, 0.0, absent=absent)
        if m == rec.n_records:  # the last records: nothing is left to fit (see _clear)
            rec.erase(rows)
            rec.compact()
            self._clear()
            return self._report(EMPTIED, m, 0, 0.0, absent=absent)
        n_before = rec.n_records
        # fancy indexing copies: the buffer's rows are erased at once, while still in cache,
        # the copies once the batch is applied
        Xr, signs, weights = rec.X[rows], self._signs(rec.targets[rows]), self._cref[rows]
        rec.erase(rows)
        self._cref[rows] = 0.0
        Rr = gradient_terms(self._margins(Xr, self._W), signs)
        delta = self._pullback(Rr, Xr) + self.lam * m * self._W
        self._curv.add(Xr, weights, self.lam * m, sign=-1.0)
        self._terms += m
        C = rec.max_norm
        self._worst_case += self._K * _worst_case_sum(C, self.lam, n_before - m + 1, n_before)
        # the residual on D' at the old model: previous residual minus the removed gradient
        report = self._step(+delta, method, Xr, -1.0, n_removed=m, n_added=0, absent=absent)
        Xr[:] = 0.0
        return report

    def _add(self, rows: NDArray[np.intp]) -> UpdateReport:
        rec = self._fitted_records()
        m = rows.size
        if m == 0:
            return self._report(self.method, 0, 0, 0.0)
        if m == rec.n_records:  # an empty model learns as it fits, with the b it has
            self._fit_from_zero()
            return self._report("fit", 0, m, 0.0, recomputed=True)
        Xa = rec.X[rows]
        Za = self._margins(Xa, self._W)
        Ra = gradient_terms(Za, self._signs(rec.targets[rows]))
        delta = self._pullback(Ra, Xa) + self.lam * m * self._W
        weights = curvature_weights(Za)
        self._cref = np.vstack([self._cref, np.zeros((rec.n_rows - self._cref.shape[0], self._K))])
        self._cref[rows] = weights
        self._curv.add(Xa, weights, self.lam * m, sign=1.0)
        self._terms += m
        # the new rows' weights are exact at w; against the reference point of the
        # staleness bound (the last measurement) they are off by a known amount
        errors = np.abs(curvature_weights(self._margins(Xa, self._wref)) - weights)
        self._err_norm = np.sqrt(self._err_norm**2 + (errors**2).sum(axis=0))
        self._weight_error = np.maximum(self._weight_error, errors.max(axis=0))
        if self.certificate != "exact":
            self._spectral = math.sqrt(self._spectral**2 + float((Xa * Xa).sum()))
        C = rec.max_norm
        self._worst_case += self._K * _worst_case_sum(
            C, self.lam, rec.n_records - m + 1, rec.n_records
        )
        return self._step(-delta, self.method, Xa, 1.0, n_removed=0, n_added=m, absent=())

    def _step(
        self,
        delta: Array,
        method: str,
        batch: Array,
        sign: float,
        *,
        n_removed: int,
        n_added: int,
        absent: tuple[Hashable, ...],
    ) -> UpdateReport:
        r"""Apply one influence or Fisher step and certify the result.

        ``delta`` is the change of the gradient at the current model caused by the batch,
        with the sign that makes :math:`\nabla L_b(w; D_{new}) = r_{old} - \delta`.
        A Fisher step needs the remaining data's gradient: it is ``r_old - delta`` when the
        old residual is known exactly at the current model (always with ``"exact"``, right
        after a measurement with ``"adaptive"``), a pass over the records with ``"bound"``;
        otherwise (``"adaptive"`` between measurements) the step is an influence step and
        the Fisher correction waits for the next measurement. ``batch`` holds the batch's
        rows, leaving (``sign=-1``) or entering (``+1``) the Gram matrix of the bounding
        certificates.

        The report's ``method`` is the step taken, not the one asked for: ``"fisher"`` when
        the released model comes from a Newton step on the remaining data's gradient (the
        step itself, or a correction after a measurement), ``"influence"`` otherwise.
        """
        mode = self.certificate
        recomputed = False
        if mode != "exact" and self.drift_tol == 0 and self._drift.any():
            self._recompute_curvature()  # Guo et al.'s algorithm: the exact Hessian at w
            recomputed = True
        newton = method == "fisher" and (self._residual_known or mode == "bound")
        if newton:
            rhs = (self._residual - delta) if self._residual_known else self._gradient(self._W)
            solution, solve_residual = self._curv.solve_checked(rhs, self.step_rtol)
            step = -solution
            carried = np.zeros(self._K)  # a Newton step aims at zero
        else:
            rhs = delta
            step, solve_residual = self._curv.solve_checked(delta, self.step_rtol)
            carried = self._cert  # influence carries the old residual over
        prev_cert = self.certificate_
        if mode == "exact":
            predicted = np.zeros_like(rhs) if newton else self._residual
            self._W = self._W + step
            recomputed = self._measure(step, predicted, rhs) or recomputed
        else:
            increments, mismatch = self._take_bounded_step(step, solve_residual, batch, sign)
            self._cert = carried + increments
            self._residual_known = False
            self._drift += np.linalg.norm(step, axis=1)
            if mode == "bound" and (mismatch > self.drift_tol * increments).any():
                self._recompute_curvature()
                recomputed = True
            if mode == "adaptive" and (
                self.budget_ == 0 or self.certificate_ > self.measure_above * self.budget_
            ):
                if self._stale_measures >= self._measures_per_recompute() and (
                    mismatch.sum() > 0.5 * increments.sum()
                ):
                    # ski rental: the measurements the cached curvature's staleness has
                    # forced since its last rebuild cost about as much as rebuilding it
                    self._recompute_curvature()
                    recomputed = True
                self._remeasure()
                self._stale_measures += 1
        corrected = 0
        if method == "fisher" and self._residual_known:
            corrected, again = self._correct(force=recomputed and mode == "exact")
            recomputed = again or recomputed
        keep = self._fitted_records().compact()
        if keep is not None:
            self._cref = self._cref[keep]
        # the step actually taken: asked for "fisher" between "adaptive" measurements, the
        # step is an influence step, and stays one unless a measurement corrects it
        taken = "fisher" if newton or corrected else "influence"
        return self._report(
            taken,
            n_removed,
            n_added,
            self.certificate_ - prev_cert,
            absent=absent,
            recomputed=recomputed,
        )

    def _measures_per_recompute(self) -> int:
        """Measurements (two ``O(n d K)`` passes) that cost about one recomputation of the
        curvature (``O(n d^2 K / 2)`` in a BLAS-3 product, several times faster per flop):
        ``d / 25``, calibrated on the 2-core benchmark machine (d = 784: 31), at least 8."""
        return max(8, self._width // 25)

    def _set_residual(self, residual: Array) -> None:
        """Record an exact measurement of the gradient residual at the current model."""
        self._residual = residual
        self._residual_known = True
        self._cert = np.linalg.norm(residual, axis=1)

    def _remeasure(self) -> None:
        """Measure the residual exactly, and how stale the cached curvature weights are.

        The weights' largest error at this model restarts the bound's curvature term
        (:func:`~pipeline.unlearning.certify.weight_error`). Stale weights only loosen the
        bound (so measurements come sooner); the curvature is recomputed when a Fisher
        correction measures a poor contraction (:meth:`_measure`), as with ``"exact"``.
        """
        G, Z = self._gradient_and_margins(self._W)
        self._set_residual(G)
        self._note_weight_errors(Z)

    def _note_weight_errors(self, Z: Array) -> None:
        """The cached weights' errors at the current model, from the margins ``Z`` of a
        measurement pass (``O(n K)``): the staleness terms of the bound restart here."""
        present = self._fitted_records().weights > 0
        errors = np.abs(curvature_weights(Z[present]) - self._cref[present])
        if errors.size:
            self._weight_error = errors.max(axis=0)
            self._err_norm = np.sqrt(np.einsum("ik,ik->k", errors, errors))
        else:
            self._weight_error = np.zeros(self._K)
            self._err_norm = np.zeros(self._K)
        self._restart_drift()

    def _restart_drift(self) -> None:
        """Take the current model as the reference point ``w_ref`` of the bound's staleness
        terms: the drift ``w - w_ref`` and its product with the Gram matrix restart at 0."""
        self._wref = self._W.copy()
        self._drift = np.zeros(self._K)
        self._gram_drift = np.zeros_like(self._W)
        self._gram_drift_error = np.zeros(self._K)

    def _measure(self, step: Array, predicted: Array, rhs: Array) -> bool:
        """Measure the residual after ``step``; recompute the curvature if it strayed from
        ``predicted`` by more than ``drift_tol`` of the step's right-hand side."""
        residual, Z = self._gradient_and_margins(self._W)
        self._set_residual(residual)
        error = np.linalg.norm(residual - predicted, axis=1)
        if (error > self.drift_tol * np.linalg.norm(rhs, axis=1)).any():
            self._recompute_curvature()
            return True
        self._note_weight_errors(Z)
        return False

    def _correct(self, *, force: bool) -> tuple[int, bool]:
        """Corrective Newton steps on the measured residual while it is over
        ``measure_above`` of the budget (at most ``max_corrections``), or once after the
        curvature was recomputed (``force``). Each costs one solve and one pass over the
        records; returns the number of steps taken and whether the curvature had to be
        recomputed.
        """
        recomputed = False
        steps = 0
        for i in range(self.max_corrections):
            over = self.budget_ > 0 and self.certificate_ > self.measure_above * self.budget_
            if not (over or (force and i == 0)):
                break
            old = self._residual
            step = -self._curv.solve(old)
            self._W = self._W + step
            steps += 1
            recomputed = self._measure(step, np.zeros_like(step), old) or recomputed
        return steps, recomputed

    def _take_bounded_step(
        self, step: Array, solve_residual: Array, batch: Array, sign: float
    ) -> tuple[Array, Array]:
        """Take ``step`` and bound, per problem, how much it grew the residual; returns the
        bound and the part of it due to the cached curvature's staleness.

        The batch's rows B first enter (``sign=+1``) or leave (``-1``) the Gram matrix G.
        The bound is :func:`~pipeline.unlearning.certify.residual_growth` with Guo et al.'s
        Taylor term for ``"bound"`` and the tighter one otherwise; ``O(K d^2)``, no pass
        over records. Its ``||X'v||`` takes one product with G. Its ``||X'D||``,
        ``D = w - w_ref``, comes from ``G D``, kept from batch to batch instead of
        recomputed: B changes it by ``B^T B D`` (``O(m d)``), the step by ``G v``, the
        product just taken. ``_gram_drift_error`` bounds ``||G D - _gram_drift||`` (exact
        G and D): it adds up the round-off of every update, see the comments below.
        """
        rec = self._fitted_records()
        C = rec.max_norm
        K = self._K
        u = certify.UNIT_ROUNDOFF
        roundoff = certify.roundoff_allowance(self._terms, C, self.lam * rec.n_records, self._width)
        D = self._W - self._wref
        with single_thread():
            rank_update(self._gram, batch, sign)
            self._gram_drift += sign * ((D @ batch.T) @ batch)
            Gv = symmetric_product(self._gram, step)
        step_norm, D_norm = np.linalg.norm(step, axis=1), np.linalg.norm(D, axis=1)
        # B^T B D sums m terms (within the round-off allowance of m terms, per unit of ||D||);
        # adding it rounds by u of the sum
        batch_roundoff = certify.roundoff_allowance(batch.shape[0], C, 0.0, self._width)
        self._gram_drift_error += batch_roundoff * D_norm + u * np.linalg.norm(
            self._gram_drift, axis=1
        )
        # ||X'v||^2 <= v.Gv + roundoff ||v||^2 (the matrix's and the products' round-off), and
        # likewise for D, with the kept product's error on top: + ||D|| _gram_drift_error
        Xv = np.sqrt(np.maximum(np.einsum("kd,kd->k", step, Gv), 0.0) + roundoff * step_norm**2)
        XD = np.sqrt(
            np.maximum(np.einsum("kd,kd->k", D, self._gram_drift), 0.0)
            + roundoff * D_norm**2
            + D_norm * self._gram_drift_error
        )
        taylor = "guo" if self.certificate == "bound" else "tight"
        inc, mismatch = np.empty(K), np.empty(K)
        for k in range(K):
            inc[k], mismatch[k] = certify.residual_growth(
                C=C,
                Xv_norm=float(Xv[k]),
                XD_norm=float(XD[k]),
                err_norm=float(self._err_norm[k]),
                err_max=float(self._weight_error[k]),
                spectral=self._spectral,
                solve_residual=float(solve_residual[k]),
                step_norm=float(step_norm[k]),
                roundoff=roundoff,
                taylor=taylor,
            )
        self._W = self._W + step
        self._gram_drift += Gv
        # Gv is within roundoff ||v|| of the exact product (as the bound's own products are);
        # rounding w + v moves D by up to u ||w + v||, which G scales by up to ||X'||_2^2;
        # the addition rounds by u of the sum
        self._gram_drift_error += roundoff * step_norm + u * (
            self._spectral**2 * np.linalg.norm(self._W, axis=1)
            + np.linalg.norm(self._gram_drift, axis=1)
        )
        return inc, mismatch

    def _report(
        self,
        method: str,
        n_removed: int,
        n_added: int,
        growth: float,
        *,
        absent: tuple[Hashable, ...] = (),
        recomputed: bool = False,
    ) -> UpdateReport:
        cert = self.certificate_
        on = self.budget_ > 0
        next_cert = cert + max(float(growth), 0.0)
        n_records = self._fitted_records().n_records
        return UpdateReport(
            method=method,
            n_removed=n_removed,
            n_added=n_added,
            certificate=cert,
            budget=self.budget_,
            retrain_recommended=bool(on and next_cert > self.budget_),
            seconds=0.0,
            certified=bool(n_records == 0 or (on and cert <= self.budget_)),
            certificate_kind=self.certificate,
            already_absent=absent,
            curvature_recomputed=recomputed,
            worst_case=self._worst_case,
            n_records=n_records,
        )

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self, include_records: bool = False) -> dict[str, Any]:
        """Everything needed to resume, as arrays and JSON scalars (never pickle).

        Records' features are left out unless ``include_records``: the pipeline keeps them
        in its record store and hands them back to :meth:`from_state_dict`.
        """
        state, keep = self._records_state(include_records)  # with every parameter
        state.update(
            kind="logistic",
            classes_json=json.dumps(self.classes_.tolist()),
            W=self._W.copy(),
            B=self._B.copy(),
            curvature=self._curv.to_array(),
            cref=self._cref[keep].copy(),
            residual=self._residual.copy(),
            residual_known=self._residual_known,
            cert=self._cert.copy(),
            drift=self._drift.copy(),
            weight_error=self._weight_error.copy(),
            err_norm=self._err_norm.copy(),
            wref=self._wref.copy(),
            roundoff_terms=self._terms,
            stale_measures=self._stale_measures,
            worst_case=self._worst_case,
            n_curvature_recomputes=self.n_curvature_recomputes_,
        )
        if self.certificate != "exact":
            gram = self._gram.copy()
            symmetrize(gram)
            state.update(gram=gram, spectral=self._spectral)
        return state

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        ids: Sequence[Hashable] | None = None,
    ) -> LogisticUnlearner:
        """Rebuild a model saved by :meth:`state_dict`.

        Give the held records as ``X, y, ids`` (any order) unless the state includes them.
        """
        model: LogisticUnlearner = cls._from_params(state)
        model.classes_ = np.asarray(json.loads(state["classes_json"]))
        model._K = 1 if model.classes_.size == 2 else model.classes_.size
        n_held = model._restore_records(state, X, y, ids)
        model._W = np.array(state["W"], dtype=np.float64)
        model._B = np.array(state["B"], dtype=np.float64)
        model._curv = CurvatureCache.from_array(np.asarray(state["curvature"], dtype=np.float64))
        model._cref = np.array(state["cref"], dtype=np.float64).reshape(n_held, model._K)
        model._residual = np.array(state["residual"], dtype=np.float64)
        model._residual_known = bool(state["residual_known"])
        model._cert = np.array(state["cert"], dtype=np.float64)
        model._drift = np.array(state["drift"], dtype=np.float64)
        model._weight_error = np.array(state["weight_error"], dtype=np.float64)
        if "wref" in state:
            model._err_norm = np.array(state["err_norm"], dtype=np.float64)
            model._wref = np.array(state["wref"], dtype=np.float64)
            model._terms = float(state["roundoff_terms"])
            model._stale_measures = int(state.get("stale_measures", 0))
        else:  # an older checkpoint: its max error and path length bound the errors at W
            C = model._fitted_records().max_norm
            model._weight_error = np.minimum(0.25, model._weight_error + KAPPA * C * model._drift)
            model._err_norm = model._weight_error * math.sqrt(n_held)
            model._wref = model._W.copy()
            model._drift = np.zeros(model._K)
            model._terms = 10.0 * max(n_held, 1)
        model._worst_case = float(state["worst_case"])
        model.n_curvature_recomputes_ = int(state["n_curvature_recomputes"])
        if model.certificate != "exact":
            if "gram" in state:
                model._gram = np.array(state["gram"], dtype=np.float64, order="C")
                model._spectral = float(state["spectral"])
            else:  # saved by an "exact" model: build what the bound needs (O(n d^2))
                X = model._fitted_records().X
                model._gram = X.T @ X
                model._spectral = certify.spectral_upper_bound(model._gram)
        model._restore_gram_drift()
        return model

    def _restore_gram_drift(self) -> None:
        """``G (w - w_ref)`` for a resumed model, from one product (within ``roundoff`` of
        exact per unit of ``||w - w_ref||``, as in :meth:`_take_bounded_step`)."""
        D = self._W - self._wref
        self._gram_drift = np.zeros_like(D)
        self._gram_drift_error = np.zeros(self._K)
        if self.certificate != "exact" and D.any():
            rec = self._fitted_records()
            with single_thread():
                self._gram_drift = symmetric_product(self._gram, D)
            roundoff = certify.roundoff_allowance(
                self._terms, rec.max_norm, self.lam * rec.n_records, self._width
            )
            self._gram_drift_error = roundoff * np.linalg.norm(D, axis=1)


def _worst_case_sum(C: float, lam: float, first: int, last: int) -> float:
    """Guo et al.'s worst-case bound summed over removals from ``first..last`` records."""
    if first <= 1:
        return math.inf
    sizes = np.arange(first, last + 1, dtype=np.float64)
    return float(certify.worst_case_bound(C, lam, 2) * (1.0 / (sizes - 1.0)).sum())

r"""The step a batch takes: influence or Fisher, solved on the cached curvature.

Removing a batch R of m records (:math:`D' = D \setminus R`) from a model w with the removed
records' gradient :math:`\Delta = \sum_{i \in R} \nabla \ell_i(w) + \lambda m w` (the
regulariser is :math:`\lambda n`, so it loses :math:`\lambda m`):

``influence``  :math:`w \leftarrow w + \tilde H_{D'}^{-1} \Delta` (Guo et al., ICML 2020, eq. 3).
               It assumes w optimal for D, so the previous residual is carried over.

``fisher``     :math:`w \leftarrow w - \tilde H_{D'}^{-1} \nabla L_b(w; D')`, a corrective
               Newton step on the remaining data's full gradient, which also removes the
               residual left by earlier updates (Mahadevan & Mathioudakis, 2021, "Certifiable
               Machine Unlearning for Linear Models"). The default. It needs that gradient,
               :math:`\nabla L_b(w; D') = r - \Delta` with r the residual at w: when the
               certificate does not know r (``"adaptive"`` between measurements) the step is
               an influence step, and a Fisher correction follows the next measurement
               (:func:`correct`).

Learning a batch A is the same step with the sign of :math:`\Delta` reversed.

A *revision* changes records the model holds, in place (a feature column zeroed, a label
corrected: :mod:`pipeline.unlearning.features`, :mod:`pipeline.unlearning.labels`);
:func:`revise` then takes Warnecke et al.'s (NDSS 2023) second-order step on the changed
data's full gradient, :math:`w \leftarrow w - \tilde H^{-1} \nabla L_b(w; \tilde D)` (damped
and repeated while the residual is over ``measure_above`` of the budget), or their
first-order one, :math:`w \leftarrow w - \tau \nabla L_b(w; \tilde D)`, and measures the
residual. The curvature
:math:`\tilde H` is the cached one (:class:`~pipeline.unlearning.curvature.CurvatureCache`,
already updated by the batch's rows), solved to a relative accuracy ``step_rtol``: a batch
costs ``O(m d^2)`` per problem for the curvature and a few ``O(d^2)`` solver iterations,
whatever n is. The certificate (:mod:`pipeline.unlearning.certificates`) is told of the step
and certifies it; the report names the step actually taken.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning import certify
from pipeline.unlearning.certificates import Host
from pipeline.unlearning.loss import curvature_weights, gradient_terms, margins, pullback, signs
from pipeline.unlearning.newton import NewtonSolver

__all__ = ["REVISIONS", "Step", "correct", "forget_rows", "learn_rows", "revise", "take_step"]

#: The steps of a revision, the default first.
REVISIONS = ("second-order", "first-order")

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Step:
    """What a step did.

    Attributes
    ----------
    method : str
        ``"fisher"`` when the released model comes from a Newton step on the remaining
        data's gradient (the step itself, or a correction after a measurement),
        ``"influence"`` otherwise.
    recomputed : bool
        The cached curvature was rebuilt from all records during the step.
    growth : float
        How much the step grew the certificate (negative when a measurement lowered it).
    """

    method: str
    recomputed: bool
    growth: float


def forget_rows(host: Host, rows: NDArray[np.intp], method: str) -> Step:
    r"""Forget the held records at ``rows`` (some, not all of them) with ``method``.

    The rows are erased from the record table at once (their features leave the buffer
    while still in cache); their gradient :math:`\Delta` and curvature terms (with the
    weights they entered with) are taken from copies, which are zeroed once the step is
    taken. Guo et al.'s worst case grows by one removal per record.
    """
    rec = host._fitted_records()
    m, n_before, lam, K = rows.size, rec.n_records, host.lam, host._K
    Xr, Yr, weights = rec.X[rows], signs(rec.targets[rows], K), host._cref[rows]
    rec.erase(rows)
    host._cref[rows] = 0.0
    delta = pullback(gradient_terms(margins(Xr, host._W), Yr), Xr) + lam * m * host._W
    host._curv.add(Xr, weights, lam * m, sign=-1.0)
    cert = host._certificate
    cert.removed(host, m)
    cert.worst_case += K * certify.worst_case_sum(rec.max_norm, lam, n_before - m + 1, n_before)
    # the residual on D' at the old model: previous residual minus the removed gradient
    step = take_step(host, +delta, method, Xr, -1.0)
    _compact(host)
    Xr[:] = 0.0
    return step


def learn_rows(host: Host, rows: NDArray[np.intp], method: str) -> Step:
    """Learn the records just appended at ``rows`` (the model held others already).

    Their curvature weights are taken at the current model, exact there; the certificate
    notes how far they are from the weights at its reference point
    (:meth:`~pipeline.unlearning.certificates.Certificate.learned`).
    """
    rec = host._fitted_records()
    m, n, lam, K = rows.size, rec.n_records, host.lam, host._K
    Xa = rec.X[rows]
    Za = margins(Xa, host._W)
    delta = pullback(gradient_terms(Za, signs(rec.targets[rows], K)), Xa) + lam * m * host._W
    weights = curvature_weights(Za)
    host._cref = np.vstack([host._cref, np.zeros((rec.n_rows - host._cref.shape[0], K))])
    host._cref[rows] = weights
    host._curv.add(Xa, weights, lam * m, sign=1.0)
    cert = host._certificate
    cert.learned(host, Xa, weights)
    cert.worst_case += K * certify.worst_case_sum(rec.max_norm, lam, n - m + 1, n)
    step = take_step(host, -delta, method, Xa, 1.0)
    _compact(host)
    return step


def _compact(host: Host) -> None:
    """Drop the erased rows from the record buffer, and their curvature weights, once they
    are half of it."""
    keep = host._fitted_records().compact()
    if keep is not None:
        host._cref = host._cref[keep]


def take_step(host: Host, delta: Array, method: str, batch: Array, sign: float) -> Step:
    r"""Apply one influence or Fisher step to ``host`` and have its certificate certify it.

    Parameters
    ----------
    host : Host
        The model; its curvature already holds the batch's change.
    delta : ndarray of shape (K, d)
        The change of the gradient at the current model caused by the batch, with the sign
        that makes :math:`\nabla L_b(w; D_{new}) = r_{old} - \delta`.
    method : {"fisher", "influence"}
        The step asked for.
    batch : ndarray of shape (m, d)
        The batch's rows, leaving (``sign=-1``) or entering (``+1``) the records.
    sign : float

    Returns
    -------
    Step
    """
    cert = host._certificate
    recomputed = cert.before_step(host)
    rhs = cert.fisher_rhs(host, delta) if method == "fisher" else None
    newton = rhs is not None
    if rhs is not None:
        solution, solve_residual = host._curv.solve_checked(rhs, host.step_rtol)
        step = -solution
    else:
        rhs = delta
        step, solve_residual = host._curv.solve_checked(delta, host.step_rtol)
    before = cert.total
    W_old = host._W
    host._W = W_old + step
    certified = cert.after_step(host, W_old, step, solve_residual, rhs, newton, batch, sign)
    recomputed = certified or recomputed
    corrected = 0
    if method == "fisher" and cert.residual_known:
        corrected, again = correct(host, force=recomputed and cert.corrects_after_recompute)
        recomputed = again or recomputed
    taken = "fisher" if newton or corrected else "influence"
    return Step(taken, recomputed, cert.total - before)


def revise(host: Host, method: str) -> Step:
    r"""Correct the model after its held records changed in place; measure the residual.

    The records, b and the cached curvature already describe the changed data
    :math:`\tilde D` (the model's own state was changed with them). Then, with g the full
    gradient :math:`\nabla L_b(w; \tilde D)` (one pass over the records):

    ``"second-order"``  Newton steps :math:`w \leftarrow w - t \tilde H^{-1} g` on the cached
                        curvature: Warnecke et al.'s second-order update, always taken, then
                        more until the residual is within ``measure_above`` of the budget (with
                        certification off: the fit's tolerance, ``tol * n``), by the
                        engine's damped Newton (:class:`~pipeline.unlearning.newton.
                        NewtonSolver`: ``t < 1`` only when a full step would raise the
                        objective, the curvature rebuilt only when a step stalls). A
                        revision can move w far (a column that carried much of the model),
                        where an undamped step overshoots; a small one takes one step.
    ``"first-order"``   one step :math:`w \leftarrow w - \tau g` with :math:`\tau = 1 / L_k`,
                        :math:`L_k` a bound of the largest eigenvalue of problem k's cached
                        curvature; the residual is reported as it is.

    Either way the residual is then measured (a pass over the records) rather than
    bounded: a revision changes every record's term (a column) or a few records' labels by
    any amount, and the certificate after it is the gradient norm on :math:`\tilde D`.
    """
    cert = host._certificate
    before = cert.total
    rec = host._fitted_records()
    if method == "first-order":
        G = host._gradient(host._W)
        host._W = host._W - G / host._curv.lipschitz()[:, None]
        cert.remeasure(host)
        return Step("first-order", False, cert.total - before)
    recomputed = False

    def recompute(W: Array) -> None:
        nonlocal recomputed
        host._W = W
        host._recompute_curvature()
        recomputed = True

    def newton(tol_abs: float, max_iter: int, drift_tol: float) -> NewtonSolver:
        return NewtonSolver(
            objective=host._objective,
            gradient=host._gradient,
            curvature=host._curv,
            recompute=recompute,
            tol_abs=tol_abs,
            max_iter=max_iter,
            drift_tol=drift_tol,
        )

    # Warnecke et al.'s step, always taken (damped if a full one would raise the objective;
    # the curvature is not rebuilt for it), then more while over the target
    first = newton(0.0, 1, math.inf)
    W = first.solve(host._W)
    target = host.measure_above * host.budget_ if host.budget_ > 0 else host.tol * rec.n_records
    if first.gradient_norms.sum() > target:  # the certificate sums the K problems' norms
        W = newton(target / host._K, host.max_iter, host.drift_tol).solve(W)
    host._W = W
    cert.remeasure(host)
    return Step("second-order", recomputed, cert.total - before)


def correct(host: Host, *, force: bool) -> tuple[int, bool]:
    r"""Fisher corrections :math:`w \leftarrow w - \tilde H^{-1} r` on the measured residual r.

    Taken while the certificate is over ``measure_above`` of the budget (at most
    ``max_corrections``), or once after a measurement recomputed the curvature (``force``).
    Each costs one solve and one measurement (a pass over the records). Ordinary batches
    need none or one; a batch of records far from the data (say 20 uniform-noise images
    learned by a digits model) needs up to about 8 before Newton's quadratic phase.

    Returns
    -------
    steps : int
        Corrections taken.
    recomputed : bool
        Whether a measurement had to recompute the curvature.
    """
    cert = host._certificate
    recomputed = False
    steps = 0
    for i in range(host.max_corrections):
        over = host.budget_ > 0 and cert.total > host.measure_above * host.budget_
        if not (over or (force and i == 0)):
            break
        old = cert.residual
        step = -host._curv.solve(old)
        host._W = host._W + step
        steps += 1
        recomputed = cert.measure(host, np.zeros_like(step), old) or recomputed
    return steps, recomputed

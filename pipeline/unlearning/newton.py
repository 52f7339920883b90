r"""Damped Newton on a cached curvature: how the logistic unlearner fits and refits.

The solver minimises K perturbed objectives :math:`L_b(w_k; D)` at once
(:mod:`pipeline.unlearning.loss`; ``W`` has shape ``(K, d)``). An iteration is

.. math::

    s_k = \tilde H_k^{-1} g_k, \qquad w_k \leftarrow w_k - t_k s_k,

with :math:`g_k = \nabla L_b(w_k; D)`, :math:`\tilde H_k` the cached curvature
(:class:`~pipeline.unlearning.curvature.CurvatureCache`, solved by preconditioned conjugate
gradients, ``O(d^2)`` an iteration) and :math:`t_k \in \{1, 1/2, 1/4, \dots\}` the first step
that passes Armijo's test :math:`L_b(w_k - t_k s_k) \le L_b(w_k) - 10^{-4} t_k\, g_k^\top s_k`
(Nocedal & Wright, *Numerical Optimization*, 2nd ed., sec. 3.1), per problem.

The curvature is not rebuilt every iteration: it stays as cached (the Hessian where it was
last rebuilt) while each step divides the gradient norm by more than ``1 / drift_tol``, and
is rebuilt at the current point (``O(n d^2)`` per problem, through the ``recompute``
callback) when a step stalls. Far from the optimum a damped step may raise the gradient norm
while it lowers the objective; only :data:`FLOOR_STEPS` stalls in a row on a fresh curvature
are taken for the round-off floor, and end the solve. The solve converges when every
problem's gradient norm is at most ``tol_abs`` (the unlearner passes ``tol * n``).

:meth:`NewtonSolver.solve` lists the steps in order, as scikit-learn's
``sklearn/linear_model/_glm/_newton_solver.py`` does; each step's docstring says which
attributes it sets.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning.curvature import CurvatureCache

__all__ = ["FLOOR_STEPS", "NewtonSolver"]

Array = NDArray[np.float64]

FLOOR_STEPS = 3
"""Newton steps on a fresh curvature that must fail to lower the gradient norm before the
solver takes it for the round-off floor and stops."""

_ARMIJO = 1e-4
_HALVINGS = 40


class NewtonSolver:
    r"""Damped Newton for K problems that share a cached curvature.

    Parameters
    ----------
    objective : callable
        ``objective(W)``, W of shape (K, d): the K objective values, shape (K,).
    gradient : callable
        ``gradient(W)``: the K gradients, shape (K, d).
    curvature : CurvatureCache
        The cached curvature the steps are solved against (updated in place by
        ``recompute``).
    recompute : callable
        ``recompute(W)``: rebuild ``curvature`` at W from all records (``O(n d^2)``).
    tol_abs : float
        Converged when every problem's gradient norm is at most this.
    max_iter : int
        Newton steps allowed.
    drift_tol : float
        A step that leaves a problem's gradient norm above ``drift_tol`` times the previous
        one has stalled: the curvature is rebuilt.
    progress : callable, optional
        ``progress(fraction, message)``, called after every step but the last.

    Attributes
    ----------
    W : ndarray of shape (K, d)
        The current iterate.
    gradient_value : ndarray of shape (K, d)
        The gradient at ``W``.
    gradient_norms : ndarray of shape (K,)
    objective_value : ndarray of shape (K,) or None
        The objective at ``W`` once a line search has computed it.
    direction : ndarray of shape (K, d)
        The last Newton direction :math:`\tilde H^{-1} g` (the step is ``-t * direction``).
    step_sizes : ndarray of shape (K,)
        The last line search's t per problem.
    iteration : int
        Newton steps taken.
    fresh : bool
        The curvature was rebuilt at or after the last step's starting point.
    floor : int
        Consecutive steps on a fresh curvature that lowered no problem's gradient norm.
    converged, at_floor : bool
    """

    def __init__(
        self,
        *,
        objective: Callable[[Array], Array],
        gradient: Callable[[Array], Array],
        curvature: CurvatureCache,
        recompute: Callable[[Array], None],
        tol_abs: float,
        max_iter: int,
        drift_tol: float,
        progress: Callable[[float, str], None] | None = None,
    ) -> None:
        self.objective = objective
        self.gradient = gradient
        self.curvature = curvature
        self.recompute = recompute
        self.tol_abs = tol_abs
        self.max_iter = max_iter
        self.drift_tol = drift_tol
        self.progress = progress

    def solve(self, W: Array) -> Array:
        """Minimise from ``W`` (not modified); returns the last iterate, shape (K, d).

        Order of calls::

            setup
            until converged, at the floor or max_iter steps:
                check_convergence
                inner_solve
                line_search
                update_gradient_hessian
                report_progress
            finalize
        """
        self.setup(W)
        while self.iteration < self.max_iter:
            self.check_convergence()
            if self.converged:
                break
            self.inner_solve()
            self.line_search()
            self.update_gradient_hessian()
            if self.at_floor:
                break
            self.report_progress()
        return self.finalize()

    # -- the steps ------------------------------------------------------------------------
    def setup(self, W: Array) -> None:
        """Start at ``W``, on the curvature as it is (taken as fresh).

        Sets ``W``, ``gradient_value``, ``gradient_norms``, ``objective_value`` (None),
        ``iteration`` (0), ``fresh`` (True), ``floor`` (0), ``converged``, ``at_floor``
        (False) and the progress scale ``start`` (the first gradient norm, at least
        ``tol_abs``).
        """
        self.W = W
        self.gradient_value = self.gradient(W)
        self.gradient_norms = np.linalg.norm(self.gradient_value, axis=1)
        self.objective_value: Array | None = None
        self.iteration = 0
        self.fresh = True
        self.floor = 0
        self.converged = False
        self.at_floor = False
        self.start = max(float(self.gradient_norms.max()), self.tol_abs)

    def check_convergence(self) -> None:
        """Sets ``converged``: every problem's gradient norm is at most ``tol_abs``."""
        self.converged = bool(self.gradient_norms.max() <= self.tol_abs)

    def inner_solve(self) -> None:
        r"""Solve :math:`\tilde H_k s_k = g_k` on the cached curvature (PCG, ``O(d^2)`` an
        iteration). Sets ``direction`` and counts the step in ``iteration``."""
        self.direction = self.curvature.solve(self.gradient_value)
        self.iteration += 1

    def line_search(self) -> None:
        """Armijo backtracking along ``-direction``, halving each problem's t separately.

        Sets ``W``, ``step_sizes`` and ``objective_value`` (at the new ``W``: the next
        line search starts from it).
        """
        f0 = self.objective(self.W) if self.objective_value is None else self.objective_value
        S = self.direction
        slope = -(self.gradient_value * S).sum(axis=1)
        t = np.ones(S.shape[0])
        for _ in range(_HALVINGS):
            W = self.W - t[:, None] * S
            f = self.objective(W)
            ok = f <= f0 + _ARMIJO * t * slope + 1e-12 * np.abs(f0)
            if ok.all():
                break
            t = np.where(ok, t, 0.5 * t)
        self.W, self.step_sizes, self.objective_value = W, t, f

    def update_gradient_hessian(self) -> None:
        """The gradient at the new ``W``; the curvature rebuilt there if the step stalled.

        A problem's step stalled when its gradient norm stayed above ``drift_tol`` times the
        previous one (while that was above ``tol_abs``). On a curvature that is not fresh the
        curvature is rebuilt at ``W`` (``recompute``). On a fresh one a stall is only
        counted when no problem improved: damped Newton may raise the gradient norm while
        it lowers the objective far from the optimum (records far from the data:
        ``tests/reliability/test_abuse.py``), so only :data:`FLOOR_STEPS` such steps in a
        row are the round-off floor.

        Sets ``gradient_value``, ``gradient_norms``, ``fresh``, ``floor`` and ``at_floor``.
        """
        G = self.gradient(self.W)
        norms = np.linalg.norm(G, axis=1)
        stalled = (norms > self.drift_tol * self.gradient_norms) & (
            self.gradient_norms > self.tol_abs
        )
        if not stalled.any():
            self.fresh, self.floor = False, 0
        elif self.fresh and (norms >= self.gradient_norms).all():
            self.floor += 1
            self.at_floor = self.floor >= FLOOR_STEPS
        else:
            self.floor = 0
            self.recompute(self.W)
            self.fresh = True
        self.gradient_value, self.gradient_norms = G, norms

    def report_progress(self) -> None:
        """Call ``progress`` with the fraction of the way, on a log scale, from the first
        gradient norm to ``tol_abs`` (capped at 0.99: :meth:`finalize` is not called yet)."""
        if self.progress is None or self.start <= self.tol_abs:
            return
        top = float(self.gradient_norms.max())
        done = math.log(self.start / max(top, self.tol_abs)) / math.log(self.start / self.tol_abs)
        self.progress(min(max(done, 0.0), 0.99), f"gradient norm {top:.3g}")

    def finalize(self) -> Array:
        """Sets ``converged`` for the last iterate and returns ``W``."""
        self.check_convergence()
        return self.W

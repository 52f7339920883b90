r"""Certified removal: the budget, the certificates and the worst-case bound.

Guo et al. (ICML 2020), Theorem 3: let :math:`w^-` be the model released after a removal and
:math:`D'` the remaining data. If the gradient residual of the *perturbed* objective,
:math:`u = \nabla L_b(w^-; D')`, satisfies :math:`\lVert u\rVert \le \epsilon'`, then
:math:`w^-` is the exact minimiser of :math:`L_{b-u}(\cdot; D')`, and with
:math:`b \sim \mathcal N(0, \sigma^2 I)` the removal is :math:`(\epsilon, \delta)`-certified for

.. math:: \epsilon' = \frac{\sigma\,\epsilon}{\sqrt{2 \ln(1.5/\delta)}}

(the budget).

The theorem constrains :math:`\lVert u\rVert` itself; any way of knowing it, or an upper
bound of it, suffices. The engine offers three:

``"exact"``
    :math:`\lVert u\rVert` measured over the remaining data after every update: two passes
    over ``X`` (``O(n d)`` per problem). It *is* the quantity the theorem bounds, so it is
    valid for any update rule (influence, Fisher, with a cached curvature).

``"bound"``
    Guo's data-dependent bound accumulated over batches (Corollary 2):
    :math:`\lVert u\rVert \le \sum_t \gamma \lVert X'\rVert_2 \lVert v_t\rVert \lVert X' v_t\rVert`
    with :math:`v_t = H^{-1}\Delta_t` and :math:`\gamma = 1/4`. Guo's bound assumes the exact
    Hessian at :math:`w`; the engine caches curvature, so it adds the terms that make the
    bound hold for a cached curvature (see :func:`bound_increment`).

``"adaptive"`` (the default)
    The last exact measurement plus the per-batch increments of :func:`bound_increment`
    since: an upper bound at every version, by the triangle inequality, at ``O(d^2)`` per
    batch. When it passes a set fraction of the budget the residual is measured again and
    the running value drops back to the measurement. Retraining is recommended only when
    the *measured* residual is over budget, which, since measured residuals are orders of
    magnitude below the accumulated bound, comes far later than with ``"bound"``.

The worst-case bound for one removal (Guo et al., Theorem 1) is
:math:`4\gamma C^2 / (\lambda^2 (n-1))` with :math:`C = \max_i \lVert x_i\rVert`.
For one-vs-rest the certificate is the sum over the K problems' residual norms, a
conservative stand-in for the norm of the stacked residual the joint mechanism needs.
"""

from __future__ import annotations

import math

import numpy as np

from pipeline.unlearning.loss import KAPPA

__all__ = [
    "CERTIFICATES",
    "GUO_GAMMA",
    "bound_increment",
    "budget",
    "spectral_upper_bound",
    "weight_error",
    "worst_case_bound",
]

#: Guo et al.'s Lipschitz constant for the logistic loss's second derivative.
GUO_GAMMA = 0.25

#: The certificate kinds an unlearner accepts.
CERTIFICATES = ("adaptive", "exact", "bound")


def budget(sigma: float, epsilon: float, delta: float) -> float:
    """Gradient-residual budget :math:`\\epsilon'` for an (epsilon, delta) guarantee.

    Returns 0.0 when ``sigma`` is 0 (certification switched off).
    """
    if sigma <= 0:
        return 0.0
    return sigma * epsilon / math.sqrt(2.0 * math.log(1.5 / delta))


def worst_case_bound(C: float, lam: float, n: int) -> float:
    """Guo et al.'s data-independent bound on the residual of a single removal from n points."""
    if n <= 1:
        return math.inf
    return 4.0 * GUO_GAMMA * C**2 / (lam**2 * (n - 1))


def bound_increment(
    *,
    spectral: float,
    step_norm: float,
    Xv_norm: float,
    C: float,
    weight_error: float,
    solve_residual: float,
) -> float:
    r"""Upper bound on how much one update can grow the gradient residual, for one problem.

    With the old residual :math:`r`, the batch's gradient change :math:`\Delta`, the step
    :math:`v` solved against the cached curvature :math:`\tilde H` (so that
    :math:`\lVert \tilde H v - \Delta\rVert` is ``solve_residual``), the new residual is

    .. math::

        r + (\tilde H v - \Delta) + (H(w) - \tilde H) v + T, \qquad
        \lVert T\rVert \le \gamma C \lVert X'\rVert_2 \lVert v\rVert \lVert X' v\rVert

    (the Taylor remainder of Guo et al., Corollary 2, who take C = 1). The cached curvature
    differs from the true one only in its records' weights: if every weight is within
    ``weight_error`` of the true :math:`\ell''(x_i^\top w)`, then
    :math:`\lVert (H(w) - \tilde H) v\rVert \le` ``weight_error``
    :math:`\cdot \lVert X'\rVert_2 \lVert X' v\rVert`. See :func:`weight_error`.

    Parameters
    ----------
    spectral : float
        An upper bound on :math:`\lVert X'\rVert_2`.
    step_norm, Xv_norm : float
        :math:`\lVert v\rVert` and :math:`\lVert X' v\rVert`.
    C : float
        An upper bound on the largest record norm.
    weight_error : float
        An upper bound on the largest error of a cached curvature weight.
    solve_residual : float
        :math:`\lVert \tilde H v - \Delta\rVert`.
    """
    taylor = GUO_GAMMA * C * spectral * step_norm * Xv_norm
    mismatch = weight_error * spectral * Xv_norm
    return float(taylor + mismatch + solve_residual)


def weight_error(measured: float, C: float, drift: float) -> float:
    r"""Bound on how far the cached curvature weights are from the true ones at w.

    ``measured`` is the largest error :math:`|\ell''(x_i^\top w_m) - c_i|` at the last point
    :math:`w_m` where it was computed (0 right after the curvature was recomputed) and
    ``drift`` the path length of w since; the third derivative of the loss is at most
    :math:`\kappa` in magnitude, so each weight moved by at most
    :math:`\kappa C \lVert w - w_m\rVert`. Weights lie in (0, 1/4], so no error exceeds 1/4.
    """
    return min(0.25, measured + KAPPA * C * drift)


def spectral_upper_bound(gram: np.ndarray) -> float:
    """``sqrt(lambda_max(X^T X))`` from a Gram matrix, padded for round-off."""
    top = float(np.linalg.eigvalsh(gram)[-1])
    return math.sqrt(max(top, 0.0) * (1.0 + 1e-12) + 1e-300)

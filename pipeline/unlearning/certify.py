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
    with :math:`v_t = H^{-1}\Delta_t` and :math:`\gamma = 1/4`, kept as the reference point.
    Guo's bound assumes the exact Hessian at :math:`w`; the engine caches curvature, so it
    adds the terms that make the bound hold for a cached curvature
    (:func:`residual_growth` with ``taylor="guo"``).

``"adaptive"`` (the default)
    The last exact measurement plus the per-batch increments of :func:`residual_growth`
    since: an upper bound at every version, by the triangle inequality, at ``O(d^2)`` per
    batch. Its Taylor term is :math:`\tfrac{\kappa}{2} C \lVert X'v\rVert^2` (:math:`\kappa
    = 1/(6\sqrt3)`, the largest third derivative of the loss) instead of Guo's, 200 times
    smaller on MNIST 3 vs 8 for a batch of 100, and the cached curvature's staleness is
    charged through :math:`\lVert X'(w - w_m)\rVert` rather than
    :math:`\lVert X'\rVert_2 \lVert w - w_m\rVert`, so measurements are rare. When the
    running value passes a set fraction of the budget the residual is measured again and
    the running value drops back to the measurement. Retraining is recommended only when
    the *measured* residual is over budget.

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
    "GUO_GAMMA",
    "UNIT_ROUNDOFF",
    "budget",
    "residual_growth",
    "roundoff_allowance",
    "spectral_upper_bound",
    "worst_case_bound",
    "worst_case_sum",
]

#: Guo et al.'s Lipschitz constant for the logistic loss's second derivative.
GUO_GAMMA = 0.25

#: Unit round-off of float64 arithmetic.
UNIT_ROUNDOFF = 2.0**-53


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


def worst_case_sum(C: float, lam: float, first: int, last: int) -> float:
    """:func:`worst_case_bound` summed over single removals from ``last`` down to ``first``
    records (``first..last``, each from ``n`` records); infinite once ``first <= 1``."""
    if first <= 1:
        return math.inf
    sizes = np.arange(first, last + 1, dtype=np.float64)
    return float(worst_case_bound(C, lam, 2) * (1.0 / (sizes - 1.0)).sum())


def residual_growth(
    *,
    C: float,
    Xv_norm: float,
    XD_norm: float,
    err_norm: float,
    err_max: float,
    spectral: float,
    solve_residual: float,
    step_norm: float,
    roundoff: float,
    taylor: str = "tight",
) -> tuple[float, float]:
    r"""Upper bound on how much one step can grow the gradient residual, for one problem.

    Returns ``(increment, mismatch)``: the bound, and the part of it due to the cached
    curvature's staleness. Every input is an O(d^2) or O(d) quantity, so a batch never
    touches the n records to certify itself.

    **Setting.** :math:`X'` holds the records after the batch (rows :math:`x_i`,
    :math:`\lVert x_i\rVert \le C`), :math:`g(w) = \nabla L_b(w; D')`. The cache holds
    :math:`\tilde H = X'^\top \operatorname{diag}(c) X' + \lambda n' I` (each record's term
    enters with the weight :math:`c_i` it was given and leaves with it), up to round-off
    :math:`\lVert \tilde H_{\rm mem} - \tilde H\rVert_2 \le` ``roundoff``. The step
    :math:`v` (``step_norm`` :math:`= \lVert v\rVert`) goes from :math:`w` to :math:`w + v`
    and was solved against a target :math:`t` (``solve_residual``
    :math:`= \lVert \tilde H_{\rm mem} v - t\rVert`). At the last measurement point
    :math:`w_m` the weights' errors :math:`e_i = \ell''(x_i^\top w_m) - c_i` were known:
    ``err_norm`` :math:`\ge \lVert e\rVert_2`, ``err_max`` :math:`\ge \max_i |e_i|`. Write
    :math:`u = X'v` (``Xv_norm`` :math:`\ge \lVert u\rVert`) and :math:`D = w - w_m`
    (``XD_norm`` :math:`\ge \lVert X'D\rVert`); ``spectral`` :math:`\ge \lVert X'\rVert_2`.

    **Identity.** By the fundamental theorem of calculus, with :math:`g(w) = r - t` (the old
    residual r; influence: :math:`t = \Delta`, Fisher: :math:`t = \Delta - r`),

    .. math::

        g(w+v) = g(w) + \int_0^1 \nabla^2 L(w + sv)\,ds\; v
               = r + (\tilde H_{\rm mem} v - t) + (\tilde H - \tilde H_{\rm mem}) v
                 + X'^\top \operatorname{diag}(\bar e)\, u,

    .. math::

        \bar e_i = \int_0^1 \ell''(x_i^\top w + s u_i)\,ds - c_i
                 = e_i + \bigl[\ell''(x_i^\top w) - \ell''(x_i^\top w_m)\bigr]
                   + \int_0^1 \bigl[\ell''(x_i^\top w + s u_i) - \ell''(x_i^\top w)\bigr]ds,

    since the regulariser's :math:`\lambda n' I` is the same in the Hessian and in
    :math:`\tilde H`. (For a Fisher step the old residual is part of t, so ``r`` is 0.)

    **Bounds.** :math:`|\ell'''| \le \kappa = 1/(6\sqrt3)`
    (:data:`~pipeline.unlearning.loss.KAPPA`), so the second bracket is at most
    :math:`\kappa |x_i^\top D|` and the integral at most
    :math:`\int_0^1 \kappa s |u_i|\,ds = \kappa |u_i| / 2`. For any weights a,
    :math:`\lVert X'^\top \operatorname{diag}(a) u\rVert = \lVert\sum_i a_i u_i x_i\rVert
    \le C \sum_i |a_i||u_i|`, and Cauchy-Schwarz on the sums gives

    * measured staleness: :math:`C \lVert e\rVert_2 \lVert u\rVert`, or
      :math:`\lVert X'\rVert_2 \max_i|e_i|\, \lVert u\rVert` (whichever is smaller);
    * drift since the measurement: :math:`\kappa C \lVert X' D\rVert \lVert u\rVert`;
    * Taylor remainder: :math:`\tfrac{\kappa}{2} C \lVert u\rVert^2`.

    With ``solve_residual`` and ``roundoff`` :math:`\cdot \lVert v\rVert` that is the
    increment: :math:`\lVert g(w+v)\rVert \le \lVert r\rVert +` increment.

    **Against Guo et al.** Their Corollary 2 bounds the Taylor term by
    :math:`\gamma C \lVert X'\rVert_2 \lVert v\rVert \lVert X'v\rVert` with
    :math:`\gamma = 1/4` (``taylor="guo"`` keeps it, for the ``"bound"`` certificate). Since
    :math:`\lVert X'v\rVert \le \lVert X'\rVert_2 \lVert v\rVert` and
    :math:`\kappa / 2 < \gamma / 5`, the bound here is never larger, and smaller by the
    factor :math:`(2\gamma/\kappa)\,\lVert X'\rVert_2\lVert v\rVert / \lVert X'v\rVert`:
    about 5 from the constant, and more because an unlearning step points where the data
    is thin (MNIST 3 vs 8, 100 records removed: 0.012 against 2.4). Likewise the drift
    term uses :math:`\lVert X'D\rVert` where a max-norm argument needs
    :math:`\lVert X'\rVert_2 \lVert D\rVert`.
    """
    if taylor == "guo":
        remainder = GUO_GAMMA * C * spectral * step_norm * Xv_norm
    else:
        remainder = 0.5 * KAPPA * C * Xv_norm * Xv_norm
    staleness = min(C * err_norm, spectral * err_max) * Xv_norm
    drift = KAPPA * C * XD_norm * Xv_norm
    mismatch = staleness + drift
    return float(remainder + mismatch + solve_residual + roundoff * step_norm), float(mismatch)


def roundoff_allowance(n_terms: float, C: float, lam_n: float, d: int) -> float:
    r"""A bound on the round-off held by a matrix accumulated from record terms.

    A d x d matrix accumulated from ``n_terms`` terms :math:`c_i x_i x_i^\top`
    (:math:`0 \le c_i \le 1`, :math:`\lVert x_i\rVert \le C`; additions and subtractions
    both count) and diagonal shifts summing to ``lam_n`` differs from the exact sum by at
    most :math:`\gamma_N \sum_i c_i |x_i||x_i|^\top + \gamma_N \lambda n I` entrywise
    (Higham, *Accuracy and Stability of Numerical Algorithms*, sec. 3.1, with :math:`N` =
    ``n_terms`` + d accumulations per entry), whose 2-norm is at most
    :math:`\gamma_N (N C^2 + \lambda n)`, with :math:`\gamma_N = N u / (1 - N u)`. Padded by
    2 (and by 1 inside), which also covers forming :math:`\tilde H v` or :math:`v^\top G v`
    in float64. Negligible in practice (about 1e-9 at n = 12k), but it keeps the bound an
    upper bound however long the cache lives between recomputations.
    """
    N = float(n_terms) + float(d)
    gamma = N * UNIT_ROUNDOFF / max(1.0 - N * UNIT_ROUNDOFF, 0.5)
    return 2.0 * gamma * (N * max(C, 1.0) ** 2 + abs(lam_n) + 1.0)


def spectral_upper_bound(gram: np.ndarray) -> float:
    """``sqrt(lambda_max(X^T X))`` from a Gram matrix, padded for round-off."""
    top = float(np.linalg.eigvalsh(gram)[-1])
    return math.sqrt(max(top, 0.0) * (1.0 + 1e-12) + 1e-300)

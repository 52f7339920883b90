r"""The likelihood-ratio membership attack (LiRA) of Carlini, Chien, Nasr, Song, Terzis and
Tramèr, "Membership Inference Attacks From First Principles" (IEEE S&P 2022), per example,
with shadow refits that are cheap because the models are linear.

For each target record z the attacker learns how the model's confidence in z,
:math:`\phi(z) = \log p_y - \log(1 - p_y)` (:meth:`LinearModel.confidence`), is distributed
over models trained **with** z and **without** it, by fitting K shadow models on random
halves of a population that contains every target: each target is in exactly K/2 of them
(the "online" attack). With Gaussians :math:`\mathcal N(\mu_{\rm in}(z), \sigma_{\rm in}^2)`
and :math:`\mathcal N(\mu_{\rm out}(z), \sigma_{\rm out}^2)` (per-example means; one
variance per side pooled over the targets, Carlini et al.'s "fixed variance" for few
shadows), the score of a model on z is the log likelihood ratio

.. math::

    \Lambda(z) = \log \mathcal N(\phi(z); \mu_{\rm in}(z), \sigma_{\rm in}^2)
                 - \log \mathcal N(\phi(z); \mu_{\rm out}(z), \sigma_{\rm out}^2),

and its ROC AUC at telling the erased records from never-seen ones is compared between the
published model and the retrained reference.

Bounded cost
------------
A shadow is the checkpoint's objective (same lambda, ``fit_intercept``, one-vs-rest
classes) without the perturbation b, fitted by L-BFGS from a warm start at the reference's
coefficients (logistic), or solved in closed form (ridge). Its population is the targets
(at most ``max_targets`` erased and as many never-seen records, sampled) and at most
``pool`` of the held records, so its cost does not grow with the model: a few hundred
milliseconds per shadow for ten classes and 784 features. **Limitation:** the shadows are
trained on a sample of a few thousand records, not on the model's n, so their means are
those of smaller models; both models compared are scored against the same Gaussians, so the
comparison stays fair, but the absolute AUCs are not those of an attacker with full-size
shadows.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.optimize import minimize
from scipy.stats import rankdata

from pipeline.audit.certificate import label_index
from pipeline.audit.reference import LinearModel
from pipeline.errors import InvalidInput
from pipeline.unlearning.loss import gradient, objective

__all__ = ["ShadowSetup", "Shadows", "fit_shadows", "lira_scores", "roc_auc"]

Array = NDArray[np.float64]
_MIN_STD = 1e-6


def roc_auc(member_scores: ArrayLike, other_scores: ArrayLike) -> float:
    r"""ROC AUC of a score that is high for members: :math:`P(s_m > s_o) + \tfrac12
    P(s_m = s_o)` over pairs, the Mann-Whitney U over :math:`n_m n_o` from average ranks.
    0.5 is chance; 1 separates them perfectly."""
    m = np.asarray(member_scores, dtype=np.float64).ravel()
    o = np.asarray(other_scores, dtype=np.float64).ravel()
    if m.size == 0 or o.size == 0:
        msg = f"need records on both sides: {m.size} candidates, {o.size} never-seen records"
        raise InvalidInput(msg)
    ranks = rankdata(np.concatenate([m, o]))
    u = float(ranks[: m.size].sum()) - m.size * (m.size + 1) / 2.0
    return u / (m.size * o.size)


@dataclass(frozen=True)
class ShadowSetup:
    """What the shadows are fitted on, and how many.

    Attributes
    ----------
    X, y : ndarray
        Records the model holds (the shadows' population besides the targets).
    kind : str
        The model kind (``"logistic"`` or ``"ridge"``).
    penalty : float
        lambda (logistic: ``lambda n / 2 ||w||^2``) or alpha (ridge: ``alpha / 2 ||w||^2``,
        intercept unpenalised).
    fit_intercept : bool
    n_shadows : int
        K, even; each target is in K/2 shadows.
    max_targets : int
        At most this many erased and as many never-seen records are attacked (sampled).
    pool : int
        At most this many held records join the population.
    seed : int
    """

    X: Array
    y: NDArray[Any]
    kind: str
    penalty: float
    fit_intercept: bool
    n_shadows: int = 8
    max_targets: int = 500
    pool: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_shadows < 2 or self.n_shadows % 2:
            msg = f"n_shadows={self.n_shadows}: give an even number, at least 2"
            raise InvalidInput(msg)


@dataclass(frozen=True)
class Shadows:
    """The shadows' confidences on the targets and the Gaussians fitted to them.

    Attributes
    ----------
    mu_in, mu_out : ndarray of shape (n_targets,)
    sigma_in, sigma_out : float
    n_shadows, population : int
    """

    mu_in: Array
    mu_out: Array
    sigma_in: float
    sigma_out: float
    n_shadows: int
    population: int


def _sample(n: int, cap: int, rng: np.random.Generator) -> NDArray[np.intp]:
    return np.sort(rng.choice(n, size=cap, replace=False)) if n > cap else np.arange(n)


def targets(
    setup: ShadowSetup, n_erased: int, n_unseen: int
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """The erased and never-seen rows attacked (at most ``max_targets`` of each)."""
    rng = np.random.default_rng(setup.seed)
    return _sample(n_erased, setup.max_targets, rng), _sample(n_unseen, setup.max_targets, rng)


def fit_shadows(
    setup: ShadowSetup, start: LinearModel, X_targets: ArrayLike, y_targets: ArrayLike
) -> Shadows:
    """Fit ``setup.n_shadows`` shadows on random halves of the population (each target in
    exactly half of them, the other rows in half on average) and the Gaussians of each
    target's confidence with and without it.

    Parameters
    ----------
    setup : ShadowSetup
    start : LinearModel
        Warm start of every logistic shadow (the reference's coefficients).
    X_targets, y_targets : array_like
        The attacked records (erased and never-seen).
    """
    Xt = np.asarray(X_targets, dtype=np.float64)
    yt = np.asarray(y_targets)
    rng = np.random.default_rng(setup.seed + 1)
    context = _sample(len(setup.y), setup.pool, rng)
    X = np.vstack([Xt, setup.X[context]])
    y = np.concatenate([yt, np.asarray(setup.y)[context]])
    K, m, t = setup.n_shadows, len(y), len(yt)
    inside = np.zeros((K, m), dtype=bool)
    for j in range(m):  # each record in exactly K/2 shadows
        inside[rng.permutation(K)[: K // 2], j] = True
    fit = _FITTERS.get(setup.kind)
    if fit is None:
        msg = f"no shadow fitter for model kind {setup.kind!r}: LiRA knows {sorted(_FITTERS)}"
        raise InvalidInput(msg)
    conf = np.empty((K, t))
    for k in range(K):
        shadow = fit(setup, start, X[inside[k]], y[inside[k]])
        conf[k] = shadow.confidence(Xt, yt)
    member = inside[:, :t]
    mu_in = (conf * member).sum(axis=0) / (K // 2)
    mu_out = (conf * ~member).sum(axis=0) / (K // 2)
    dev_in = (conf - mu_in)[member]
    dev_out = (conf - mu_out)[~member]
    ddof = K / (K - 2) if K > 2 else 1.0  # K/2 samples per mean, each side
    return Shadows(
        mu_in=mu_in,
        mu_out=mu_out,
        sigma_in=max(float(np.sqrt(np.mean(dev_in**2) * ddof)), _MIN_STD),
        sigma_out=max(float(np.sqrt(np.mean(dev_out**2) * ddof)), _MIN_STD),
        n_shadows=K,
        population=m,
    )


def lira_scores(
    model: LinearModel, shadows: Shadows, X_targets: ArrayLike, y_targets: ArrayLike
) -> Array:
    """:math:`\\Lambda(z)` of each target under ``model``: high means "member"."""
    phi = model.confidence(X_targets, y_targets)
    z_in = (phi - shadows.mu_in) / shadows.sigma_in
    z_out = (phi - shadows.mu_out) / shadows.sigma_out
    return np.asarray(
        -0.5 * z_in**2 - np.log(shadows.sigma_in) + 0.5 * z_out**2 + np.log(shadows.sigma_out)
    )


# -- shadow fits, by kind -------------------------------------------------------------------
def _augment(X: Array, fit_intercept: bool) -> Array:
    return np.hstack([X, np.ones((X.shape[0], 1))]) if fit_intercept else X


def _logistic_shadow(
    setup: ShadowSetup, start: LinearModel, X: Array, y: NDArray[Any]
) -> LinearModel:
    """Guo et al.'s objective without b on these rows, by L-BFGS from ``start``."""
    classes = start.classes or []
    Xa = _augment(X, setup.fit_intercept)
    coef = np.atleast_2d(np.asarray(start.coef, dtype=np.float64))
    W0 = coef
    if setup.fit_intercept:
        W0 = np.hstack([coef, np.asarray(start.intercept, dtype=np.float64).reshape(-1, 1)])
    K = W0.shape[0]
    idx = label_index(list(y.tolist()), classes)
    if K == 1:
        Y = np.where(idx == 1, 1.0, -1.0)[:, None]
    else:
        Y = np.where(idx[:, None] == np.arange(K)[None, :], 1.0, -1.0)
    B = np.zeros_like(W0)

    def fun(flat: Array) -> tuple[float, Array]:
        W = flat.reshape(W0.shape)
        value = float(objective(Xa, Y, W, B, setup.penalty).sum())
        return value, gradient(Xa, Y, W, B, setup.penalty).ravel()

    found = minimize(
        fun, W0.ravel(), jac=True, method="L-BFGS-B", options={"maxiter": 200, "gtol": 1e-6}
    )
    W = found.x.reshape(W0.shape)
    d = X.shape[1]
    intercept = W[:, -1] if setup.fit_intercept else np.zeros(K)
    if K == 1:
        return LinearModel(start.kind, W[0, :d], np.asarray(intercept[0]), classes)
    return LinearModel(start.kind, W[:, :d], intercept, classes)


def _ridge_shadow(setup: ShadowSetup, start: LinearModel, X: Array, y: NDArray[Any]) -> LinearModel:
    """Ridge without b on these rows: the normal equations, intercept unpenalised."""
    Xa = _augment(X, setup.fit_intercept)
    penalty = np.full(Xa.shape[1], setup.penalty)
    if setup.fit_intercept:
        penalty[-1] = 0.0
    A = Xa.T @ Xa + np.diag(penalty)
    w = np.asarray(np.linalg.solve(A, Xa.T @ np.asarray(y, dtype=np.float64)), dtype=np.float64)
    d = X.shape[1]
    return LinearModel(start.kind, w[:d], np.asarray(w[-1] if setup.fit_intercept else 0.0))


#: How each kind's shadows are fitted, by kind name (the audit's own maths: the kind
#: registry does not say how to fit an unperturbed copy of a model).
_FITTERS: dict[str, Callable[[ShadowSetup, LinearModel, Array, NDArray[Any]], LinearModel]] = {
    "logistic": _logistic_shadow,
    "ridge": _ridge_shadow,
}

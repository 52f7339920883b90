"""The price of certification, shown and chosen: baselines and the regularisation frontier.

Guo et al.'s certificate ("Certified Data Removal", ICML 2020) needs a strongly convex
objective: the penalty ``lambda * n / 2 * ||w||^2`` buys the budget
``eps' = sigma * epsilon / sqrt(2 ln(1.5 / delta))`` room, because the gradient residual
that a removal leaves shrinks as ``lambda`` grows. Too large a ``lambda`` and the model
predicts little more than the majority class; too small and every batch of removals
exhausts the budget and costs a full retrain. Nothing in the certificate tells a user
which they got, so:

* :func:`baselines` puts the published model next to scikit-learn's uncertified default
  (the kind's ``baseline`` in :mod:`pipeline.unlearning.kinds`: ``LogisticRegression()`` /
  ``Ridge()``) and, for a classifier, the majority class on the same split;
* :func:`lam_frontier` fits each candidate ``lambda`` on part of the training rows and
  reports its validation accuracy, its budget and how many removals its certificate
  supports before it recommends a retrain, measured by removing random training rows one
  at a time under Guo's accumulated data-dependent bound (``certificate="bound"``): the
  conservative count, which the default adaptive certificate (which measures the residual
  and corrects it) always meets or exceeds; :func:`choose_lam` picks the most accurate
  candidate that supports at least a stated number of removals.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning.kinds import kind_named

__all__ = ["Baselines", "LamCandidate", "baselines", "choose_lam", "lam_frontier"]

DEFAULT_LAMS = (1e-5, 1e-4, 1e-3, 1e-2)


@dataclass(frozen=True)
class Baselines:
    """Scores on the holdout of references that carry no certificate.

    Attributes
    ----------
    sklearn : float
        scikit-learn's default estimator, fitted on the same training rows.
    majority : float or None
        Accuracy of always predicting the training rows' most frequent label
        (classification only).
    """

    sklearn: float
    majority: float | None


def baselines(
    kind: str,
    X_train: NDArray[np.float64],
    y_train: NDArray[Any],
    X_holdout: NDArray[np.float64],
    y_holdout: NDArray[Any],
) -> Baselines:
    """scikit-learn's default and (a classifier) the majority class, scored on the holdout."""
    entry = kind_named(kind)
    model = entry.baseline().fit(X_train, y_train)
    majority = None
    if entry.classifier:
        labels, counts = np.unique(y_train, return_counts=True)
        majority = float(np.mean(y_holdout == labels[np.argmax(counts)]))
    return Baselines(float(model.score(X_holdout, y_holdout)), majority)


@dataclass(frozen=True)
class LamCandidate:
    """One point of the accuracy / certification frontier.

    Attributes
    ----------
    lam : float
    accuracy : float
        On the validation rows (held out of the training rows).
    budget : float
        The certificate's budget ``eps'`` (independent of ``lam``).
    removals_supported : int
        Training rows removed, in batches, before the certificate recommended a retrain
        (capped at ``max_removed`` of :func:`lam_frontier`; ``capped`` says so).
    capped : bool
    """

    lam: float
    accuracy: float
    budget: float
    removals_supported: int
    capped: bool


def lam_frontier(
    X: NDArray[np.float64],
    y: NDArray[Any],
    *,
    lams: tuple[float, ...] = DEFAULT_LAMS,
    params: dict[str, Any] | None = None,
    validation: float = 0.2,
    max_removed: float = 0.1,
    max_count: int = 1000,
    batch: int = 1,
    certificate: str = "bound",
    seed: int = 0,
    kind: str = "logistic",
) -> list[LamCandidate]:
    """Each candidate ``lambda``'s validation accuracy, budget and supported removals.

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    y : ndarray of shape (n_samples,)
        The training rows only (never the holdout).
    lams : tuple of float
        Candidates, e.g. ``(1e-5, 1e-4, 1e-3, 1e-2)``.
    params : dict, optional
        The other engine parameters (``sigma``, ``epsilon``, ``delta``,
        ``fit_intercept``...); ``lam`` is set per candidate.
    validation : float
        Fraction of the rows held out for the accuracy.
    max_removed, max_count : float, int
        Stop counting removals at this fraction of the fitted rows, or this many.
    batch : int
        Removals per batch.
    certificate : str
        The certificate the count is measured under (default Guo's accumulated bound).
    seed : int
        Seed of the split and of the removal order (not of the perturbation ``b``).
    kind : str
        The model kind (:mod:`pipeline.unlearning.kinds`); it must take ``lam`` and
        ``certificate``. ``accuracy`` is then the kind's score.
    """
    if not 0 < validation < 1:
        msg = f"validation={validation}: give a fraction in (0, 1)"
        raise InvalidInput(msg)
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(y))
    n_val = max(1, int(round(validation * len(y))))
    val, fit = order[:n_val], order[n_val:]
    size = max(1, batch)
    cap = min(int(max_removed * len(fit)), max_count)
    out = []
    for lam in lams:
        engine = kind_named(kind).build(
            **{**(params or {}), "lam": lam, "certificate": certificate}
        )
        engine.fit(X[fit], y[fit], ids=[int(i) for i in fit])
        accuracy = float(engine.score(X[val], y[val]))
        removed, capped = 0, True
        for start in range(0, cap, size):
            report = engine.forget([int(i) for i in fit[start : start + size]])
            if report.retrain_recommended or not report.certified:
                capped = False
                break
            removed += report.n_removed
        out.append(LamCandidate(lam, accuracy, float(engine.budget_), removed, capped))
    return out


def choose_lam(frontier: list[LamCandidate], min_removals: int = 1) -> LamCandidate:
    """The most accurate candidate that supports at least ``min_removals`` removals
    (ties: the larger ``lambda``, whose certificate lasts longer).

    Raises
    ------
    InvalidInput
        No candidate supports that many removals.
    """
    fit = [c for c in frontier if c.removals_supported >= min_removals]
    if not fit:
        best = max(frontier, key=lambda c: c.removals_supported)
        msg = (
            f"no lambda supports {min_removals} removals before a retrain (at most "
            f"{best.removals_supported}, lambda {best.lam:g}): try larger lambdas or sigma"
        )
        raise InvalidInput(msg)
    return max(fit, key=lambda c: (round(c.accuracy, 4), c.lam))

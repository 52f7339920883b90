"""The feature-injection test of Izzo, Smart, Chaudhuri and Zou, "Approximate Data Deletion
from Machine Learning Models" (AISTATS 2021): a feature non-zero only on the records to
delete, learned and then forgotten; what is left of its weight (0 is perfect).
"""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning import LogisticUnlearner

__all__ = ["InjectionResult", "feature_injection", "inject_feature"]

Array = NDArray[np.float64]


def inject_feature(
    X: ArrayLike,
    y: ArrayLike,
    doomed: Sequence[int],
    *,
    value: float = 1.0,
    label: Hashable | None = None,
) -> tuple[Array, NDArray[Any]]:
    """``X`` with a feature appended that is ``value`` on the ``doomed`` rows and 0 elsewhere.

    Every row is then divided by one factor, the largest row norm if it exceeds 1, so that
    the rows stay in the unit ball the certificate assumes. With ``label`` the doomed rows
    get that label (a copy of ``y``), so that only the injected feature explains them.

    Returns
    -------
    X_injected : ndarray of shape (n, d + 1)
    y_injected : ndarray of shape (n,)
    """
    Xa = np.asarray(X, dtype=np.float64)
    labels = np.array(y, copy=True)
    rows = np.asarray(list(doomed), dtype=np.intp)
    if rows.size == 0 or rows.size >= Xa.shape[0]:
        msg = f"doomed names {rows.size} of {Xa.shape[0]} rows: name some rows, not all"
        raise InvalidInput(msg)
    if label is not None:
        labels[rows] = label
    injected = np.zeros((Xa.shape[0], 1))
    injected[rows] = value
    Xi = np.hstack([Xa, injected])
    Xi /= max(1.0, float(np.linalg.norm(Xi, axis=1).max()))
    return Xi, labels


@dataclass(frozen=True)
class InjectionResult:
    r"""What the feature-injection test measured (weights are L2 norms over the classes).

    Attributes
    ----------
    trained : float
        Weight on the injected feature after training with the doomed records.
    retrained : float
        Weight after retraining from scratch without them (same objective and b).
    perturbation : float
        :math:`\lVert b_j\rVert / (\lambda n')`, what the retrained weight must be (0
        when :math:`\sigma = 0`).
    after : dict of str to float
        Weight after forgetting the doomed records, per method, and ``"retrain"``.
    residual : dict of str to float
        :math:`\lVert w_j - w_j^{\rm retrain}\rVert / \lVert w_j^{\rm trained} -
        w_j^{\rm retrain}\rVert`: the share of what the doomed records put on the feature
        that is left (0 is perfect, 1 is nothing forgotten).
    raw : dict of str to float
        :math:`\lVert w_j\rVert / \lVert w_j^{\rm trained}\rVert`, Izzo et al.'s figure
        (equal to ``residual`` when :math:`\sigma = 0`).
    reported : dict of str to str
        The step each method reported taking (its last batch's).
    certificate : dict of str to float
        The certificate each method's model reports afterwards (``budget`` is the budget).
    budget : float
    n_records, n_removed, batches : int
    """

    trained: float
    retrained: float
    perturbation: float
    after: dict[str, float]
    residual: dict[str, float]
    raw: dict[str, float]
    reported: dict[str, str]
    certificate: dict[str, float]
    budget: float
    n_records: int
    n_removed: int
    batches: int


def feature_injection(
    X: ArrayLike,
    y: ArrayLike,
    doomed: Sequence[int],
    *,
    params: Mapping[str, Any] | None = None,
    value: float = 1.0,
    label: Hashable | None = None,
    batch: int | None = None,
    methods: Sequence[str] = ("fisher", "influence"),
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> InjectionResult:
    r"""The feature-injection test of Izzo, Smart, Chaudhuri and Zou (AISTATS 2021).

    A feature is appended that is ``value`` on the ``doomed`` records and 0 on every other
    one (:func:`inject_feature`; with ``label`` the doomed records get that label, so that
    only the injected feature explains them and training puts a large weight on it). The
    model is trained, the doomed records are forgotten (at once, or in batches of
    ``batch``) with each of ``methods``, and the weight left on the feature is compared
    with the trained weight and with a retrain.

    Why a retrain's weight is not 0: the feature is 0 on every remaining record, so the
    remaining objective's gradient in that coordinate is :math:`\lambda n' w_j + b_j` and
    the retrained weight is :math:`w_j^* = -b_j / (\lambda n')`, the perturbation's doing
    (Guo et al.'s b; 0 when :math:`\sigma = 0`, Izzo et al.'s setting). So the figure
    compared with the target is the share left of what the records put there,
    :math:`\lVert w_j - w_j^*\rVert / \lVert w_j^{\rm trained} - w_j^*\rVert`.

    What it tests: once the last doomed record is gone, the remaining data's Hessian is
    :math:`\lambda n'` in that coordinate and decoupled from the others, so a Newton step
    on the remaining objective (``fisher``) lands on :math:`w_j^*` to round-off whatever
    happened before. An ``influence`` step (Guo et al., eq. 3) assumes the model it starts
    from is optimal and carries the residual of earlier steps over: removed in one batch it
    misses by the fit's tolerance over :math:`\lambda n'`, but in several batches each
    step is taken while doomed records remain (the Hessian is not block-diagonal, the
    margins on the injected feature are large) and what those approximate steps leave
    stays on the feature: a large part of it (benchmarks in ``BENCHMARKS.md``).

    Parameters
    ----------
    X, y : array_like
        Features (rows of norm at most 1 preferred) and labels.
    doomed : sequence of int
        Rows that get the injected feature and are then forgotten.
    params : mapping, optional
        :class:`~pipeline.unlearning.LogisticUnlearner` parameters (``method`` is set per
        run).
    value : float
        The injected feature's value on the doomed rows.
    label : optional
        Label given to the doomed rows.
    batch : int, optional
        Forget in batches of this size (default: one batch).
    methods : sequence of str
        Removal methods to run.
    variants : mapping, optional
        More runs, by name: parameter changes applied to the same fitted model (its
        checkpoint), e.g. ``{"exact": {"certificate": "exact"}}``; each forgets with its
        default method.

    Returns
    -------
    InjectionResult
    """
    Xi, labels = inject_feature(X, y, doomed, value=value, label=label)
    rows = np.asarray(list(doomed), dtype=np.intp)
    ids = list(range(Xi.shape[0]))
    base = dict(params or {})
    base.pop("method", None)
    model = LogisticUnlearner(**base).fit(Xi, labels, ids=ids)
    state = model.state_dict(include_records=True)
    step = batch or rows.size

    def weight(m: LogisticUnlearner) -> Array:
        return np.atleast_2d(m.coef_)[:, -1].copy()

    def forget(m: LogisticUnlearner, method: str | None) -> str:
        taken = ""
        for start in range(0, rows.size, step):
            taken = m.forget(rows[start : start + step].tolist(), method=method).method
        return taken

    trained = weight(model)
    reference = LogisticUnlearner.from_state_dict(state)
    forget(reference, None)
    reference.refit(warm_start=False)
    retrained = weight(reference)
    B = np.asarray(state["B"], dtype=np.float64)
    perturbation = float(np.linalg.norm(B[:, Xi.shape[1] - 1])) / (
        reference.lam * reference.n_records_
    )
    after: dict[str, Array] = {"retrain": retrained}
    reported = {"retrain": "retrain"}
    certificate = {"retrain": reference.certificate_}
    runs: dict[str, tuple[Mapping[str, Any], str | None]] = {m: ({}, m) for m in methods}
    runs |= {name: (changes, None) for name, changes in (variants or {}).items()}
    for name, (changes, method) in runs.items():
        copy = LogisticUnlearner.from_state_dict({**state, **changes})
        reported[name] = forget(copy, method)
        after[name] = weight(copy)
        certificate[name] = copy.certificate_
    scale = float(np.linalg.norm(trained - retrained))
    size = float(np.linalg.norm(trained))

    def share(v: Array, ref: Array, norm: float) -> float:
        return float(np.linalg.norm(v - ref)) / norm if norm > 0 else math.nan

    return InjectionResult(
        trained=size,
        retrained=float(np.linalg.norm(retrained)),
        perturbation=perturbation,
        after={k: float(np.linalg.norm(v)) for k, v in after.items()},
        residual={k: share(v, retrained, scale) for k, v in after.items()},
        raw={k: share(v, np.zeros_like(v), size) for k, v in after.items()},
        reported=reported,
        certificate=certificate,
        budget=model.budget_,
        n_records=int(Xi.shape[0]),
        n_removed=int(rows.size),
        batches=math.ceil(rows.size / step),
    )

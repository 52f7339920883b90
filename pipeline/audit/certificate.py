r"""The certificate part: recompute the published version's gradient residual from the store.

``certificate``
    Guo, Goldstein, Hannun and van der Maaten, "Certified Data Removal from Machine Learning
    Models" (ICML 2020), Theorem 3: a released model :math:`w^-` is
    :math:`(\epsilon, \delta)`-certified when the gradient residual of the perturbed objective
    on the data it holds, :math:`u = \nabla L_b(w^-; D')`, has
    :math:`\lVert u\rVert \le \epsilon' = \sigma\epsilon / \sqrt{2 \ln(1.5/\delta)}`. The
    audit recomputes :math:`u` from the stored records :math:`(x_i, y_i)`, the *published*
    coefficients and the objective's parameters saved in the version's checkpoint
    (:math:`\lambda`, b, ``fit_intercept``, the one-vs-rest classes): for each problem k,

    .. math::

        u_k = \sum_i -y_{ik}\,\sigma(-y_{ik}\,\tilde x_i^\top w_k)\,\tilde x_i
              + \lambda n\, w_k + b_k, \qquad \text{residual} = \sum_k \lVert u_k\rVert

    (:func:`pipeline.unlearning.loss.gradient`; :math:`\tilde x_i` is :math:`x_i` with a 1
    appended when the model fits an intercept; one-vs-rest sums the K norms, as the engine
    does). The recorded certificate must be an upper bound of it, up to round-off: each
    coordinate of :math:`u_k` sums :math:`N = n + d + 2` terms, so two evaluations in
    float64 differ by at most :math:`2\gamma_N S_k`, with
    :math:`S_k = \sum_i |r_{ik}|\,\lVert\tilde x_i\rVert + \lambda n \lVert w_k\rVert
    + \lVert b_k\rVert` and :math:`\gamma_N = N u / (1 - N u)` (Higham, *Accuracy and
    Stability of Numerical Algorithms*, sec. 3.1). The recorded certificate must also be
    within the budget recomputed from the checkpoint's :math:`\sigma, \epsilon, \delta`.
    Ridge: :math:`u = \tilde X^\top(\tilde X w - y) + \alpha P w + b` (P leaves the
    intercept unpenalised); its recorded certificate is the residual of the normal equations
    kept in memory, so the allowance also covers the round-off of the accumulated
    :math:`\tilde X^\top \tilde X` and :math:`\tilde X^\top y`.

"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.audit.report import Finding, PartReport
from pipeline.audit.snapshot import Snapshot, records_usable
from pipeline.errors import InvalidInput
from pipeline.store.codec import StateValue
from pipeline.unlearning import certify
from pipeline.unlearning.base import decode_ids
from pipeline.unlearning.kinds import kind_of_state
from pipeline.unlearning.loss import gradient, gradient_terms

__all__ = [
    "Residual",
    "budget_of",
    "certificate_part",
    "checkpoint_classes",
    "label_index",
    "recompute_residual",
    "state_float",
]

Array = NDArray[np.float64]


@dataclass(frozen=True)
class Residual:
    """The recomputed gradient residual, per problem, and its round-off allowance."""

    norms: Array
    tolerance: Array

    @property
    def total(self) -> float:
        return float(self.norms.sum())

    @property
    def total_tolerance(self) -> float:
        return float(self.tolerance.sum())


def _gamma(n_terms: float) -> float:
    """Higham's :math:`\\gamma_N = N u / (1 - N u)` for a sum of N float64 terms."""
    nu = float(n_terms) * certify.UNIT_ROUNDOFF
    return nu / max(1.0 - nu, 0.5)


def state_float(state: Mapping[str, StateValue], name: str) -> float:
    value = state.get(name)
    if not isinstance(value, int | float):
        msg = f"checkpoint has no number {name!r} (found {value!r}): not written by this engine"
        raise InvalidInput(msg)
    return float(value)


def checkpoint_classes(state: Mapping[str, StateValue]) -> list[Any]:
    return list(json.loads(str(state["classes_json"])))


def label_index(labels: Sequence[Any], classes: Sequence[Any]) -> NDArray[np.int64]:
    """Index of each label in ``classes``; raises :class:`InvalidInput` for another label."""
    where = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        k = where.get(label)
        if k is None:
            msg = f"label {label!r} is not one of the model's classes {list(classes)!r}"
            raise InvalidInput(msg)
        out[i] = k
    return out


def _stacked(coef: Array, intercept: Array, fit_intercept: bool) -> Array:
    """Published coefficients as the engine's ``W`` of shape (K, d + fit_intercept)."""
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    if fit_intercept:
        W = np.hstack([W, np.asarray(intercept, dtype=np.float64).reshape(-1, 1)])
    return W


def recompute_residual(
    state: Mapping[str, StateValue],
    coef: ArrayLike,
    intercept: ArrayLike,
    X: ArrayLike,
    labels: Sequence[Any],
) -> Residual:
    r"""The gradient residual of the perturbed objective at ``coef``, from the records.

    Parameters
    ----------
    state : mapping
        An engine checkpoint (``state_dict()``): only the objective's parameters are read
        (``kind``, ``lam`` or ``alpha``, ``fit_intercept``, ``classes_json``, b as ``B`` or
        ``b``, and for ridge the counts behind the round-off allowance), never the cached
        curvature, weights or certificate.
    coef, intercept : array_like
        The coefficients to certify (the published ones), shapes as a published version.
    X : array_like of shape (n, d)
        The records held, as stored.
    labels : sequence
        Their labels (class labels for logistic, targets for ridge).

    Returns
    -------
    Residual
        :math:`\lVert u_k\rVert` per problem (one for binary logistic and ridge) and its
        round-off allowance (see the module docstring).

    Raises
    ------
    InvalidInput
        A label is not one of the checkpoint's classes, or shapes do not match.
    """
    kind = kind_of_state(state)  # InvalidInput naming the kind when it is unknown
    residual = _RESIDUALS.get(kind.name)
    if residual is None:
        msg = (
            f"the audit cannot recompute the residual of a {kind.name!r} model: it knows "
            f"{sorted(_RESIDUALS)}"
        )
        raise InvalidInput(msg)
    fit_intercept = bool(state["fit_intercept"])
    Xr = np.asarray(X, dtype=np.float64).reshape(len(labels), -1)
    n = Xr.shape[0]
    Xa = np.hstack([Xr, np.ones((n, 1))]) if fit_intercept else Xr
    W = _stacked(np.asarray(coef, dtype=np.float64), np.asarray(intercept), fit_intercept)
    return residual(state, W, Xa, labels)


def _logistic_residual(
    state: Mapping[str, StateValue], W: Array, Xa: Array, labels: Sequence[Any]
) -> Residual:
    """Guo et al.'s logistic objective, one problem per one-vs-rest class."""
    n, width = Xa.shape
    row_norms = np.linalg.norm(Xa, axis=1)
    lam = state_float(state, "lam")
    classes = checkpoint_classes(state)
    K = 1 if len(classes) == 2 else len(classes)
    B = np.asarray(state["B"], dtype=np.float64).reshape(K, width)
    if W.shape != B.shape:
        msg = f"coefficients of shape {W.shape} do not fit the checkpoint's b {B.shape}"
        raise InvalidInput(msg)
    idx = label_index(labels, classes)
    if K == 1:
        Y = np.where(idx == 1, 1.0, -1.0)[:, None]
    else:
        Y = np.where(idx[:, None] == np.arange(K)[None, :], 1.0, -1.0)
    G = gradient(Xa, Y, W, B, lam)
    R = gradient_terms(Xa @ W.T, Y)
    S = np.abs(R).T @ row_norms + lam * n * np.linalg.norm(W, axis=1) + np.linalg.norm(B, axis=1)
    tol = 2.0 * _gamma(n + width + 2) * S
    return Residual(np.linalg.norm(G, axis=1), tol)


def _ridge_residual(
    state: Mapping[str, StateValue], W: Array, Xa: Array, labels: Sequence[Any]
) -> Residual:
    """The ridge normal equations; the allowance covers their accumulated round-off."""
    n, width = Xa.shape
    row_norms = np.linalg.norm(Xa, axis=1)
    fit_intercept = bool(state["fit_intercept"])
    alpha = state_float(state, "alpha")
    b = np.asarray(state["b"], dtype=np.float64).reshape(width)
    w = W[0]
    y = np.asarray(labels, dtype=np.float64)
    penalty = np.full(width, alpha)
    if fit_intercept:
        penalty[-1] = 0.0
    res = Xa @ w - y
    g = Xa.T @ res + penalty * w + b
    S = float(np.abs(res) @ row_norms + alpha * np.linalg.norm(w) + np.linalg.norm(b))
    # the recorded residual is of X'X and X'y accumulated over every addition and removal
    C = float(row_norms.max(initial=0.0))
    terms = state_float(state, "n_appended") + len(
        decode_ids(str(state.get("forgotten_ids_json", "lines:")))
    )
    N = terms + width
    ymax = float(np.abs(y).max(initial=0.0))
    accumulated = N * C * C * float(np.linalg.norm(w)) + N * C * ymax
    tol = 2.0 * _gamma(N + n) * (S + accumulated)
    return Residual(np.array([np.linalg.norm(g)]), np.array([tol]))


#: The residual of each kind's objective, by kind name. The maths is the audit's own (it
#: recomputes, it does not ask the engine), so it is kept here rather than in the kind
#: registry (:data:`pipeline.unlearning.kinds.KINDS`); a new kind needs an entry.
_RESIDUALS: dict[
    str, Callable[[Mapping[str, StateValue], Array, Array, Sequence[Any]], Residual]
] = {"logistic": _logistic_residual, "ridge": _ridge_residual}
#: Kinds whose removal re-solves the objective exactly, so that without perturbation no
#: (epsilon, delta) budget applies (the registry does not say so).
_EXACT_REMOVAL = frozenset({"ridge"})


def budget_of(state: Mapping[str, StateValue]) -> float:
    return certify.budget(
        state_float(state, "sigma"), state_float(state, "epsilon"), state_float(state, "delta")
    )


def certificate_part(snap: Snapshot) -> PartReport:
    meta = snap.version.metadata
    where = f"model {snap.model_id!r} v{meta.version}"
    if snap.federated:
        return PartReport(
            "certificate",
            (
                Finding(
                    "checkpoint",
                    None,
                    f"{where} is federated: its objective's state lives in the coordinating "
                    "worker's memory, not in a checkpoint, so the residual cannot be recomputed",
                ),
            ),
        )
    if snap.state is None:
        return PartReport(
            "certificate",
            (
                Finding(
                    "checkpoint",
                    False,
                    f"{where} has no engine checkpoint, so its objective (lambda, b) is "
                    "unknown and its certificate cannot be checked; every publication saves "
                    "one: it was deleted",
                ),
            ),
        )
    state = snap.state
    findings: list[Finding] = []
    budget = budget_of(state)
    figures: dict[str, Any] = {
        "recorded_certificate": meta.certificate,
        "recorded_budget": meta.budget,
        "budget": budget,
        "n_records": len(snap.records),
        "kind": state.get("kind"),
    }
    if meta.budget is None or not math.isclose(meta.budget, budget, rel_tol=1e-12, abs_tol=0.0):
        findings.append(
            Finding(
                "budget",
                False,
                f"{where} records budget {meta.budget!r}, but the checkpoint's sigma, epsilon "
                f"and delta give {budget:.6g}",
            )
        )
    else:
        findings.append(
            Finding(
                "budget",
                True,
                f"recorded budget {budget:.6g} = sigma epsilon / sqrt(2 ln(1.5 / delta)) of "
                "the checkpoint's parameters",
            )
        )
    usable = records_usable(snap)
    if usable is None:
        findings.append(
            Finding(
                "residual",
                None,
                "some held records are unreadable (see integrity): residual not recomputed",
            )
        )
        return PartReport("certificate", tuple(findings), figures)
    X, labels = usable
    if not labels:  # an emptied model: w = 0 depends on no record, certificate 0
        zero = not np.any(snap.version.coef) and not np.any(snap.version.intercept)
        findings.append(
            Finding(
                "empty_model",
                bool(zero and meta.certificate in (0.0, None)),
                "the model holds no record: its coefficients must be 0 and its certificate 0"
                + ("" if zero else f"; found non-zero coefficients in {where}"),
            )
        )
        return PartReport("certificate", tuple(findings), figures)
    try:
        residual = recompute_residual(state, snap.version.coef, snap.version.intercept, X, labels)
    except InvalidInput as exc:
        findings.append(Finding("residual", False, f"{where}: {exc}"))
        return PartReport("certificate", tuple(findings), figures)
    figures |= {
        "residual": residual.total,
        "residual_per_problem": residual.norms.tolist(),
        "roundoff_allowance": residual.total_tolerance,
    }
    recorded = meta.certificate
    if recorded is None:
        findings.append(Finding("upper_bound", None, f"{where} records no certificate"))
    else:
        bound = recorded + residual.total_tolerance
        findings.append(
            Finding(
                "upper_bound",
                residual.total <= bound,
                f"recomputed residual {residual.total:.6g} "
                + ("<=" if residual.total <= bound else ">")
                + f" recorded certificate {recorded:.6g} (+ round-off "
                f"{residual.total_tolerance:.2g})",
            )
        )
    if kind_of_state(state).name in _EXACT_REMOVAL and budget == 0.0:
        findings.append(
            Finding(
                "within_budget",
                None,
                "ridge without perturbation (sigma = 0): a removal re-solves the normal "
                "equations exactly; no (epsilon, delta) budget applies",
            )
        )
    elif budget == 0.0:
        findings.append(
            Finding(
                "within_budget",
                False,
                f"{where} has sigma = 0: certification is off, its removals carry no "
                "(epsilon, delta) guarantee (train with sigma > 0)",
            )
        )
    else:
        worst = max(residual.total, recorded or 0.0)
        findings.append(
            Finding(
                "within_budget",
                worst <= budget,
                f"certificate {worst:.6g} "
                + ("<=" if worst <= budget else ">")
                + f" budget {budget:.6g}",
            )
        )
    return PartReport("certificate", tuple(findings), figures)

r"""The disparity part: whom does the published model fail that a retrain would not?

Mahadevan and Mathioudakis, "Certifiable Unlearning Pipelines for Logistic Regression: An
Experimental Study" (MAKE 2022), judge an unlearned model :math:`w^u` against the model
retrained without the erased data :math:`w^*` by

.. math::

    \mathrm{AccErr} = \lvert \mathrm{Acc}_{\rm test}(w^*) - \mathrm{Acc}_{\rm test}(w^u)\rvert,
    \qquad
    \mathrm{AccDis} = \lvert \mathrm{Acc}_{D_m}(w^*) - \mathrm{Acc}_{D_m}(w^u)\rvert,

the test accuracy lost to the approximation and the accuracy gap on the erased data
:math:`D_m` (a model that still fits the erased records better than a retrain remembers
them). Here the test set is the model's holdout, :math:`w^*` the retrained reference
(:func:`~pipeline.audit.reference.retrained_reference`), and AccErr is also taken per class
(the bias watch's question: does unlearning hurt one class?). Each passes within
``tolerance`` (0.02 by default), or one prediction of the set when that is larger
(:math:`1/n`: a single changed prediction among 12 holdout rows of a class is not evidence
of bias).

Groups: the record format (:class:`pipeline.events.RecordAdded`) carries no group
attribute, so the part is per class only; :func:`disparity` takes ``groups`` for callers
that have one (a benchmark's sensitive attribute), and reports per group the same way.
A regressor (ridge) has no accuracy: the part is skipped.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.audit.reference import LinearModel
from pipeline.audit.report import Finding, PartReport

__all__ = ["DISPARITY_TOLERANCE", "disparity"]

DISPARITY_TOLERANCE = 0.02
"""Largest admitted accuracy gap (a fraction) between the published model and the retrained
reference, overall, per class and on the erased data."""


def _accuracy(model: LinearModel, X: NDArray[Any], y: NDArray[Any]) -> float:
    return float(np.mean(model.predict(X) == y)) if len(y) else float("nan")


def _allowed(tolerance: float, n: int) -> float:
    return max(tolerance, 1.0 / n) if n else tolerance


def _by(
    published: LinearModel, reference: LinearModel, X: NDArray[Any], y: NDArray[Any],
    keys: NDArray[Any], tolerance: float,
) -> tuple[dict[str, dict[str, float]], list[str]]:  # fmt: skip
    """Accuracy of both models per value of ``keys``; the values over their allowance."""
    rows: dict[str, dict[str, float]] = {}
    over = []
    for key in sorted(set(keys.tolist()), key=str):
        mask = keys == key
        pub, ref = _accuracy(published, X[mask], y[mask]), _accuracy(reference, X[mask], y[mask])
        n = int(mask.sum())
        rows[str(key)] = {"published": pub, "retrained": ref, "gap": pub - ref, "n": n}
        if abs(pub - ref) > _allowed(tolerance, n):
            over.append(str(key))
    return rows, over


def disparity(
    published: LinearModel,
    reference: LinearModel,
    X_holdout: ArrayLike,
    y_holdout: ArrayLike,
    *,
    erased: tuple[ArrayLike, ArrayLike] | None = None,
    groups: Sequence[Any] | None = None,
    tolerance: float = DISPARITY_TOLERANCE,
) -> PartReport:
    """AccErr overall and per class (and per group) on the holdout, and AccDis on the
    erased records when they are given.

    Parameters
    ----------
    published, reference : LinearModel
        The published version and the retrained reference.
    X_holdout, y_holdout : array_like
        Records neither model trained on (the model's holdout).
    erased : (X, y), optional
        The erased records' features and labels (tests and benchmarks only).
    groups : sequence, optional
        A group attribute of each holdout row.
    tolerance : float

    Returns
    -------
    PartReport
        Figures ``acc_err``, ``acc_dis``, ``worst_class_gap``, ``accuracy_published``,
        ``accuracy_retrained``, ``classes`` (per class: both accuracies, the gap, n) and
        ``groups`` when given.
    """
    if not published.classifier:
        why = "a regressor has no accuracy to compare: disparity applies to classifiers"
        return PartReport("disparity", (Finding("acc_err", None, why),))
    X, y = np.asarray(X_holdout, dtype=np.float64), np.asarray(y_holdout)
    if not len(y):
        return PartReport("disparity", (Finding("acc_err", None, "the model has no holdout"),))
    pub, ref = _accuracy(published, X, y), _accuracy(reference, X, y)
    acc_err = abs(pub - ref)
    findings = [
        Finding(
            "acc_err",
            acc_err <= _allowed(tolerance, len(y)),
            f"holdout accuracy {pub:.4f} published, {ref:.4f} retrained: AccErr {acc_err:.4f}"
            f" (allowed {_allowed(tolerance, len(y)):.3g})",
        )
    ]
    classes, over = _by(published, reference, X, y, y, tolerance)
    worst = max((abs(c["gap"]) for c in classes.values()), default=0.0)
    findings.append(
        Finding(
            "class_accuracy",
            not over,
            f"per-class holdout accuracy within {tolerance:g} (or one prediction) of the "
            f"retrain's in all {len(classes)} classes; largest gap {worst:.4f}"
            if not over
            else f"classes {over} lose more accuracy than a retrain would (gaps "
            + ", ".join(f"{k}: {classes[k]['gap']:+.3f}" for k in over)
            + ")",
        )
    )
    figures: dict[str, Any] = {
        "accuracy_published": pub,
        "accuracy_retrained": ref,
        "acc_err": acc_err,
        "worst_class_gap": worst,
        "classes": classes,
        "tolerance": tolerance,
    }
    if groups is not None:
        g = np.asarray(list(groups))
        by_group, over_g = _by(published, reference, X, y, g, tolerance)
        figures["groups"] = by_group
        findings.append(
            Finding(
                "group_accuracy",
                not over_g,
                f"per-group accuracy within {tolerance:g} of the retrain's"
                if not over_g
                else f"groups {over_g} lose more accuracy than a retrain would",
            )
        )
    if erased is None:
        findings.append(
            Finding(
                "acc_dis",
                None,
                "needs the erased records' features, which the pipeline deleted: tests and "
                "benchmarks run it",
            )
        )
    else:
        Xe, ye = np.asarray(erased[0], dtype=np.float64), np.asarray(erased[1])
        e_pub, e_ref = _accuracy(published, Xe, ye), _accuracy(reference, Xe, ye)
        acc_dis = abs(e_pub - e_ref)
        allowed = _allowed(tolerance, len(ye))
        figures |= {
            "erased_accuracy_published": e_pub,
            "erased_accuracy_retrained": e_ref,
            "acc_dis": acc_dis,
            "n_erased": int(len(ye)),
        }
        findings.append(
            Finding(
                "acc_dis",
                acc_dis <= allowed,
                f"accuracy on the {len(ye)} erased records {e_pub:.4f} published, {e_ref:.4f} "
                f"retrained: AccDis {acc_dis:.4f} (allowed {allowed:.3g})",
            )
        )
    return PartReport("disparity", tuple(findings), figures)

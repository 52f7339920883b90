r"""The membership part: do the erased records look more "member" than under a retrain?

Two attacks separate the erased records E from never-seen records U (the holdout by
default), each under the published model and under the retrained reference
(:func:`~pipeline.audit.reference.retrained_reference`: the same objective and b, fitted on
the held records), and the published model's ROC AUC must be within ``tolerance`` (0.02 by
default, the issue's target) of the reference's, on either side: erased records that look
*less* member than never-seen ones would also tell them apart.

``loss_threshold``
    Yeom, Giacomelli, Fredrikson and Jha, "Privacy Risk in Machine Learning: Analyzing the
    Connection to Overfitting" (CSF 2018): "member" when the loss is below a threshold
    :math:`\tau`; over all thresholds its AUC is the Mann-Whitney statistic

    .. math::

        \mathrm{AUC} = P\bigl(\ell(w; e) < \ell(w; u)\bigr)
                       + \tfrac12 P\bigl(\ell(w; e) = \ell(w; u)\bigr),
        \qquad e \in E,\ u \in U.

``lira``
    The per-example likelihood-ratio attack of Carlini et al. (S&P 2022) with shadow refits
    (:mod:`pipeline.audit.lira`): it calibrates each record's difficulty, so it sees what a
    global loss threshold averages away. Runs when a shadow population is given (the audit
    gives the held records).

**Limitation:** the pipeline deletes the erased records' features, so a live model cannot
be audited this way: :func:`membership` takes the arrays, and tests and benchmarks call it
(``audit(..., erased=(X, y))`` adds it to a report).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import ArrayLike

from pipeline.audit.certificate import state_float
from pipeline.audit.lira import ShadowSetup, fit_shadows, lira_scores, roc_auc, targets
from pipeline.audit.reference import LinearModel, retrained_reference
from pipeline.audit.report import Finding, PartReport
from pipeline.audit.snapshot import Snapshot, read_snapshot, records_usable
from pipeline.errors import InvalidInput
from pipeline.training import Holdout
from pipeline.unlearning.kinds import kind_of_state

if TYPE_CHECKING:
    from pipeline.store.facade import Store

__all__ = [
    "MEMBERSHIP_TOLERANCE",
    "loss_threshold_auc",
    "membership",
    "membership_from_store",
    "membership_of",
    "shadow_setup",
]

MEMBERSHIP_TOLERANCE = 0.02
"""How far the attacks' AUC on the erased records under the published model may be from
their AUC under the retrained reference: the issue's target."""

#: The parameter each kind's objective scales its penalty by (the audit's own mapping:
#: the kind registry lists parameters, not which one is the penalty).
_PENALTY = {"logistic": "lam", "ridge": "alpha"}


def loss_threshold_auc(member_losses: ArrayLike, other_losses: ArrayLike) -> float:
    r"""ROC AUC of Yeom et al.'s loss-threshold attack: "member" when the loss is low.

    :math:`P(\ell_m < \ell_o) + \tfrac12 P(\ell_m = \ell_o)` over pairs, from average ranks
    (Mann-Whitney U over :math:`n_m n_o`). 0.5 is chance; 1 separates them perfectly.
    """
    return roc_auc(-np.asarray(member_losses, dtype=np.float64), -np.asarray(other_losses))


def _verdict(check: str, name: str, pub: float, ref: float, tolerance: float) -> Finding:
    gap = pub - ref
    ok = abs(gap) <= tolerance
    return Finding(
        check,
        ok,
        f"{name} AUC on the erased records: {pub:.4f} under the published model, {ref:.4f} "
        f"under a retrained one (gap {gap:+.4f}, " + ("within" if ok else "over") + f" "
        f"{tolerance:g})",
    )


def membership(
    published: LinearModel,
    retrained: LinearModel,
    X_erased: ArrayLike,
    y_erased: ArrayLike,
    X_unseen: ArrayLike,
    y_unseen: ArrayLike,
    tolerance: float = MEMBERSHIP_TOLERANCE,
    *,
    shadows: ShadowSetup | None = None,
) -> PartReport:
    """The membership part: does the published model remember the erased records more (or
    less) than a model retrained without them?

    Parameters
    ----------
    published, retrained : LinearModel
        The model after the erasure, and the reference fitted from scratch on the records
        it holds (same objective and b: :func:`membership_from_store` builds it).
    X_erased, y_erased : array_like
        The erased records' features and labels (known only to tests and benchmarks: the
        pipeline deletes them).
    X_unseen, y_unseen : array_like
        Records neither model ever trained on (e.g. the holdout).
    tolerance : float
        Largest admitted ``|auc_published - auc_retrained|``, for each attack.
    shadows : ShadowSetup, optional
        The LiRA shadows' population and parameters (:func:`shadow_setup`); without it the
        LiRA check is skipped.

    Returns
    -------
    PartReport
        Figures ``auc_published``, ``auc_retrained``, ``gap`` (loss threshold) and
        ``lira_auc_published``, ``lira_auc_retrained``, ``lira_gap``, ``lira_targets``,
        ``lira_shadows``; one finding per attack.
    """
    Xe, ye = np.asarray(X_erased, dtype=np.float64), np.asarray(y_erased)
    Xu, yu = np.asarray(X_unseen, dtype=np.float64), np.asarray(y_unseen)
    pub = loss_threshold_auc(published.losses(Xe, ye), published.losses(Xu, yu))
    ref = loss_threshold_auc(retrained.losses(Xe, ye), retrained.losses(Xu, yu))
    findings = [_verdict("loss_threshold", "loss-threshold attack", pub, ref, tolerance)]
    figures: dict[str, Any] = {
        "auc_published": pub,
        "auc_retrained": ref,
        "gap": pub - ref,
        "tolerance": tolerance,
        "n_erased": int(ye.shape[0]),
        "n_unseen": int(yu.shape[0]),
    }
    if shadows is None:
        findings.append(
            Finding("lira", None, "no shadow population given: the LiRA attack was not run")
        )
    else:
        e_rows, u_rows = targets(shadows, len(ye), len(yu))
        Xt = np.vstack([Xe[e_rows], Xu[u_rows]])
        yt = np.concatenate([ye[e_rows], yu[u_rows]])
        fitted = fit_shadows(shadows, retrained, Xt, yt)
        aucs = []
        for model in (published, retrained):
            s = lira_scores(model, fitted, Xt, yt)
            aucs.append(roc_auc(s[: len(e_rows)], s[len(e_rows) :]))
        findings.append(_verdict("lira", "LiRA (per-example)", aucs[0], aucs[1], tolerance))
        figures |= {
            "lira_auc_published": aucs[0],
            "lira_auc_retrained": aucs[1],
            "lira_gap": aucs[0] - aucs[1],
            "lira_targets": [len(e_rows), len(u_rows)],
            "lira_shadows": fitted.n_shadows,
            "lira_population": fitted.population,
        }
    return PartReport("membership", tuple(findings), figures)


def shadow_setup(snap: Snapshot, **options: Any) -> ShadowSetup | None:
    """LiRA's shadows for this model: its held records and its checkpoint's objective;
    None when it has no checkpoint or readable records. ``options`` go to
    :class:`ShadowSetup` (``n_shadows``, ``max_targets``, ``pool``, ``seed``)."""
    usable = records_usable(snap)
    if snap.state is None or usable is None or not usable[1]:
        return None
    kind = kind_of_state(snap.state)
    penalty = _PENALTY.get(kind.name)
    if penalty is None:
        return None
    X, labels = usable
    return ShadowSetup(
        X=X,
        y=np.asarray(labels),
        kind=kind.name,
        penalty=state_float(snap.state, penalty),
        fit_intercept=bool(snap.state["fit_intercept"]),
        **options,
    )


def unseen_of(
    snap: Snapshot, unseen: tuple[ArrayLike, ArrayLike] | None
) -> tuple[ArrayLike, ArrayLike]:
    """Never-seen records: those given, else the model's holdout."""
    if unseen is not None:
        return unseen
    holdout: Holdout | None = snap.holdout
    if holdout is None or not holdout.ids:
        msg = f"model {snap.model_id!r} has no holdout: pass never-seen records as unseen=(X, y)"
        raise InvalidInput(msg)
    return holdout.X, holdout.y


def membership_of(
    snap: Snapshot,
    erased: tuple[ArrayLike, ArrayLike],
    unseen: tuple[ArrayLike, ArrayLike] | None,
    tolerance: float = MEMBERSHIP_TOLERANCE,
    *,
    reference: LinearModel | None = None,
    lira: bool = True,
) -> PartReport:
    """:func:`membership` of a snapshot's version (the reference refitted unless given)."""
    never = unseen_of(snap, unseen)
    return membership(
        LinearModel.from_version(snap.version),
        reference if reference is not None else retrained_reference(snap),
        erased[0],
        erased[1],
        never[0],
        never[1],
        tolerance,
        shadows=shadow_setup(snap) if lira else None,
    )


def membership_from_store(
    store: Store,
    model_id: str,
    X_erased: ArrayLike,
    y_erased: ArrayLike,
    X_unseen: ArrayLike | None = None,
    y_unseen: ArrayLike | None = None,
    tolerance: float = MEMBERSHIP_TOLERANCE,
) -> PartReport:
    """:func:`membership` of the model's current version, against a model refitted from
    scratch on its held records with the checkpoint's objective, LiRA's shadows drawn from
    the held records; never-seen records default to the model's holdout."""
    unseen = None if X_unseen is None or y_unseen is None else (X_unseen, y_unseen)
    return membership_of(read_snapshot(store, model_id), (X_erased, y_erased), unseen, tolerance)

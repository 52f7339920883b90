"""What one engine update did, for logs, receipts and the model registry."""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import asdict, dataclass, field
from typing import Any

__all__ = ["EMPTIED", "UpdateReport"]

#: ``UpdateReport.method`` of a removal that took a model's last records.
EMPTIED = "emptied"


@dataclass(frozen=True)
class UpdateReport:
    """The outcome of ``fit``, ``forget``, ``learn``, ``refit``, ``forget_features`` or
    ``relabel``.

    Attributes
    ----------
    method : str
        The step actually taken (receipts and metrics repeat it): ``"influence"``,
        ``"fisher"`` (a Newton step on the remaining data's gradient; a logistic model asked
        for ``"fisher"`` between ``"adaptive"`` measurements takes an influence step and says
        so), ``"exact"`` (ridge), ``"fit"`` (also a :meth:`learn` on a model that held no
        record), ``"retrain"``, or ``"emptied"`` (:data:`EMPTIED`): the update removed the
        model's last records, and the model now holds none (coefficients and intercept
        0, certificate 0). ``forget_features`` and ``relabel`` of a logistic model report
        ``"second-order"`` (a Newton step on the changed data's gradient, then corrections
        as for ``forget``) or ``"first-order"`` (a gradient step), ridge ``"exact"``
        (:mod:`pipeline.unlearning.features`, :mod:`pipeline.unlearning.labels`).
    n_removed, n_added : int
        Records taken out and put in by this update.
    certificate : float
        Gradient residual norm of the released model (or its upper bound, see
        ``certificate_kind``), summed over one-vs-rest problems.
    budget : float
        The largest certificate that keeps the (epsilon, delta) guarantee; 0 when
        certification is off.
    retrain_recommended : bool
        True when this model is over budget or the next batch like this one would be.
    seconds : float
        Wall time of the update.
    certified : bool
        ``certificate <= budget`` (False whenever certification is off), or the model
        holds no record: its coefficients are then 0 whatever the data was, so the
        removal is exact.
    certificate_kind : str
        ``"exact"`` or ``"bound"``.
    already_absent : tuple
        Ids asked to be forgotten that had already been forgotten; nothing was applied.
    curvature_recomputed : bool
        The cached curvature was rebuilt from all records during this update because the
        residual showed it had drifted.
    worst_case : float
        Guo et al.'s data-independent bound accumulated since the last full fit.
    n_records : int
        Records held after the update.
    columns : tuple of int
        Feature columns this update forgot (``forget_features``).
    already_forgotten : tuple of int
        Columns asked to be forgotten that had been already; nothing was applied for them.
    n_relabelled : int
        Records whose label this update changed (``relabel``).
    already_labelled : tuple
        Ids given to ``relabel`` with the label they already had; nothing was applied.
    """

    method: str
    n_removed: int
    n_added: int
    certificate: float
    budget: float
    retrain_recommended: bool
    seconds: float
    certified: bool = False
    certificate_kind: str = "exact"
    already_absent: tuple[Hashable, ...] = field(default_factory=tuple)
    curvature_recomputed: bool = False
    worst_case: float = 0.0
    n_records: int = 0
    columns: tuple[int, ...] = field(default_factory=tuple)
    already_forgotten: tuple[int, ...] = field(default_factory=tuple)
    n_relabelled: int = 0
    already_labelled: tuple[Hashable, ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """Plain-JSON form (ids as given)."""
        out = asdict(self)
        for name in ("already_absent", "columns", "already_forgotten", "already_labelled"):
            out[name] = list(getattr(self, name))
        return out

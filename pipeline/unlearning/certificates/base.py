"""What every certificate keeps (the residual, the certificate per problem, Guo's worst
case) and the points where the model calls it; :class:`Host` is what certificates and
steps (:mod:`pipeline.unlearning.steps`) read from, and ask of, the model."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Protocol, Self

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning.curvature import CurvatureCache
from pipeline.unlearning.records import RecordTable
from pipeline.unlearning.state import Saved, dump_fields, load_fields

__all__ = ["Certificate", "Host"]

Array = NDArray[np.float64]


class Host(Protocol):
    """The model a certificate certifies
    (:class:`~pipeline.unlearning.logistic.LogisticUnlearner`): its coefficients ``_W``
    (K, d) and perturbation ``_B``, cached curvature ``_curv`` and the weight ``_cref``
    (n_rows, K) each row entered it with, its certificate, parameters and passes over the
    records."""

    _W: Array
    _B: Array
    _cref: Array
    _curv: CurvatureCache
    _certificate: Certificate
    lam: float
    drift_tol: float
    measure_above: float
    max_corrections: int
    step_rtol: float
    tol: float
    max_iter: int
    budget_: float

    @property
    def _K(self) -> int: ...

    @property
    def _width(self) -> int: ...

    def _fitted_records(self) -> RecordTable: ...

    def _gradient(self, W: Array) -> Array: ...

    def _objective(self, W: Array) -> Array: ...

    def _gradient_and_margins(self, W: Array) -> tuple[Array, Array]: ...

    def _recompute_curvature(self, *, gram: bool = False) -> None: ...


class Certificate:
    """The residual as last measured, the certificate per problem, Guo's worst case.

    Parameters
    ----------
    n_problems, width : int
        K and d: the state of a model that holds no record (every value 0).

    Attributes
    ----------
    residual : ndarray of shape (K, d)
        :math:`\\nabla L_b(w; D)` at the last measurement.
    residual_known : bool
        ``residual`` is the residual at the current model (no step since the measurement).
    cert : ndarray of shape (K,)
        The certificate of each problem: the measured residual norm, or its bound.
    worst_case : float
        Guo et al.'s data-independent bound accumulated since the last fit.
    """

    kind: ClassVar[str]
    #: After a measurement recomputed the curvature, take one Fisher correction even under
    #: ``measure_above`` of the budget.
    corrects_after_recompute: ClassVar[bool] = False

    residual: Annotated[Array, Saved()]
    residual_known: Annotated[bool, Saved()]
    cert: Annotated[Array, Saved()]
    worst_case: Annotated[float, Saved()]

    def __init__(self, n_problems: int, width: int) -> None:
        self.residual = np.zeros((n_problems, width))
        self.residual_known = False
        self.cert = np.zeros(n_problems)
        self.worst_case = 0.0

    @property
    def total(self) -> float:
        """The model's certificate: the problems' certificates summed."""
        return float(self.cert.sum())

    # -- measurements ---------------------------------------------------------------------
    def set_residual(self, residual: Array) -> None:
        """Record an exact measurement of the residual at the current model."""
        self.residual = residual
        self.residual_known = True
        self.cert = np.linalg.norm(residual, axis=1)

    def remeasure(self, host: Host) -> None:
        """Measure the residual at the current model (two ``O(n d K)`` passes)."""
        G, Z = host._gradient_and_margins(host._W)
        self.set_residual(G)
        self.note_weight_errors(host, Z)

    def measure(self, host: Host, predicted: Array, rhs: Array) -> bool:
        """Measure the residual after a step; recompute the curvature if it strayed from
        ``predicted`` by more than ``drift_tol`` of the step's right-hand side ``rhs``.
        Returns whether the curvature was recomputed."""
        residual, Z = host._gradient_and_margins(host._W)
        self.set_residual(residual)
        error = np.linalg.norm(residual - predicted, axis=1)
        if (error > host.drift_tol * np.linalg.norm(rhs, axis=1)).any():
            host._recompute_curvature()
            return True
        self.note_weight_errors(host, Z)
        return False

    def note_weight_errors(self, host: Host, Z: Array) -> None:
        """After a measurement with margins ``Z`` (shape (n_rows, K)); the bounds' hook."""

    # -- the model's bookkeeping ----------------------------------------------------------
    def curvature_rebuilt(self, host: Host, *, gram: bool) -> None:
        """The curvature was rebuilt at the current model (``gram``: at a fit or refit)."""

    def settle(self, host: Host) -> None:
        """A fit ended, before its measurement; the bounds' hook."""

    def removed(self, host: Host, n_rows: int) -> None:
        """``n_rows`` records left the curvature; the bounds' hook."""

    def learned(self, host: Host, X: Array, weights: Array) -> None:
        """Records ``X`` (shape (m, d)) entered the curvature with ``weights`` (m, K)."""

    def features_dropped(self, host: Host, columns: NDArray[np.intp]) -> None:
        """Feature ``columns`` were zeroed in every record (``forget_features``); the
        model is measured again before its next update. The bounds' hook."""

    # -- a step ---------------------------------------------------------------------------
    def before_step(self, host: Host) -> bool:
        """Before a step: returns whether the curvature was recomputed."""
        return False

    def fisher_rhs(self, host: Host, delta: Array) -> Array | None:
        r"""The right-hand side of a Fisher step, :math:`\nabla L_b(w; D_{new}) = r - \Delta`,
        if the residual r is known at the current model; None: take an influence step."""
        return self.residual - delta if self.residual_known else None

    def after_step(
        self,
        host: Host,
        W_old: Array,
        step: Array,
        solve_residual: Array,
        rhs: Array,
        newton: bool,
        batch: Array,
        sign: float,
    ) -> bool:
        """Certify the step just taken (``host._W = W_old + step``, solved against ``rhs``
        to ``solve_residual``; ``newton``: a Fisher step, which aims at a zero residual).
        ``batch`` holds the rows that entered (``sign=+1``) or left (``-1``). Returns
        whether the curvature was recomputed."""
        raise NotImplementedError

    # -- checkpoints ----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The saved fields, as arrays and JSON scalars."""
        return dump_fields(self)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], host: Host) -> Self:
        """Restore a certificate of ``host`` (whose coefficients and records are loaded)."""
        certificate = cls(host._K, host._width)
        load_fields(certificate, state, what=f"{cls.kind!r} certificate")
        certificate.restore(host)
        return certificate

    def restore(self, host: Host) -> None:
        """Rebuild the derived fields after a load."""

"""The ``"adaptive"`` certificate (the default): the bound, measured again past a share of
the budget.

The running value is the last measurement plus the per-batch increments of
:func:`~pipeline.unlearning.certify.residual_growth` since (with the tight Taylor term),
an upper bound at every version by the triangle inequality. It is tight enough that on
MNIST 3 vs 8 a batch of 100 is measured once in five to seven.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Self

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning.certificates.base import Certificate, Host
from pipeline.unlearning.certificates.bound import BoundCertificate
from pipeline.unlearning.state import Saved

__all__ = ["AdaptiveCertificate"]

Array = NDArray[np.float64]


class AdaptiveCertificate(BoundCertificate):
    """The bound with the tight Taylor term, measured again past ``measure_above``.

    Attributes
    ----------
    stale_measures : int
        Measurements since the curvature was last rebuilt.
    """

    kind = "adaptive"
    taylor = "tight"

    stale_measures: Annotated[int, Saved()]

    def __init__(self, n_problems: int, width: int) -> None:
        super().__init__(n_problems, width)
        self.stale_measures = 0

    def curvature_rebuilt(self, host: Host, *, gram: bool) -> None:
        super().curvature_rebuilt(host, gram=gram)
        self.stale_measures = 0

    def fisher_rhs(self, host: Host, delta: Array) -> Array | None:
        """As :meth:`Certificate.fisher_rhs`: between measurements, an influence step."""
        return Certificate.fisher_rhs(self, host, delta)

    def respond(self, host: Host, increments: Array, mismatch: Array) -> bool:
        """Measure the residual once the certificate passes ``measure_above`` of the budget
        (always when certification is off). First, if the measurements that the cached
        curvature's staleness has forced since its last rebuild cost about as much as a
        rebuild (ski rental, :meth:`measures_per_recompute`), rebuild it."""
        budget = host.budget_
        if not (budget == 0 or self.total > host.measure_above * budget):
            return False
        recomputed = False
        stale = self.stale_measures >= self.measures_per_recompute(host)
        if stale and mismatch.sum() > 0.5 * increments.sum():
            host._recompute_curvature()
            recomputed = True
        self.remeasure(host)
        self.stale_measures += 1
        return recomputed

    def measures_per_recompute(self, host: Host) -> int:
        """Measurements (two ``O(n d K)`` passes) that cost about one recomputation of the
        curvature (``O(n d^2 K / 2)`` in a BLAS-3 product, several times faster per flop):
        ``d / 25``, calibrated on the 2-core benchmark machine (d = 784: 31), at least 8."""
        return max(8, host._width // 25)

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], host: Host) -> Self:
        # a checkpoint written under "bound" counts no measurements
        return super().from_state_dict({"stale_measures": 0, **state}, host)

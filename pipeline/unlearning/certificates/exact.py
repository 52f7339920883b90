"""The ``"exact"`` certificate: the residual measured after every update."""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning.certificates.base import Certificate, Host

__all__ = ["ExactCertificate"]

Array = NDArray[np.float64]


class ExactCertificate(Certificate):
    """The residual measured after every update: the certificate *is* the residual."""

    kind = "exact"
    corrects_after_recompute = True

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
        predicted = np.zeros_like(rhs) if newton else self.residual
        return self.measure(host, predicted, rhs)

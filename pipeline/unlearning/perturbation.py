r"""The objective perturbation b of Guo et al.: drawn once per fit, secret by default.

Guo, Goldstein, Hannun, van der Maaten (ICML 2020), Theorem 3, certify a removal by the
randomness of :math:`b \sim \mathcal N(0, \sigma^2 I)` in the perturbed objective
:math:`L_b(w; D) = L(w; D) + b^\top w`: whoever inspects the released model must not know
b. With ``seed=None`` (the default everywhere) b is drawn from a generator seeded with 128
bits of the operating system's entropy (:func:`secrets.randbits`), so two fits on the same
rows publish different coefficients and b cannot be recomputed from the code; the engines
keep b itself in their checkpoints (to resume, refit and learn again with the same
objective), and record the seed as ``None``. A fixed seed makes b reproducible by anyone
who knows it and voids the certified guarantee: for tests and benchmarks only.
"""

from __future__ import annotations

import numbers
import secrets
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import InvalidInput

__all__ = ["check_seed", "draw_perturbation"]


def check_seed(seed: Any) -> int | None:
    """``seed`` as an int, or None; raises :class:`InvalidInput` naming a bad value."""
    if seed is None:
        return None
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool) and int(seed) >= 0:
        return int(seed)
    msg = (
        f"seed must be None (b drawn from the operating system's entropy, the default) or "
        f"an integer >= 0, got {seed!r}; a fixed seed makes b reproducible and voids the "
        "certified guarantee: give one for tests only"
    )
    raise InvalidInput(msg)


def draw_perturbation(
    sigma: float, shape: tuple[int, ...], seed: int | None = None
) -> NDArray[np.float64]:
    r"""b of ``shape`` with i.i.d. :math:`\mathcal N(0, \sigma^2)` entries; zeros if sigma is 0.

    Parameters
    ----------
    sigma : float
        Standard deviation; 0 switches the perturbation (and certification) off.
    shape : tuple of int
        ``(n_problems, n_features)`` for the logistic models, ``(n_features,)`` for ridge.
    seed : int or None
        None: a generator seeded from the operating system (b is secret). An int: b is
        a function of it (reproducible; voids the guarantee).

    Returns
    -------
    ndarray of shape ``shape``
    """
    if sigma <= 0:
        return np.zeros(shape)
    entropy = secrets.randbits(128) if seed is None else seed
    return np.random.default_rng(entropy).normal(0.0, sigma, size=shape)

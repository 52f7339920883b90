r"""Forgetting feature columns: which columns, and the change it makes to a model's data.

Warnecke, Pirch, Wressnegger, Rieck, "Machine Unlearning of Features and Labels" (NDSS 2023;
arXiv:2108.11577) unlearn a change of the training points :math:`Z \to \tilde Z` by an update from
the gradients on both. Forgetting a set F of columns changes every record:
:math:`\tilde x_i` is :math:`x_i` with the entries in F set to 0. The model after the
change is the minimiser of the same objective over the *remaining* weights, those in F
held at 0 (the model fitted from scratch on the data without the columns):

.. math:: \min_{w:\ w_F = 0} L_b(w; \tilde D)

which, since :math:`\tilde X_{:F} = 0`, is the unconstrained minimiser of
:math:`L_{\tilde b}(w; \tilde D)` with :math:`\tilde b_F = 0`: the coordinates in F then
have gradient :math:`\lambda n w_F` and optimum exactly 0, and decouple from the rest (the
Hessian's rows and columns F are :math:`\lambda n e_j`). So :func:`drop_columns` zeroes the
columns of the held records, of w and of b, and *down-dates* the cached curvature
(:meth:`~pipeline.unlearning.curvature.CurvatureCache.drop_features`: the rows and columns
F of :math:`\tilde X^\top C \tilde X` are 0, no pass over the records); the rest of w is
then corrected on the changed data by a second-order step (Warnecke et al.'s second-order update,
:math:`w \leftarrow w - H^{-1} \nabla L(w; \tilde D)`, here on the full gradient of the
changed data, which also takes out any residual left by earlier updates) or a first-order
one (:func:`~pipeline.unlearning.steps.revise`).

The certificate is then Guo et al.'s (ICML 2020, Theorem 3) for the model on the remaining
coordinates, whose perturbation is b restricted to them: the gradient residual of the
released model on the changed data, measured. Dropping :math:`b_F` loses nothing: the
released :math:`w_F = 0` carries no information about b_F or the data. Ridge does the same
on its normal equations, exactly (:class:`~pipeline.unlearning.ridge.RidgeUnlearner`).

Later records are learned without the columns (the unlearner zeroes them as rows enter),
and a fit from the unlearner's parameters (``forgotten_features``) never uses them.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning.certificates import Host

__all__ = ["as_columns", "check_columns", "drop_columns"]

Array = NDArray[np.float64]


def _column(value: Any, n_features: int | None) -> int:
    """``value`` as a column index; raises :class:`InvalidInput` naming it."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool | np.bool_)
    if ok and int(value) >= 0 and (n_features is None or int(value) < n_features):
        return int(value)
    shown = value.tolist() if isinstance(value, np.ndarray | np.generic) else value
    where = f" below n_features_in_ ({n_features})" if n_features is not None else ""
    msg = (
        f"column {shown!r} is not a feature column of this model: give 0-based integer "
        f"indices >= 0{where} (the intercept is not a column)"
    )
    raise InvalidInput(msg)


def _values(columns: Any) -> list[Any]:
    if isinstance(columns, np.ndarray):
        return list(columns.reshape(-1)) if columns.ndim <= 1 else list(columns)
    if isinstance(columns, str | bytes) or not isinstance(columns, Iterable):
        return [columns]
    return list(columns)


def as_columns(columns: Any, n_features: int | None = None) -> tuple[int, ...]:
    """``columns`` (an iterable of indices, an int array, or one index) as a sorted tuple
    of distinct ints; raises :class:`InvalidInput` naming the first bad one (not an
    integer, negative, or ``>= n_features`` when that is given)."""
    return tuple(sorted({_column(v, n_features) for v in _values(columns)}))


def check_columns(
    columns: Any, n_features: int, forgotten: tuple[int, ...]
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The columns to forget now, and those among ``columns`` forgotten already.

    Raises :class:`InvalidInput` naming a column that is not an integer in
    ``[0, n_features)``; nothing is changed then.
    """
    asked = as_columns(columns, n_features)
    done = set(forgotten)
    return (
        tuple(c for c in asked if c not in done),
        tuple(c for c in asked if c in done),
    )


def drop_columns(host: Host, columns: NDArray[np.intp]) -> None:
    r"""Change a logistic model's data and state for forgetting ``columns`` (see above).

    Zeroes the columns of the held records (``O(n |F|)``), of W and of b, down-dates the
    cached curvature to :math:`\tilde X^\top C \tilde X + \lambda n I` (``O(K d |F|)``,
    with the preconditioner by a Schur complement, ``O(K d^2 |F|)``), and tells the
    certificate (its Gram matrix loses the same rows and columns). The model is not yet
    corrected: :func:`~pipeline.unlearning.steps.revise` does that.
    """
    rec = host._fitted_records()
    rec.zero_columns(columns)
    rec.refresh_max_norm()
    host._W[:, columns] = 0.0
    host._B[:, columns] = 0.0
    host._curv.drop_features(columns, host.lam * rec.n_records)
    host._certificate.features_dropped(host, columns)

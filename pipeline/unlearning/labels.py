r"""Correcting labels: which records change, and what the change does to each model.

Warnecke, Pirch, Wressnegger, Rieck, "Machine Unlearning of Features and Labels" (NDSS 2023;
arXiv:2108.11577) unlearn a change of the training points :math:`Z \to \tilde Z`; a label correction
changes the targets of m held records and nothing else. The model after it is the
minimiser of the same objective on the corrected data.

Logistic regression
    The curvature :math:`\sum_i \sigma(x_i^\top w)\sigma(-x_i^\top w) x_i x_i^\top +
    \lambda n I` does not depend on the labels, so the cached curvature is unchanged; the
    gradient changes by :math:`\sum_{i} (\ell'(\tilde y_i x_i^\top w) \tilde y_i -
    \ell'(y_i x_i^\top w) y_i)\, x_i`. Warnecke et al.'s second-order update is
    :math:`w \leftarrow w - H^{-1}(\nabla L(w; \tilde Z) - \nabla L(w; Z))`; the engine takes
    it on the full gradient of the corrected data, which also removes any residual left
    by earlier updates, then measures the residual and corrects as ``forget`` does
    (:func:`~pipeline.unlearning.steps.revise`). One-vs-rest: a record moved from class a
    to class c changes its sign in problems a and c.

Ridge regression
    :math:`A = \tilde X^\top \tilde X + \alpha P` is unchanged and :math:`c = \tilde X^\top y`
    changes by :math:`X_R^\top (\tilde y_R - y_R)` (``O(m d)``); one solve gives the exact
    solution (:class:`~pipeline.unlearning.ridge.RidgeUnlearner`).

:func:`plan_relabel` checks a request before anything changes.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput, UnknownRecord
from pipeline.unlearning.records import RecordTable

__all__ = ["ForgottenRecord", "Relabelling", "plan_relabel"]


class ForgottenRecord(UnknownRecord):
    """A record id the model held once and has forgotten: its label cannot be corrected."""

    def __init__(self, record_id: Hashable) -> None:
        self.record_id = record_id
        msg = (
            f"record {record_id!r} was forgotten by the model, so it has no label to correct: "
            "learn it again (with the right label) if it should be part of the model"
        )
        Exception.__init__(self, msg)


@dataclass(frozen=True)
class Relabelling:
    """A checked ``relabel`` request.

    Attributes
    ----------
    rows : ndarray of shape (m,)
        Record-table rows whose label changes.
    targets : ndarray of shape (m,)
        Their new targets, encoded as the table stores them.
    unchanged : tuple
        Ids given with the label they already have.
    """

    rows: NDArray[np.intp]
    targets: NDArray[Any]
    unchanged: tuple[Hashable, ...]


def plan_relabel(
    records: RecordTable,
    ids: Iterable[Hashable],
    labels: ArrayLike,
    encode: Callable[[NDArray[Any]], NDArray[Any]],
) -> Relabelling:
    """Check a ``relabel`` request against the held records; nothing is changed.

    Parameters
    ----------
    records : RecordTable
    ids : iterable of hashable
        One id, or several; an id may repeat with the same label.
    labels : array_like of shape (len(ids),)
    encode : callable
        The unlearner's target encoding (``_encode_learn_targets``): raises as ``learn``
        does on a label it cannot learn (an unknown class, a non-finite target).

    Raises
    ------
    InvalidInput
        ``labels`` is not one per id, or one id is given two different labels.
    UnknownRecord
        An id the model never held (named); :class:`ForgottenRecord` for one it forgot.
    """
    if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
        ids = [ids]
    id_list = list(ids)
    y = np.asarray(labels)
    if y.ndim == 0 and len(id_list) == 1:
        y = y.reshape(1)
    if y.ndim != 1 or y.shape[0] != len(id_list):
        msg = (
            f"got {len(id_list)} ids and labels of shape {y.shape}: give one label per id, "
            "in the same order"
        )
        raise InvalidInput(msg)
    targets = encode(y)
    wanted: dict[Hashable, Any] = {}
    for record_id, target in zip(id_list, targets.tolist(), strict=True):
        if record_id in wanted and wanted[record_id] != target:
            msg = f"record {record_id!r} is given two different labels; give it one"
            raise InvalidInput(msg)
        wanted[record_id] = target
    rows, found, absent = records.locate(wanted)  # UnknownRecord for an id never held
    if absent:
        raise ForgottenRecord(absent[0])
    new = np.array([wanted[i] for i in found], dtype=records.targets.dtype)
    changed = records.targets[rows] != new
    unchanged = tuple(found[i] for i in np.flatnonzero(~changed).tolist())
    return Relabelling(rows[changed], new[changed], unchanged)

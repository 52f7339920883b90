"""The records an unlearner holds: a growable feature buffer indexed by record id.

Rows are appended as records are learned. Forgetting a record zeroes its row at once (its
features leave the process's memory, not just the index) and gives it weight 0, so the
maths can keep running over the whole buffer without copying it; the buffer is compacted
when erased rows make up half of it. Ids of forgotten records are remembered (the ids only)
so that forgetting the same record twice is reported instead of raising.

A checkpoint holds the table's ids (:func:`encode_ids`), forgotten ids and counters
(:meth:`RecordTable.state_dict`); the features stay in the pipeline's record store unless
asked for.
"""

from __future__ import annotations

import json
from collections.abc import Hashable, Iterable, Mapping, Sequence
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import DuplicateRecord, InvalidInput, UnknownRecord

__all__ = ["RecordTable", "decode_ids", "encode_ids"]

Array = NDArray[np.float64]


def _id_from_json(value: Any) -> Hashable:
    """JSON turns tuple ids into lists; turn them back so they stay hashable."""
    return tuple(value) if isinstance(value, list) else value


_LINES = "lines:"


def encode_ids(ids: Sequence[Hashable]) -> str:
    """Record ids as text for a checkpoint: newline-joined when they are all strings
    without newlines (the pipeline's case, ten times cheaper than JSON at 50k ids),
    JSON otherwise."""
    try:
        text = "\n".join(ids)  # type: ignore[arg-type]  # TypeError: not all strings
    except TypeError:
        return json.dumps(list(ids))
    if text.count("\n") != max(len(ids) - 1, 0) or (len(ids) == 1 and not ids[0]):
        return json.dumps(list(ids))  # an id holds a newline, or is the empty string
    return _LINES + text


def decode_ids(text: str) -> list[Hashable]:
    """Inverse of :func:`encode_ids` (either form)."""
    if text.startswith(_LINES):
        body = text[len(_LINES) :]
        return list[Hashable](body.split("\n")) if body else []
    return [_id_from_json(i) for i in json.loads(text)]


class RecordTable:
    """Features, label indices and ids of the records a model currently holds.

    Parameters
    ----------
    n_features : int
        Width of a row, including any intercept column.
    capacity : int
        Rows to reserve up front.
    """

    def __init__(
        self, n_features: int, capacity: int = 1024, target_dtype: type = np.int64
    ) -> None:
        capacity = max(int(capacity), 16)
        self._X = np.zeros((capacity, n_features))
        self._targets: NDArray[Any] = np.zeros(capacity, dtype=target_dtype)
        self._present = np.zeros(capacity, dtype=bool)
        self._row_of: dict[Hashable, int] = {}
        self._id_at: list[Hashable | None] = []
        # insertion-ordered (a dict as an ordered set): checkpoints write it as it is,
        # where sorting it cost more than the rest of a checkpoint after ~10k deletions
        self.forgotten: dict[Hashable, None] = {}
        self._size = 0
        self.n_appended = 0
        self.max_norm = 0.0

    # -- views ----------------------------------------------------------------------------
    @property
    def n_rows(self) -> int:
        """Rows in use in the buffer, erased ones included."""
        return self._size

    @property
    def n_records(self) -> int:
        """Records currently held."""
        return len(self._row_of)

    @property
    def X(self) -> Array:
        """Feature rows in use, shape (n_rows, n_features); erased rows are all zero."""
        return self._X[: self._size]

    @property
    def targets(self) -> NDArray[Any]:
        """Target of every row in use (a class index, or a real value for regression)."""
        return self._targets[: self._size]

    @property
    def weights(self) -> Array:
        """1.0 for a held record, 0.0 for an erased row."""
        return self._present[: self._size].astype(np.float64)

    def ids(self) -> list[Hashable]:
        """Ids of the held records, in row order."""
        return [i for i in self._id_at if i is not None]

    def __contains__(self, record_id: Hashable) -> bool:
        return record_id in self._row_of

    # -- changes --------------------------------------------------------------------------
    def append(self, X: Array, targets: NDArray[Any], ids: Sequence[Hashable]) -> NDArray[np.intp]:
        """Add records; returns their rows. Raises :class:`DuplicateRecord` on a held id."""
        seen: set[Hashable] = set()
        for record_id in ids:
            if record_id in self._row_of or record_id in seen:
                raise DuplicateRecord(record_id)
            seen.add(record_id)
        m = X.shape[0]
        self._reserve(self._size + m)
        rows = np.arange(self._size, self._size + m)
        self._X[rows] = X
        self._targets[rows] = targets
        self._present[rows] = True
        for row, record_id in zip(rows.tolist(), ids, strict=True):
            self._row_of[record_id] = row
            self._id_at.append(record_id)
            self.forgotten.pop(record_id, None)
        self._size += m
        self.n_appended += m
        if m:
            self.max_norm = max(self.max_norm, float(np.sqrt((X * X).sum(axis=1)).max()))
        return rows

    def locate(
        self, ids: Iterable[Hashable]
    ) -> tuple[NDArray[np.intp], list[Hashable], list[Hashable]]:
        """Rows of the held ids among ``ids``, those ids, and the already-forgotten ones.

        Duplicates within ``ids`` count once. Raises :class:`UnknownRecord` for an id the
        table never held.
        """
        unique = list(dict.fromkeys(ids))
        # the common case, every id held, in C-level loops: after a batch's matrix products
        # the index is out of cache, and each Python-level step per id costs a miss
        held = list(map(self._row_of.get, unique))
        if None not in held:
            return np.asarray(held, dtype=np.intp), unique, []
        rows: list[int] = []
        found: list[Hashable] = []
        absent: list[Hashable] = []
        for record_id, row in zip(unique, held, strict=True):
            if row is not None:
                rows.append(row)
                found.append(record_id)
            elif record_id in self.forgotten:
                absent.append(record_id)
            else:
                raise UnknownRecord(record_id)
        return np.asarray(rows, dtype=np.intp), found, absent

    def erase(self, rows: NDArray[np.intp]) -> None:
        """Forget the records at ``rows``: zero their features and drop their ids."""
        for row in rows.tolist():
            record_id = self._id_at[row]
            del self._row_of[record_id]
            self._id_at[row] = None
            self.forgotten[record_id] = None
        self._X[rows] = 0.0
        self._present[rows] = False

    def zero_columns(self, columns: NDArray[np.intp]) -> None:
        """Set ``columns`` of every row to 0 (a forgotten feature leaves the buffer)."""
        self._X[: self._size, columns] = 0.0

    def relabel(self, rows: NDArray[np.intp], targets: NDArray[Any]) -> None:
        """Give the held records at ``rows`` new ``targets``."""
        self._targets[rows] = targets

    def compact(self) -> NDArray[np.intp] | None:
        """Drop erased rows when they are half the buffer; returns the kept rows' old indices."""
        if self._size == 0 or self.n_records * 2 > self._size:
            return None
        keep = np.flatnonzero(self._present[: self._size])
        m = keep.size
        self._X[:m] = self._X[keep]
        self._X[m : self._size] = 0.0
        self._targets[:m] = self._targets[keep]
        self._present[:m] = True
        self._present[m : self._size] = False
        self._id_at = [self._id_at[i] for i in keep.tolist()]
        self._row_of = {record_id: row for row, record_id in enumerate(self._id_at)}
        self._size = m
        return keep

    # -- checkpoints ----------------------------------------------------------------------
    #: The checkpoint keys of a table; ``X`` and ``targets`` (the held rows) are optional.
    STATE_KEYS = ("record_ids_json", "forgotten_ids_json", "n_appended", "max_norm")

    def state_dict(self, n_features: int, include_records: bool) -> dict[str, Any]:
        """The held ids, the forgotten ids and the counters; with ``include_records``, the
        held rows' first ``n_features`` columns (``X``) and their targets too."""
        state: dict[str, Any] = {
            "record_ids_json": encode_ids(self.ids()),
            "forgotten_ids_json": encode_ids(list(self.forgotten)),
            "n_appended": self.n_appended,
            "max_norm": self.max_norm,
        }
        if include_records:
            keep = np.flatnonzero(self._present[: self._size])
            state["X"] = self.X[keep, :n_features].copy()
            state["targets"] = self.targets[keep].copy()
        return state

    @classmethod
    def saved_ids(cls, state: Mapping[str, Any], *, what: str) -> list[Hashable]:
        """The held ids of a checkpoint, in row order; raises :class:`InvalidInput` naming a
        key of the table the checkpoint lacks (``what`` says whose checkpoint it is)."""
        missing = [key for key in cls.STATE_KEYS if key not in state]
        if missing:
            msg = (
                f"{what} checkpoint has no {missing[0]!r}: it was not written by this version "
                "of the engine; fit the model again from its records"
            )
            raise InvalidInput(msg)
        return decode_ids(state["record_ids_json"])

    @classmethod
    def from_state_dict(
        cls, state: Mapping[str, Any], X: Array, targets: NDArray[Any], ids: Sequence[Hashable]
    ) -> RecordTable:
        """The table of a checkpoint, holding rows ``X`` (as the model holds them, intercept
        column included) with ``targets``, in the order of ``ids``."""
        table = cls(X.shape[1], len(ids), targets.dtype.type)
        table.append(X, targets, ids)
        table.forgotten = dict.fromkeys(decode_ids(state["forgotten_ids_json"]))
        table.n_appended = int(state["n_appended"])
        table.max_norm = float(state["max_norm"])
        return table

    def refresh_max_norm(self) -> float:
        """Recompute the largest row norm from the held records (it only grows otherwise)."""
        X = self.X
        self.max_norm = float(np.sqrt((X * X).sum(axis=1)).max()) if X.shape[0] else 0.0
        return self.max_norm

    def _reserve(self, size: int) -> None:
        capacity = self._X.shape[0]
        if size <= capacity:
            return
        new = max(size, 2 * capacity)
        X = np.zeros((new, self._X.shape[1]))
        X[: self._size] = self._X[: self._size]
        targets = np.zeros(new, dtype=self._targets.dtype)
        targets[: self._size] = self._targets[: self._size]
        present = np.zeros(new, dtype=bool)
        present[: self._size] = self._present[: self._size]
        self._X, self._targets, self._present = X, targets, present

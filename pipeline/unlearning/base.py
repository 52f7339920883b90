"""What every unlearner shares: input checks, record ids, labels and the verb family.

Subclasses implement the maths in ``_fit``, ``_remove``, ``_add``, ``_refit``,
``_forget_columns`` and ``_relabel``; this base turns user input into checked float64 arrays
and record rows, times each update and keeps the record table
(:class:`~pipeline.unlearning.records.RecordTable`) in step. Every row enters the table
without the model's forgotten feature columns (``forgotten_features``, a constructor
parameter: :mod:`pipeline.unlearning.features`).
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Hashable, Iterable, Mapping, Sequence
from dataclasses import replace
from typing import Annotated, Any, ClassVar, Self

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput, NotFitted, UnknownClass, UnknownRecord
from pipeline.unlearning.features import as_columns, check_columns
from pipeline.unlearning.labels import plan_relabel
from pipeline.unlearning.records import RecordTable, decode_ids, encode_ids
from pipeline.unlearning.report import UpdateReport
from pipeline.unlearning.state import Part, Saved, Transient, dump_fields, load_fields

# decode_ids and encode_ids live with the record table; importers from here keep working
__all__ = ["BaseUnlearner", "Progress", "check_features", "decode_ids", "encode_ids"]

Array = NDArray[np.float64]

#: ``progress(fraction_done, message)``, called by long fits.
Progress = Callable[[float, str], None]


def check_features(X: ArrayLike, n_features: int | None = None, what: str = "X") -> Array:
    """A 2-D, finite float64 copy-free view of ``X``; raises :class:`InvalidInput`."""
    arr = np.asarray(X, dtype=np.float64)
    if arr.ndim != 2:
        msg = f"{what} must be 2-D (n_samples, n_features), got shape {arr.shape}"
        raise InvalidInput(msg)
    if n_features is not None and arr.shape[1] != n_features:
        msg = f"{what} has {arr.shape[1]} features, the model expects {n_features}"
        raise InvalidInput(msg)
    if not np.isfinite(arr).all():
        bad = int(np.flatnonzero(~np.isfinite(arr).all(axis=1))[0])
        msg = f"{what} row {bad} contains NaN or infinity; clean or drop it before learning"
        raise InvalidInput(msg)
    return arr


class BaseUnlearner(ABC):
    """Record-keeping and the public verbs; the maths is the subclass's."""

    fit_intercept: bool
    forgotten_features: tuple[int, ...]
    _records: Annotated[RecordTable | None, Part()] = None  # saved by _records_state

    #: Parameters added after checkpoints were first written, with the value a checkpoint
    #: written before them resumes with.
    ADDED_PARAMS: ClassVar[Mapping[str, Any]] = {"forgotten_features": ()}

    # -- the verb family ------------------------------------------------------------------
    def fit(self, X: ArrayLike, y: ArrayLike, ids: Sequence[Hashable] | None = None) -> Any:
        """Fit on all records from scratch; ``ids`` default to ``0..n-1``. Returns self."""
        Xa = check_features(X)
        y_arr = self._check_targets(y, Xa.shape[0])
        ids = self._check_ids(ids, Xa.shape[0], start=0)
        as_columns(self.forgotten_features, Xa.shape[1])  # raises naming a column out of range
        self.n_features_in_ = Xa.shape[1]
        targets = self._encode_fit_targets(y_arr)
        records = RecordTable(self._width, Xa.shape[0], targets.dtype.type)
        records.append(self._rows(Xa), targets, ids)
        self._records = records
        start = time.perf_counter()
        self._fit()
        self.fit_seconds_ = time.perf_counter() - start
        return self

    def forget(self, ids: Iterable[Hashable], method: str | None = None) -> UpdateReport:
        """Remove the records with these ids; a forgotten id is reported, never applied twice.

        Raises :class:`~pipeline.errors.UnknownRecord` (naming the id) for an id the model
        never held; nothing is changed then.
        """
        records = self._fitted_records()
        if isinstance(ids, str | bytes) or not isinstance(ids, Iterable):
            ids = [ids]
        start = time.perf_counter()
        rows, _found, absent = records.locate(ids)
        report = self._remove(rows, self._resolve_method(method), tuple(absent))
        return self._timed(report, start)

    def learn(
        self, X: ArrayLike, y: ArrayLike, ids: Sequence[Hashable] | None = None
    ) -> UpdateReport:
        """Add new records (ids default to fresh integers); raises on an id already held."""
        records = self._fitted_records()
        Xa = check_features(X, self.n_features_in_)
        y_arr = self._check_targets(y, Xa.shape[0])
        ids = self._check_ids(ids, Xa.shape[0], start=records.n_appended)
        targets = self._encode_learn_targets(y_arr)
        start = time.perf_counter()
        rows = records.append(self._rows(Xa), targets, ids)
        return self._timed(self._add(rows), start)

    def forget_features(self, columns: Iterable[int], method: str | None = None) -> UpdateReport:
        """Stop using feature ``columns`` (0-based, the intercept is not one), now and for
        every record learned later.

        The model becomes, to its certificate (ridge: exactly), the one fitted from scratch
        on the data without those columns with the same objective: the same penalty on the
        remaining weights, the forgotten weights exactly 0 (:mod:`pipeline.unlearning.
        features`). A column forgotten already is reported (``already_forgotten``) and not
        applied again. ``method``: ``"second-order"`` (default), ``"first-order"`` or
        ``"retrain"`` for a logistic model; ridge is exact whatever is asked, or
        ``"retrain"``.

        Raises
        ------
        InvalidInput
            A column that is not an integer in ``[0, n_features_in_)`` (named), or an
            unknown method; nothing is changed then.
        """
        self._fitted_records()
        new, already = check_columns(columns, self.n_features_in_, self.forgotten_features)
        method = self._resolve_revision(method)
        start = time.perf_counter()
        if new:
            self.forgotten_features = tuple(sorted({*self.forgotten_features, *new}))
        report = self._forget_columns(np.asarray(new, dtype=np.intp), method)
        report = replace(report, columns=new, already_forgotten=already)
        return self._timed(report, start)

    def relabel(
        self, ids: Sequence[Hashable], labels: ArrayLike, method: str | None = None
    ) -> UpdateReport:
        """Correct the labels of held records: the model becomes, to its certificate
        (ridge: exactly), the one fitted on the data with those labels
        (:mod:`pipeline.unlearning.labels`). An id given with the label it already has is
        reported (``already_labelled``) and not applied. ``method`` as for
        :meth:`forget_features`.

        Raises
        ------
        UnknownRecord
            An id the model does not hold (never held, or forgotten), named.
        UnknownClass, InvalidInput
            A label ``learn`` would refuse, a label count that is not one per id, one id
            given two labels, an unknown method. Nothing is changed then.
        """
        records = self._fitted_records()
        method = self._resolve_revision(method)
        plan = plan_relabel(records, ids, labels, self._encode_learn_targets)
        start = time.perf_counter()
        report = self._relabel(plan.rows, plan.targets, method)
        report = replace(report, n_relabelled=int(plan.rows.size), already_labelled=plan.unchanged)
        return self._timed(report, start)

    @property
    def forgotten_features_(self) -> tuple[int, ...]:
        """The forgotten feature columns, sorted."""
        return tuple(self.forgotten_features)

    def refit(self, progress: Progress | None = None, *, warm_start: bool = True) -> UpdateReport:
        """Fit again on the records held now, same objective and b; method ``"retrain"``.

        ``progress(fraction, message)`` is called as the fit advances. ``warm_start=False``
        starts from w = 0, as :meth:`fit` does: the model retrained from scratch on the
        remaining records with the same b, which a removal is compared with.
        """
        self._fitted_records()
        start = time.perf_counter()
        return self._timed(self._refit(progress, warm_start), start)

    # -- shared helpers -------------------------------------------------------------------
    @property
    def n_records_(self) -> int:
        """Records the model holds now."""
        return self._fitted_records().n_records

    @property
    def record_ids_(self) -> list[Hashable]:
        """Ids of the records the model holds now."""
        return self._fitted_records().ids()

    def held_records(self, ids: Sequence[Hashable]) -> tuple[Array, NDArray[Any]]:
        """Features (as learned) and labels of held records, in the order of ``ids``.

        Copies, shape ``(len(ids), n_features_in_)``. Raises
        :class:`~pipeline.errors.UnknownRecord` for an id the model does not hold.
        """
        records = self._fitted_records()
        rows, _found, absent = records.locate(ids)
        if absent:
            raise UnknownRecord(absent[0])
        X = records.X[rows, : self.n_features_in_]
        return X, self._decode_targets(records.targets[rows])

    @property
    def _width(self) -> int:
        return self.n_features_in_ + int(self.fit_intercept)

    def _augment(self, X: Array) -> Array:
        if not self.fit_intercept:
            return X
        return np.hstack([X, np.ones((X.shape[0], 1))])

    def _rows(self, X: Array) -> Array:
        """Rows as the record table holds them: with the intercept column, without the
        forgotten features (a copy when any is zeroed; ``X`` is never changed)."""
        rows = self._augment(X)
        if self.forgotten_features:
            rows = rows.copy() if rows is X else rows
            rows[:, list(self.forgotten_features)] = 0.0
        return rows

    def _fitted_records(self) -> RecordTable:
        if self._records is None:
            raise NotFitted(type(self).__name__)
        return self._records

    def _report(
        self,
        method: str,
        *,
        n_removed: int = 0,
        n_added: int = 0,
        growth: float = 0.0,
        absent: tuple[Hashable, ...] = (),
        recomputed: bool = False,
    ) -> UpdateReport:
        """The report of an update that left the model as it is now.

        ``growth`` is how much this update grew the certificate: retraining is recommended
        when the model is over budget or the next update like this one would be.
        """
        cert = self.certificate_
        on = self.budget_ > 0
        n_records = self._fitted_records().n_records
        return UpdateReport(
            method=method,
            n_removed=n_removed,
            n_added=n_added,
            certificate=cert,
            budget=self.budget_,
            retrain_recommended=bool(on and cert + max(float(growth), 0.0) > self.budget_),
            seconds=0.0,
            certified=bool(n_records == 0 or (on and cert <= self.budget_)),
            certificate_kind=self.certificate_kind,
            already_absent=absent,
            curvature_recomputed=recomputed,
            worst_case=self.worst_case_,
            n_records=n_records,
        )

    @staticmethod
    def _timed(report: UpdateReport, start: float) -> UpdateReport:
        return replace(report, seconds=time.perf_counter() - start)

    @staticmethod
    def _check_targets(y: ArrayLike, n: int) -> NDArray[Any]:
        arr = np.asarray(y)
        if arr.ndim != 1 or arr.shape[0] != n:
            msg = f"y must be 1-D with one label per row of X ({n}), got shape {arr.shape}"
            raise InvalidInput(msg)
        return arr

    @staticmethod
    def _check_ids(ids: Sequence[Hashable] | None, n: int, start: int) -> list[Hashable]:
        if ids is None:
            return list(range(start, start + n))
        out = list(ids)
        if len(out) != n:
            msg = f"got {len(out)} ids for {n} records: give exactly one id per row"
            raise InvalidInput(msg)
        return out

    def _label_indices(self, y: NDArray[Any]) -> NDArray[np.int64]:
        classes = self.classes_
        idx = np.searchsorted(classes, y)
        idx = np.clip(idx, 0, len(classes) - 1)
        bad = classes[idx] != y
        if bad.any():
            raise UnknownClass(y[np.flatnonzero(bad)[0]].item(), classes.tolist())
        return idx.astype(np.int64)

    # -- parameters and checkpoints -------------------------------------------------------
    @classmethod
    def param_names(cls) -> tuple[str, ...]:
        """The constructor's parameters, in the order it declares them.

        Read from ``cls.__init__``'s signature, never from a list kept by hand, so that a
        checkpoint carries every parameter a constructor takes. Each is kept on the model
        as an attribute of the same name.
        """
        params = inspect.signature(cls.__init__).parameters.values()
        skip = (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        return tuple(p.name for p in params if p.name != "self" and p.kind not in skip)

    def get_params(self) -> dict[str, Any]:
        """Every constructor parameter and its value: ``type(self)(**get_params())`` builds
        an unfitted model configured as this one."""
        return {name: getattr(self, name) for name in self.param_names()}

    def state_dict(self, include_records: bool = False) -> dict[str, Any]:
        """Everything needed to resume, as arrays and JSON scalars (never pickle).

        Every constructor parameter (:meth:`get_params`), the model's ``kind``, the record
        table (ids, forgotten ids, counters; features and labels only with
        ``include_records``: the pipeline keeps them in its record store and hands them back
        to :meth:`from_state_dict`), every attribute declared
        :class:`~pipeline.unlearning.state.Saved`, and the fields of every part (the
        logistic model's certificate).
        """
        params = self.get_params()
        # stored as an int64 array: a checkpoint holds arrays and JSON scalars
        params["forgotten_features"] = np.asarray(self.forgotten_features, dtype=np.int64)
        state: dict[str, Any] = {**params, "kind": self.kind}
        state |= self._records_state(include_records)
        state |= dump_fields(self)
        state |= self._parts_state()
        return state

    @classmethod
    def from_state_dict(
        cls,
        state: Mapping[str, Any],
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        ids: Sequence[Hashable] | None = None,
    ) -> Self:
        """Rebuild a model saved by :meth:`state_dict`.

        Give the held records as ``X, y, ids`` (any order) unless the state includes them.

        Raises
        ------
        InvalidInput
            The checkpoint is of another kind, lacks a parameter or a saved field (named),
            or the records given do not match its ids.
        """
        if state.get("kind") != cls.kind:
            msg = (
                f"not a {cls.kind} checkpoint (kind={state.get('kind')!r}): resume it with the "
                "engine class of its kind"
            )
            raise InvalidInput(msg)
        model = cls._from_params(state)
        load_fields(model, state, what=f"{cls.kind!r}")
        model._restore_records(state, X, y, ids)
        model._restore_parts(state)
        return model

    @classmethod
    def _from_params(cls, state: Mapping[str, Any]) -> Self:
        """An unfitted model with the parameters saved in ``state``; raises
        :class:`InvalidInput` naming any parameter the checkpoint lacks."""
        state = {**cls.ADDED_PARAMS, **state}
        missing = [name for name in cls.param_names() if name not in state]
        if missing:
            msg = (
                f"{cls.kind!r} checkpoint lacks the parameter(s) {missing}: it was not written "
                "by this version of the engine; fit the model again from its records"
            )
            raise InvalidInput(msg)
        return cls(**{name: state[name] for name in cls.param_names()})

    def _parts_state(self) -> dict[str, Any]:
        """The fields of the model's parts (declared :class:`Part`), for :meth:`state_dict`."""
        return {}

    def _restore_parts(self, state: Mapping[str, Any]) -> None:  # noqa: B027 (optional hook)
        """Rebuild the parts from a checkpoint, once parameters, fields and records are."""

    def _records_state(self, include_records: bool) -> dict[str, Any]:
        return self._fitted_records().state_dict(self.n_features_in_, include_records)

    def _restore_records(
        self,
        state: Mapping[str, Any],
        X: ArrayLike | None,
        y: ArrayLike | None,
        ids: Sequence[Hashable] | None,
    ) -> None:
        """Rebuild the record table from a checkpoint (and the records, if given apart)."""
        saved = RecordTable.saved_ids(state, what=repr(self.kind))
        if X is None:
            if "X" not in state or "targets" not in state:
                msg = (
                    "the checkpoint holds no records (state_dict(include_records=False)): give "
                    "X, y and ids to from_state_dict"
                )
                raise InvalidInput(msg)
            Xs = check_features(state["X"], self.n_features_in_)
            targets = np.asarray(state["targets"])
        else:
            if y is None or ids is None:
                msg = "give X, y and ids together to resume from a checkpoint without records"
                raise InvalidInput(msg)
            pos = {record_id: i for i, record_id in enumerate(ids)}
            absent = [i for i in saved if i not in pos]
            if absent or len(pos) != len(saved):
                msg = (
                    f"the records given do not match the checkpoint: {len(absent)} of its "
                    f"{len(saved)} ids missing (first: {absent[:1]!r}), {len(pos)} given"
                )
                raise InvalidInput(msg)
            order = np.fromiter((pos[i] for i in saved), dtype=np.intp, count=len(saved))
            Xs = check_features(X, self.n_features_in_)[order]
            targets = self._encode_learn_targets(np.asarray(y)[order])
        self._records = RecordTable.from_state_dict(state, self._rows(Xs), targets, saved)

    # -- what subclasses provide ----------------------------------------------------------
    #: The model kind a checkpoint names (``state["kind"]``).
    kind: ClassVar[str]
    classes_: NDArray[Any]
    n_features_in_: Annotated[int, Saved()]
    fit_seconds_: Annotated[float, Transient("how long fit took, in the process that ran it")]
    budget_: Annotated[float, Transient("from sigma, epsilon and delta, by the constructor")]

    @property
    @abstractmethod
    def certificate_(self) -> float:
        """The released model's gradient residual norm, or its upper bound."""

    @property
    @abstractmethod
    def certificate_kind(self) -> str:
        """How ``certificate_`` is known (``UpdateReport.certificate_kind``)."""

    @property
    def worst_case_(self) -> float:
        """Guo et al.'s data-independent bound accumulated since the last fit (0: none)."""
        return 0.0

    @abstractmethod
    def _encode_fit_targets(self, y: NDArray[Any]) -> NDArray[Any]: ...

    @abstractmethod
    def _encode_learn_targets(self, y: NDArray[Any]) -> NDArray[Any]: ...

    @abstractmethod
    def _decode_targets(self, targets: NDArray[Any]) -> NDArray[Any]:
        """Labels as given to ``fit``/``learn``, from stored targets."""

    @abstractmethod
    def _resolve_method(self, method: str | None) -> str: ...

    @abstractmethod
    def _fit(self) -> None: ...

    @abstractmethod
    def _remove(
        self, rows: NDArray[np.intp], method: str, absent: tuple[Hashable, ...]
    ) -> UpdateReport: ...

    @abstractmethod
    def _add(self, rows: NDArray[np.intp]) -> UpdateReport: ...

    @abstractmethod
    def _refit(self, progress: Progress | None, warm_start: bool) -> UpdateReport: ...

    @abstractmethod
    def _resolve_revision(self, method: str | None) -> str:
        """The method of a :meth:`forget_features` or :meth:`relabel`; raises
        :class:`InvalidInput` naming an unknown one."""

    @abstractmethod
    def _forget_columns(self, columns: NDArray[np.intp], method: str) -> UpdateReport:
        """Forget ``columns`` (not forgotten before; ``forgotten_features`` already holds
        them) from the held records and the model."""

    @abstractmethod
    def _relabel(self, rows: NDArray[np.intp], targets: NDArray[Any], method: str) -> UpdateReport:
        """Give the held records at ``rows`` the new encoded ``targets`` (all different
        from their current ones) and correct the model."""

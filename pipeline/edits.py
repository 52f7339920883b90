"""A batch's feature removals and relabels: the engine calls, and what else they change.

The writer (:class:`~pipeline.applier.Applier`) plans a batch (:func:`pipeline.plan.
plan_batch`), forgets its deleted records, then calls :func:`edit`, which

1. relabels the held records the plan corrects (``engine.relabel``), keeping their old
   labels while a retrain is in flight (the merge rebuilds the snapshot from them,
   :mod:`pipeline.merge`);
2. forgets the plan's new feature columns (``engine.forget_features``), keeping the
   values every held record had in them while a retrain is in flight;
3. says what the publication must write besides the version (:class:`Edits`): every held
   record's features with all forgotten columns at 0, the corrected labels, and the new
   records of the batch zeroed the same way (in the plan, before the writer learns and
   stores them), so that Redis never holds a forgotten column's value or an old label.

:func:`corrected_records` builds the ``RecordAdded`` each changed record is sent back as,
on ``unlearn.records`` under its key (the relabelled records; after a feature removal,
every held record): compaction then drops the message with the old label or the forgotten
columns' values. :func:`receipt_fields` gives each request's receipt: ``rejected`` with the plan's
reason, else ``applied`` or ``already_absent``, with the columns or records it changed and
the engine's method for it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

import numpy as np

from pipeline.events import ReceiptStatus, RecordAdded
from pipeline.plan import Plan
from pipeline.training import Engine
from pipeline.unlearning import UpdateReport

__all__ = ["Edits", "corrected_record", "corrected_records", "edit", "receipt_fields"]


@dataclass
class Edits:
    """What a batch's relabels and feature removals change besides the engine.

    Attributes
    ----------
    features : dict of str to ndarray
        Held records' features with the forgotten columns zeroed, to store.
    labels : dict of str to label
        Held records' corrected labels, to store.
    republish : dict of str to (ndarray, label)
        The records to send back corrected (features as stored, label): the relabelled
        ones, and after a feature removal every held one.
    methods : dict of str to str
        The engine's method for each operation (``relabel``, ``feature_removal``).
    kept_columns, kept_labels
        While a retrain is in flight: the forgotten columns' values and the labels
        before the correction, for the merge (:meth:`~pipeline.held.HeldModel.keep_columns`).
    events : list of RecordAdded
        The corrected records to send (:func:`corrected_records`), once published.
    """

    features: dict[str, np.ndarray] = field(default_factory=dict)
    labels: dict[str, Any] = field(default_factory=dict)
    republish: dict[str, tuple[np.ndarray, Any]] = field(default_factory=dict)
    methods: dict[str, str] = field(default_factory=dict)
    kept_columns: tuple[tuple[int, ...], dict[str, np.ndarray]] | None = None
    kept_labels: dict[str, Any] = field(default_factory=dict)
    events: list[RecordAdded] = field(default_factory=list)


def edit(
    engine: Engine,
    held: Mapping[str, str],
    plan: Plan,
    reports: list[UpdateReport],
    *,
    in_flight: bool,
) -> Edits:
    """Relabel, then forget the plan's columns, on ``engine`` (after the batch's
    ``forget``, before its ``learn``); see the module docstring.

    Parameters
    ----------
    engine : Engine
    held : mapping of str to str
        Record id to subject id of the records the model held before the batch.
    plan : Plan
        Its ``added`` records are zeroed in the forgotten columns, in place.
    reports : list of UpdateReport
        The engine's reports are appended.
    in_flight : bool
        A retrain is in flight: keep what the merge needs.
    """
    edits = Edits()
    if plan.relabels:
        ids = list(plan.relabels)
        X, old = engine.held_records(ids)
        if in_flight:
            edits.kept_labels = dict(zip(ids, old.tolist(), strict=True))
        report = engine.relabel(ids, list(plan.relabels.values()))
        reports.append(report)
        edits.methods["relabel"] = report.method
        edits.labels = dict(plan.relabels)
        edits.features.update(zip(ids, X, strict=True))
    if plan.columns:
        columns = tuple(plan.columns)
        kept = [rid for rid in held if rid not in plan.removed]
        X, labels = engine.held_records(kept) if kept else (np.empty((0, 0)), np.empty(0))
        if in_flight and kept:
            edits.kept_columns = (
                columns,
                {rid: X[i, list(columns)].copy() for i, rid in enumerate(kept)},
            )
        report = engine.forget_features(list(columns))
        reports.append(report)
        edits.methods["feature_removal"] = report.method
        edits.features.update(zip(kept, X, strict=True))
        current = dict(zip(kept, labels.tolist(), strict=True))
    forgotten = [int(c) for c in getattr(engine, "forgotten_features_", ())]
    carried: list[str] = []  # new records that carry a forgotten column's value
    if forgotten:  # stored without the forgotten columns' values, held or learned
        for rid, x in edits.features.items():
            zeroed = np.array(x, dtype=np.float64)
            zeroed[forgotten] = 0.0
            edits.features[rid] = zeroed
        for rid, rec in plan.added.items():
            if np.any(rec.features[forgotten]):
                zeroed = np.array(rec.features, dtype=np.float64)
                zeroed[forgotten] = 0.0
                plan.added[rid] = replace(rec, features=zeroed)
                carried.append(rid)
    if plan.columns:  # every held record goes back on the records topic, zeroed
        edits.republish = {rid: (x, current[rid]) for rid, x in edits.features.items()}
    elif plan.relabels:  # the corrected records
        edits.republish = {rid: (edits.features[rid], edits.labels[rid]) for rid in plan.relabels}
    for rid in carried:  # the application still sends the column: its message goes too
        edits.republish[rid] = (plan.added[rid].features, plan.added[rid].label)
    if not plan.columns:  # only a relabel read these: their stored features stay
        edits.features = {}
    return edits


def corrected_records(
    model_id: str, edits: Edits, held: Mapping[str, str], seq: int, now: datetime
) -> list[RecordAdded]:
    """The ``RecordAdded`` of each record to send back corrected (:attr:`Edits.republish`)
    on ``unlearn.records`` under its key, so that compaction drops the message holding the
    old label or the forgotten columns' values; its event id
    (``corrected:<model>:<record>:<seq>``) is marked applied in the publishing
    transaction, so reading it back learns nothing."""
    return [
        corrected_record(
            f"corrected:{model_id}:{rid}:{seq}", model_id, rid, held[rid], x, label, now
        )
        for rid, (x, label) in edits.republish.items()
    ]


def corrected_record(
    event_id: str,
    model_id: str,
    record_id: str,
    subject_id: str,
    features: np.ndarray,
    label: Any,
    now: datetime,
) -> RecordAdded:
    """One record as it is sent back corrected on ``unlearn.records``."""
    return RecordAdded(
        event_id=event_id,
        model_id=model_id,
        record_id=record_id,
        subject_id=subject_id,
        features=[float(v) for v in features],
        label=label,
        ts=now,
    )


def receipt_fields(
    plan: Plan, request_id: str, n: int, methods: Mapping[str, str]
) -> tuple[ReceiptStatus, dict[str, Any]]:
    """A request's receipt status and fields: ``rejected`` with the reason, else
    ``applied`` when it changed something (``n``), ``already_absent`` when not; a feature
    removal names the columns it forgot, a relabel the records it corrected, each with the
    engine's method for it (``methods``)."""
    reason = plan.refused.get(request_id)
    change = plan.changes_of.get(request_id)
    fields: dict[str, Any] = {"n_records": n}
    if change is not None:
        fields["operation"] = change.operation
        if change.operation == "feature_removal":
            fields["columns"] = list(change.columns)
            fields["n_records"] = 0
        else:
            fields["relabelled"] = list(change.relabelled)
        if n and change.operation in methods:
            fields["method"] = methods[change.operation]
    if reason is not None:
        operation = {"operation": change.operation} if change is not None else {}
        return ReceiptStatus.REJECTED, {"reason": reason, "n_records": 0, **operation}
    return (ReceiptStatus.APPLIED if n else ReceiptStatus.ALREADY_ABSENT), fields

"""A batch's net effect on one model: pure, from the operations and what the model holds.

The writer (:class:`~pipeline.applier.Applier`) reads what the plan needs from Redis into
:class:`Facts` (final receipts, the subjects' records, applied event ids, suppressions),
then :func:`plan_batch` decides, without I/O and in the batch's order:

* replays are dropped: a deletion request whose receipt for this model is final (its
  receipt is announced again), a ``RecordAdded`` whose event id was applied, and a
  request or event seen earlier in the same batch;
* a ``RecordAdded`` with the wrong feature count or an unknown label is rejected (a dead
  letter), and one that is rejected or suppressed (produced before an erasure of its
  subject or record) is never learned; if the model does not hold its id, it is
  tombstoned (``dropped``): its features must leave the records topic too;
* a record id learned again replaces the held one: forget the old, learn the new;
* a deletion request marks the subject's held records, the named records and their
  holdout rows for removal; a record learned and deleted within the batch is never
  learned (``erased_pending``). The number marked is the request's ``n_records``;
* a feature removal resolves its columns (0-based indices, or names when the model was
  trained with feature names) and marks those the model still uses (``columns``); an
  unknown name or an index out of range refuses the whole request (``refused``, a
  ``rejected`` receipt with the reason);
* a relabel marks the corrected label of each named record (``relabels``; a record
  learned earlier in the batch gets the label in ``added``); a record the model does not
  hold (never held, forgotten, or deleted earlier in the batch) or a label outside its
  classes refuses the whole request. A record relabelled and then replaced or deleted
  later in the batch is not relabelled: the later operation wins.

Feature removals commute with the batch's other operations (every record, held or
learned, loses the columns); a relabel's place in the order is kept by the rules above,
so the writer applies the net effect as forget, relabel, forget features, learn.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pipeline.events import (
    DeletionRequested,
    FeatureRemovalRequested,
    Operation,
    Receipt,
    RecordAdded,
    RelabelRequested,
)
from pipeline.intake import Rejected
from pipeline.ops import Forget, ForgetFeatures, Learn, Op, Relabel
from pipeline.store.records import StoredRecord
from pipeline.training import Engine, Holdout
from pipeline.unlearning.kinds import kind_of

__all__ = ["Change", "Facts", "Plan", "plan_batch"]


@dataclass(frozen=True)
class Facts:
    """What a plan needs from Redis, read before planning.

    Attributes
    ----------
    final : dict of str to Receipt
        The final receipts, for this model, of the batch's requests (by request id).
    subject_records : dict of str to set of str
        The record ids stored for each subject the batch's requests name.
    seen : set of str
        Event ids of the batch's ``RecordAdded`` that the model applied before.
    suppressed : set of int
        Positions in the batch of the ``Learn`` operations that must never be learned:
        suppressed by an erasure, or produced before their record's label was corrected
        (they carry the old label).
    """

    final: dict[str, Receipt] = field(default_factory=dict)
    subject_records: dict[str, set[str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    suppressed: set[int] = field(default_factory=set)


@dataclass(frozen=True)
class Change:
    """What a feature removal or a relabel changes, for its receipt."""

    operation: Operation
    columns: tuple[int, ...] = ()
    relabelled: tuple[str, ...] = ()


@dataclass
class Plan:
    """The net effect of one batch on one model.

    Besides the records removed and added: ``columns``, the feature columns to stop
    using; ``relabels``, held record id to corrected label; ``changes_of``, what each
    feature removal or relabel changes; ``refused``, request id to the reason it is
    rejected. Every request the batch answers is in ``requests`` (with the number of
    records, or columns, it changed) and ``received``.
    """

    removed: dict[str, None] = field(default_factory=dict)
    added: dict[str, StoredRecord] = field(default_factory=dict)
    erased_pending: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    received: dict[str, datetime] = field(default_factory=dict)
    subjects: set[str] = field(default_factory=set)
    rejected: list[Rejected[Any]] = field(default_factory=list)
    skipped: int = 0
    announce: dict[str, Receipt] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # never learned: tombstone them
    holdout_records: set[str] = field(default_factory=set)
    holdout_rows: int = 0
    columns: dict[int, None] = field(default_factory=dict)
    relabels: dict[str, Any] = field(default_factory=dict)
    changes_of: dict[str, Change] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)

    @property
    def changes(self) -> bool:
        """Whether the batch changes the model (else: receipts on the current version)."""
        return bool(
            self.removed
            or self.added
            or self.erased_pending
            or self.events
            or self.holdout_rows
            or self.columns
            or self.relabels
        )

    @property
    def erased(self) -> set[str]:
        """Record ids the batch erased (held, or learned and deleted within it): tombstone
        them."""
        return (set(self.removed) | self.erased_pending) - set(self.added)


def plan_batch(
    model_id: str,
    ops: list[Op],
    facts: Facts,
    *,
    engine: Engine,
    held: dict[str, str],
    holdout: Holdout | None,
    feature_names: Sequence[str] | None = None,
) -> Plan:
    """The net effect of ``ops`` (in order) on a model; see the module docstring.

    Parameters
    ----------
    model_id : str
    ops : list of Forget or Learn
    facts : Facts
        Read from Redis for these ``ops``.
    engine : Engine
        The model's engine (its feature count and classes check new records).
    held : dict of str to str
        Record id to subject id of every record the model holds.
    holdout : Holdout or None
        The model's holdout set.
    feature_names : sequence of str, optional
        The model's feature names (trained from a CSV with a header), for columns named
        by a feature removal.
    """
    plan = Plan()
    batch_events: set[str] = set()
    for i, op in enumerate(ops):
        if isinstance(op, Learn):
            ev = op.event
            if ev.event_id in facts.seen or ev.event_id in batch_events:
                plan.skipped += 1
                continue
            problem = _check(model_id, engine, ev)
            if problem is not None or i in facts.suppressed:
                if problem is not None and op.message is not None:
                    plan.rejected.append(Rejected(op.message, *problem))
                if ev.record_id not in held:  # its features leave the topic too
                    plan.dropped.append(ev.record_id)
                continue
            batch_events.add(ev.event_id)
            plan.events.append(ev.event_id)
            rid = ev.record_id
            if rid not in plan.added and rid in held and rid not in plan.removed:
                plan.removed[rid] = None  # replaced: forget the old version
            plan.added[rid] = StoredRecord.from_event(ev)
            plan.relabels.pop(rid, None)  # the new record's own label wins
            continue
        request_id = op.request.request_id
        if request_id in facts.final or request_id in plan.requests:
            plan.skipped += 1
            if request_id in facts.final:  # announce it again: the last announcement
                plan.announce[request_id] = facts.final[request_id]  # may be lost
            continue
        plan.received[request_id] = op.request.ts
        if isinstance(op, Forget):
            req = op.request
            plan.requests[request_id] = _resolve(plan, req, facts, held, holdout)
            if req.subject_id is not None:
                plan.subjects.add(req.subject_id)
            # deleted after a relabel: nothing left to relabel (looked up from the few
            # relabels, not from every record the batch removes: once per request)
            for rid in [r for r in plan.relabels if r in plan.removed]:
                del plan.relabels[rid]
        elif isinstance(op, ForgetFeatures):
            plan.changes_of[request_id] = Change("feature_removal")  # until resolved
            plan.requests[request_id] = _forget_features(
                plan, op.request, model_id, engine, feature_names
            )
        elif isinstance(op, Relabel):
            plan.changes_of[request_id] = Change("relabel")  # until checked
            plan.requests[request_id] = _relabel(plan, op.request, model_id, engine, held)
    return plan


def _forget_features(
    plan: Plan,
    req: FeatureRemovalRequested,
    model_id: str,
    engine: Engine,
    feature_names: Sequence[str] | None,
) -> int:
    """Resolve a feature removal's columns and mark those still used; return how many."""
    d = int(engine.n_features_in_)
    resolved: list[int] = []
    for column in req.columns:
        if isinstance(column, str):
            if not feature_names or column not in feature_names:
                plan.refused[req.request_id] = _unknown_name(model_id, column, feature_names)
                return 0
            resolved.append(list(feature_names).index(column))
        elif column >= d:
            plan.refused[req.request_id] = (
                f"column {column} is out of range: model {model_id!r} has {d} features "
                f"(columns 0 to {d - 1})"
            )
            return 0
        else:
            resolved.append(int(column))
    forgotten = {int(c) for c in getattr(engine, "forgotten_features_", ())}
    new = [c for c in dict.fromkeys(resolved) if c not in forgotten and c not in plan.columns]
    plan.columns.update(dict.fromkeys(new))
    plan.changes_of[req.request_id] = Change("feature_removal", columns=tuple(new))
    return len(new)


def _unknown_name(model_id: str, name: str, feature_names: Sequence[str] | None) -> str:
    if not feature_names:
        return (
            f"model {model_id!r} has no feature names (it was not trained from a CSV with a "
            f"header): name column {name!r} by its 0-based index"
        )
    shown = ", ".join(repr(n) for n in list(feature_names)[:8])
    more = f", ... ({len(feature_names)} features)" if len(feature_names) > 8 else ""
    return f"model {model_id!r} has no feature named {name!r} (its features: {shown}{more})"


def _relabel(
    plan: Plan, req: RelabelRequested, model_id: str, engine: Engine, held: dict[str, str]
) -> int:
    """Check a relabel and mark its labels; refuse the whole request on a bad record or
    label. Returns how many records it relabels."""
    kind = kind_of(engine)
    for item in req.labels:
        rid = item.record_id
        if rid not in plan.added:
            if rid in plan.removed or rid in plan.erased_pending:
                plan.refused[req.request_id] = (
                    f"record {rid!r} was forgotten by model {model_id!r} earlier in this "
                    "batch: a forgotten record cannot be relabelled"
                )
                return 0
            if rid not in held:
                plan.refused[req.request_id] = (
                    f"model {model_id!r} holds no record {rid!r} (never learned, or "
                    "forgotten): only held records can be relabelled"
                )
                return 0
        problem = kind.check_label(engine, item.label, record_id=rid, model_id=model_id)
        if problem is not None:
            plan.refused[req.request_id] = problem[1]
            return 0
    for item in req.labels:
        rid = item.record_id
        if rid in plan.added:
            plan.added[rid] = replace(plan.added[rid], label=item.label)
        else:
            plan.relabels[rid] = item.label
    ids = tuple(item.record_id for item in req.labels)
    plan.changes_of[req.request_id] = Change("relabel", relabelled=ids)
    return len(ids)


def _resolve_holdout(plan: Plan, req: DeletionRequested, holdout: Holdout | None) -> int:
    """Mark a request's holdout rows for erasure; return how many no earlier request of the
    batch had marked."""
    if holdout is None:
        return 0
    marked = set(holdout.rows_of(plan.subjects, plan.holdout_records))
    if req.subject_id is not None:
        plan.subjects.add(req.subject_id)
    plan.holdout_records.update(req.record_ids or ())
    rows = set(holdout.rows_of(plan.subjects, plan.holdout_records))
    plan.holdout_rows = len(rows)
    return len(rows - marked)


def _resolve(
    plan: Plan,
    req: DeletionRequested,
    facts: Facts,
    held: dict[str, str],
    holdout: Holdout | None,
) -> int:
    """Mark a request's records (and holdout rows) for removal; return how many."""
    n = _resolve_holdout(plan, req, holdout)
    stored: list[str] = []
    pending: list[str] = []
    if req.subject_id is not None:
        subject = req.subject_id
        stored = sorted(facts.subject_records.get(subject, ()))
        stored = [r for r in stored if r in held and r not in plan.removed]
        pending = [r for r, rec in plan.added.items() if rec.subject_id == subject]
    for rid in pending:
        del plan.added[rid]
        plan.erased_pending.add(rid)
        n += 1
    for rid in stored:
        plan.removed[rid] = None
        n += 1
    for rid in dict.fromkeys(req.record_ids or []):
        if rid in plan.added:
            del plan.added[rid]
            plan.erased_pending.add(rid)
            n += 1
        elif rid in held and rid not in plan.removed:
            plan.removed[rid] = None
            n += 1
    return n


def _check(model_id: str, engine: Engine, ev: RecordAdded) -> tuple[str, str] | None:
    """A reason code and message if ``ev`` does not fit the model, else None."""
    expected = engine.n_features_in_
    if len(ev.features) != expected:
        return (
            "feature_count",
            f"record {ev.record_id!r} has {len(ev.features)} features, model "
            f"{model_id!r} expects {expected}",
        )
    kind = kind_of(engine)
    return kind.check_label(engine, ev.label, record_id=ev.record_id, model_id=model_id)

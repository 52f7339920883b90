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
  learned (``erased_pending``). The number marked is the request's ``n_records``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pipeline.events import DeletionRequested, Receipt, RecordAdded
from pipeline.intake import Rejected
from pipeline.ops import Learn, Op
from pipeline.store.records import StoredRecord
from pipeline.training import Engine, Holdout
from pipeline.unlearning.kinds import kind_of

__all__ = ["Facts", "Plan", "plan_batch"]


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
        Positions in the batch of the ``Learn`` operations that must never be learned.
    """

    final: dict[str, Receipt] = field(default_factory=dict)
    subject_records: dict[str, set[str]] = field(default_factory=dict)
    seen: set[str] = field(default_factory=set)
    suppressed: set[int] = field(default_factory=set)


@dataclass
class Plan:
    """The net effect of one batch on one model."""

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

    @property
    def changes(self) -> bool:
        """Whether the batch changes the model (else: receipts on the current version)."""
        return bool(
            self.removed or self.added or self.erased_pending or self.events or self.holdout_rows
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
            continue
        req = op.request
        if req.request_id in facts.final or req.request_id in plan.requests:
            plan.skipped += 1
            if req.request_id in facts.final:  # announce it again: the last announcement
                plan.announce[req.request_id] = facts.final[req.request_id]  # may be lost
            continue
        plan.requests[req.request_id] = _resolve(plan, req, facts, held, holdout)
        plan.received[req.request_id] = req.ts
        if req.subject_id is not None:
            plan.subjects.add(req.subject_id)
    return plan


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

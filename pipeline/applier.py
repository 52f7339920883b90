"""Applying a batch of deletions and new records to one model: the worker's logic, no faust.

The faust agents (``workers/app.py``) decode messages, hand the events to an
:class:`Applier` and publish what it returns. For one model and one batch of events,
in their order, :meth:`Applier.apply`

1. loads the model (engine checkpoint of the current version + its records from Redis;
   cached between batches, reloaded when another writer moved ``current``);
2. drops replays: a deletion request whose receipt for this model is final (its receipt
   is announced again, nothing else happens), a ``RecordAdded`` whose event id was
   applied (event ids are remembered per model);
3. resolves the batch to its net effect: records to forget (a subject's records, named
   records; a record id learned again is replaced: forget the old, learn the new) and
   records to learn; a record learned and deleted within the batch is never learned;
4. makes one ``forget`` and one ``learn`` call on the engine;
5. publishes in ONE Redis transaction (:class:`~pipeline.store.Publication`): the new
   version and ``current``, the erasure of the forgotten records' features, the new
   records, a receipt per request, the applied event ids and sequence number, the engine
   checkpoint;
6. asks the retrain policy (:mod:`pipeline.policy`) whether to fall back to a full fit.

It returns an :class:`Outcome`: the ``ModelPublished`` notice, the receipts, the record
ids to tombstone on the compacted records topic, the rejected events (for the dead-letter
topic) and a ``RetrainRequested`` when a trigger fired. A replayed batch changes nothing
and only announces its receipts again.

:meth:`Applier.merge_retrain` takes a refit handed back by the retrainer (at snapshot
sequence S), forgets from it every record erased after S, learns every record added after
S, and publishes it. To be able to forget a record erased after S from the refitted model,
the worker keeps that record's features *in memory* while a retrain is in flight (the
retrainer holds them too, in the snapshot it fits on); they are dropped once the result
is merged. A worker restarted meanwhile cannot merge and asks for a new retrain.

The applier is not thread-safe: a worker runs it on one executor thread (single writer).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from pipeline.errors import ModelVersionConflict, PipelineError, UnknownModel
from pipeline.events import (
    DeletionRequested,
    ModelOps,
    ModelPublished,
    Receipt,
    ReceiptStatus,
    RecordAdded,
    RetrainCompleted,
    RetrainRequested,
)
from pipeline.faults import crash_point
from pipeline.intake import Message, Rejected, produced_at
from pipeline.policy import FitBaseline, ModelHealth, RetrainPolicy, RetrainReason
from pipeline.retraining import Retraining, engine_from_state
from pipeline.store.facade import Store
from pipeline.store.publication import Publication, PublishResult
from pipeline.store.records import StoredRecord
from pipeline.store.suppression import Candidate
from pipeline.training import (
    Engine,
    Holdout,
    class_scores,
    engine_spec,
    holdout_score,
    load_holdout,
)
from pipeline.unlearning import UpdateReport
from pipeline.unlearning.base import decode_ids
from pipeline.unlearning.kinds import kind_of

__all__ = ["Applier", "Forget", "Learn", "Outcome"]

log = logging.getLogger(__name__)
_RETRIES = 3


@dataclass(frozen=True)
class Forget:
    """A deletion request routed to one model, with the message it came from."""

    request: DeletionRequested
    message: Message | None = None


@dataclass(frozen=True)
class Learn:
    """A new record for one model, with the message it came from."""

    event: RecordAdded
    message: Message | None = None


Op = Forget | Learn


@dataclass
class Outcome:
    """What one batch (or one merge) did to one model, for the worker to publish.

    Attributes
    ----------
    published : ModelPublished or None
        The notice for ``unlearn.model-updates`` (None: no new version).
    receipts : list of Receipt
        Receipts to announce on ``unlearn.receipts``: those this batch wrote, and the
        final receipts of replayed requests again (a worker that died between its Redis
        commit and the broker's ack lost that announcement). The topic is at-least-once;
        a receipt's ``event_id`` is deterministic, so consumers drop repeats by it.
    tombstones : list of str
        Record ids whose features were erased: tombstone them on ``unlearn.records``.
    rejected : list of Rejected
        Events refused for this model (dead letters).
    retrain : RetrainRequested or None
        A retrain trigger that fired.
    held_back : (reason, why) or None
        The policy fired but no request was sent: ``why`` is ``"coalesced"`` (a retrain
        is in flight) or ``"rate_limited"`` (this model triggered less than
        ``retrigger_after`` ago; a later batch asks again).
    completed : RetrainCompleted or None
        Set when this outcome published a merged retrain.
    reports : list of UpdateReport
        The engine's reports of this batch's updates (a forget, a learn, or both).
    skipped : int
        Events already applied before (replays), dropped.
    forward : list of ModelOps
        Requests routed to models, for ``unlearn.model-ops`` (the intake stage's output).
    """

    model_id: str
    published: ModelPublished | None = None
    receipts: list[Receipt] = field(default_factory=list)
    tombstones: list[str] = field(default_factory=list)
    rejected: list[Rejected[Any]] = field(default_factory=list)
    retrain: RetrainRequested | None = None
    completed: RetrainCompleted | None = None
    reports: list[UpdateReport] = field(default_factory=list)
    skipped: int = 0
    held_back: tuple[str, str] | None = None
    forward: list[ModelOps] = field(default_factory=list)


@dataclass
class _Loaded:
    """A model as the worker holds it between batches."""

    engine: Engine
    version: int
    seq: int
    held: dict[str, str]  # record id -> subject id, of every record the version holds
    extra: dict[str, Any]
    holdout: Holdout | None
    # features of records erased while a retrain is in flight: (seq, id, features, label)
    retained: list[tuple[int, str, np.ndarray, Any]] = field(default_factory=list)
    retain_from: int | None = None


@dataclass
class _Plan:
    """The net effect of one batch on one model."""

    removed: dict[str, None] = field(default_factory=dict)
    added: dict[str, StoredRecord] = field(default_factory=dict)
    erased_pending: set[str] = field(default_factory=set)
    events: list[str] = field(default_factory=list)
    requests: dict[str, int] = field(default_factory=dict)
    received: dict[str, datetime] = field(default_factory=dict)
    subject_records: dict[str, set[str]] = field(default_factory=dict)
    subjects: set[str] = field(default_factory=set)
    rejected: list[Rejected[Any]] = field(default_factory=list)
    skipped: int = 0
    announce: dict[str, Receipt] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)  # never learned: tombstone them
    holdout_records: set[str] = field(default_factory=set)
    holdout_rows: int = 0

    @property
    def changes(self) -> bool:
        return bool(
            self.removed or self.added or self.erased_pending or self.events or self.holdout_rows
        )


def _now() -> datetime:
    return datetime.now(UTC)


def _erased(plan: _Plan) -> set[str]:
    """Record ids a batch erased (held, or learned and deleted within it): tombstone them."""
    return (set(plan.removed) | plan.erased_pending) - set(plan.added)


class Applier:
    """Applies batches to models held in Redis; see the module docstring.

    Parameters
    ----------
    store : Store
    policy : RetrainPolicy
    retraining : Retraining, optional
        Shared with the retrainer (in-flight markers, hand-off); default on ``store``.
    keep_versions : int
        Versions kept per model (older ones retired with each publication).
    erased_versions_grace : timedelta, optional
        Keep the versions an erasure retires readable by number this long (default: they
        are deleted in the erasing transaction).
    retrigger_after : float
        Seconds before the same model may trigger a retrain again.
    """

    def __init__(
        self,
        store: Store,
        *,
        policy: RetrainPolicy | None = None,
        retraining: Retraining | None = None,
        keep_versions: int = 50,
        retrigger_after: float = 60.0,
        erased_versions_grace: timedelta | None = None,
    ) -> None:
        self.store = store
        self.policy = policy or RetrainPolicy()
        self.retraining = retraining or Retraining(store)
        self.keep_versions = keep_versions
        self.erased_versions_grace = erased_versions_grace
        self.retrigger_after = retrigger_after
        self._models: dict[str, _Loaded] = {}
        self._triggered: dict[str, float] = {}
        self.loads = 0  # models (re)loaded from Redis so far

    # ---- applying a batch -------------------------------------------------------------
    def apply(self, model_id: str, ops: list[Op], *, _attempt: int = 0) -> Outcome:
        """Apply a batch of events (in order) to one model; see the module docstring."""
        start = time.perf_counter()
        try:
            loaded = self._load(model_id)
        except UnknownModel as exc:
            out = Outcome(model_id)
            for op in ops:
                if op.message is not None:
                    out.rejected.append(Rejected(op.message, "unknown_model", str(exc)))
                if isinstance(op, Learn):  # its features must not stay on the records topic
                    out.tombstones.append(op.event.record_id)
            return out
        in_flight = self.retraining.in_flight(model_id) is not None
        if not in_flight:
            loaded.retained.clear()
            loaded.retain_from = None
        elif loaded.retain_from is None:
            loaded.retain_from = loaded.seq

        plan = self._plan(model_id, loaded, ops)
        unsent = self.store.records.unsent_tombstones(model_id)  # a crash's leftovers
        if not plan.changes:
            out = self._close_unchanged(model_id, loaded, plan)
            out.tombstones = sorted(set(out.tombstones) | set(unsent))
            return out

        reports: list[UpdateReport] = []
        erased: list[tuple[str, np.ndarray, Any]] = []
        try:
            if in_flight and plan.removed:  # kept for the merge, from the engine's memory
                ids = list(plan.removed)
                X, labels = loaded.engine.held_records(ids)
                erased = list(zip(ids, X, labels.tolist(), strict=True))
            if plan.removed:
                reports.append(loaded.engine.forget(list(plan.removed)))
            if plan.added:
                recs = list(plan.added.values())
                X = np.stack([r.features for r in recs])
                y = np.array([r.label for r in recs])
                reports.append(loaded.engine.learn(X, y, ids=[r.record_id for r in recs]))
            reports.extend(_certified(loaded.engine, model_id))
            result, health = self._publish_batch(model_id, loaded, plan, reports)
        except ModelVersionConflict:
            self._models.pop(model_id, None)
            if _attempt >= _RETRIES:
                raise
            log.warning("model %r moved under this worker; reloading and retrying", model_id)
            return self.apply(model_id, ops, _attempt=_attempt + 1)
        except BaseException:
            self._models.pop(model_id, None)  # the engine may be half-updated: reload
            raise

        new_seq = result.metadata.seq
        loaded.retained.extend((new_seq, rid, x, label) for rid, x, label in erased)
        for rid in plan.removed:
            loaded.held.pop(rid, None)
        loaded.held.update((rid, rec.subject_id) for rid, rec in plan.added.items())
        loaded.version, loaded.seq = result.version, new_seq
        loaded.extra = dict(result.metadata.extra)
        log.info(
            "model %r v%d (seq %d): %d records erased, %d stored, %d requests, %d replays "
            "in %.1f ms; engine %s",
            model_id,
            result.version,
            new_seq,
            len(result.erased),
            len(result.added),
            len(plan.requests),
            plan.skipped,
            (time.perf_counter() - start) * 1e3,
            ", ".join(_summary(r) for r in reports) or "unchanged",
        )

        out = Outcome(
            model_id,
            published=result.notice(),
            receipts=list(result.receipts) + list(plan.announce.values()),
            tombstones=sorted(set(plan.dropped) | _erased(plan) | set(unsent)),
            rejected=plan.rejected,
            reports=reports,
            skipped=plan.skipped,
        )
        reason = self.policy.decide(health)
        if reason is not None and not in_flight:
            out.retrain = self._trigger(model_id, reason, new_seq)
        if reason is not None and out.retrain is None:
            out.held_back = (reason, "coalesced" if in_flight else "rate_limited")
        return out

    def _plan(self, model_id: str, loaded: _Loaded, ops: list[Op]) -> _Plan:
        plan = _Plan()
        forgets = [op.request for op in ops if isinstance(op, Forget)]
        request_ids = [r.request_id for r in forgets]
        stored = self.store.receipts.get_many(request_ids, model_id)
        receipts = {rid: rcpt for rid, rcpt in zip(request_ids, stored, strict=True) if rcpt}
        final = {rid for rid, rcpt in receipts.items() if rcpt.status.final}
        subjects = {r.subject_id for r in forgets if r.subject_id is not None}
        plan.subject_records = self.store.records.subject_record_ids_many(model_id, subjects)
        learn_ops = [op for op in ops if isinstance(op, Learn)]
        seen = self._seen_events(model_id, [op.event.event_id for op in learn_ops])
        suppressed = {
            id(op)
            for op, out in zip(
                learn_ops,
                self.store.suppressions.suppressed(
                    model_id,
                    [
                        Candidate(
                            op.event.record_id,
                            op.event.subject_id,
                            produced_at(op.event, op.message),
                        )
                        for op in learn_ops
                    ],
                ),
                strict=True,
            )
            if out
        }
        batch_events: set[str] = set()
        for op in ops:
            if isinstance(op, Learn):
                ev = op.event
                if ev.event_id in seen or ev.event_id in batch_events:
                    plan.skipped += 1
                    continue
                problem = self._check(model_id, loaded.engine, ev)
                if problem is not None or id(op) in suppressed:
                    if problem is not None and op.message is not None:
                        plan.rejected.append(Rejected(op.message, *problem))
                    if ev.record_id not in loaded.held:  # its features leave the topic too
                        plan.dropped.append(ev.record_id)
                    continue
                batch_events.add(ev.event_id)
                plan.events.append(ev.event_id)
                rid = ev.record_id
                if rid not in plan.added and rid in loaded.held and rid not in plan.removed:
                    plan.removed[rid] = None  # replaced: forget the old version
                plan.added[rid] = StoredRecord.from_event(ev)
                continue
            req = op.request
            if req.request_id in final or req.request_id in plan.requests:
                plan.skipped += 1
                if req.request_id in final:  # announce it again: the last announcement
                    plan.announce[req.request_id] = receipts[req.request_id]  # may be lost
                continue
            plan.requests[req.request_id] = self._resolve(loaded, plan, req)
            plan.received[req.request_id] = req.ts
            if req.subject_id is not None:
                plan.subjects.add(req.subject_id)
        return plan

    def _resolve_holdout(self, loaded: _Loaded, plan: _Plan, req: DeletionRequested) -> int:
        """Mark a request's holdout rows for erasure; return how many no earlier request
        of the batch had marked."""
        if loaded.holdout is None:
            return 0
        marked = set(loaded.holdout.rows_of(plan.subjects, plan.holdout_records))
        if req.subject_id is not None:
            plan.subjects.add(req.subject_id)
        plan.holdout_records.update(req.record_ids or ())
        rows = set(loaded.holdout.rows_of(plan.subjects, plan.holdout_records))
        plan.holdout_rows = len(rows)
        return len(rows - marked)

    def _resolve(self, loaded: _Loaded, plan: _Plan, req: DeletionRequested) -> int:
        """Mark a request's records (and holdout rows) for removal; return how many."""
        n = self._resolve_holdout(loaded, plan, req)
        stored: list[str] = []
        pending: list[str] = []
        if req.subject_id is not None:
            subject = req.subject_id
            stored = sorted(plan.subject_records.get(subject, ()))
            stored = [r for r in stored if r in loaded.held and r not in plan.removed]
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
            elif rid in loaded.held and rid not in plan.removed:
                plan.removed[rid] = None
                n += 1
        return n

    def _check(self, model_id: str, engine: Engine, ev: RecordAdded) -> tuple[str, str] | None:
        expected = engine.n_features_in_
        if len(ev.features) != expected:
            return (
                "feature_count",
                f"record {ev.record_id!r} has {len(ev.features)} features, model "
                f"{model_id!r} expects {expected}",
            )
        kind = kind_of(engine)
        return kind.check_label(engine, ev.label, record_id=ev.record_id, model_id=model_id)

    def _seen_events(self, model_id: str, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        client: Any = self.store.client
        scores = client.zmscore(self.store.keys.applied_events(model_id), event_ids)
        return {e for e, s in zip(event_ids, scores, strict=True) if s is not None}

    def _close_unchanged(self, model_id: str, loaded: _Loaded, plan: _Plan) -> Outcome:
        """Requests that remove nothing: final receipts on the current version."""
        out = Outcome(
            model_id,
            receipts=list(plan.announce.values()),
            tombstones=sorted(set(plan.dropped)),
            rejected=plan.rejected,
            skipped=plan.skipped,
        )
        out.receipts += self.store.receipts.close_many(
            model_id,
            plan.received,
            ReceiptStatus.ALREADY_ABSENT,
            version=loaded.version,
            method="none",
            certificate=float(loaded.engine.certificate_),
            budget=float(loaded.engine.budget_),
        )
        return out

    def _publish_batch(
        self, model_id: str, loaded: _Loaded, plan: _Plan, reports: list[UpdateReport]
    ) -> tuple[PublishResult, ModelHealth]:
        engine = loaded.engine
        deleted = sum(1 for rid in plan.removed if rid not in plan.added)
        deleted += len(plan.erased_pending)
        extra = dict(loaded.extra)
        extra["deleted_since_fit"] = int(extra.get("deleted_since_fit", 0)) + deleted
        holdout = loaded.holdout
        new_holdout = (
            holdout.without(plan.subjects, plan.holdout_records) if holdout is not None else None
        )
        if new_holdout is not None:
            holdout = new_holdout
        metrics = holdout_score(engine, holdout)
        method = reports[0].method if reports else "none"
        new_seq = loaded.seq + len(plan.events) + len(plan.requests)
        pub = self.store.models.publication(model_id, loaded.version)
        pub.set_model(
            engine_spec(engine, method=method, seq=new_seq, holdout_metrics=metrics, extra=extra)
        )
        pub.add_records(plan.added.values())
        pub.erase_records(plan.removed, {r: loaded.held[r] for r in plan.removed})
        pub.tombstones(_erased(plan))
        for request_id, n in plan.requests.items():
            status = ReceiptStatus.APPLIED if n else ReceiptStatus.ALREADY_ABSENT
            pub.receipt(request_id, status, n_records=n, received_at=plan.received[request_id])
        pub.mark_events(plan.events).applied_seq(new_seq)
        pub.checkpoint(engine.state_dict()).retain(self.keep_versions)
        pub.erased_versions_grace(self.erased_versions_grace)
        if new_holdout is not None:
            pub.replace_holdout(new_holdout.fields())
        result = pub.commit()
        loaded.holdout = holdout
        health = ModelHealth(
            retrain_recommended=any(r.retrain_recommended for r in reports),
            score=next(iter(metrics.values()), None),
            baseline=FitBaseline.from_dict(extra.get("last_fit")),
            deleted_since_fit=int(extra["deleted_since_fit"]),
            class_scores=class_scores(metrics),
            first_class_scores=dict((extra.get("first_fit") or {}).get("class_scores", {})),
        )
        return result, health

    def _trigger(self, model_id: str, reason: RetrainReason, seq: int) -> RetrainRequested | None:
        last = self._triggered.get(model_id)
        if last is not None and time.monotonic() - last < self.retrigger_after:
            return None
        self._triggered[model_id] = time.monotonic()
        log.info("model %r: retrain triggered (%s) at seq %d", model_id, reason, seq)
        return RetrainRequested.new(model_id, reason, seq)

    def request_retrain(self, model_id: str, reason: RetrainReason) -> RetrainRequested:
        """A ``RetrainRequested`` for a scheduled or operator retrain of ``model_id``."""
        seq = self.store.models.applied_seq(model_id) or 0
        return RetrainRequested.new(model_id, reason, seq)

    # ---- loading -----------------------------------------------------------------------
    def _load(self, model_id: str) -> _Loaded:
        current = self.store.models.current_version(model_id)
        if current == 0:
            raise UnknownModel(model_id)
        cached = self._models.get(model_id)
        if cached is not None and cached.version == current:
            return cached
        snapshot = self.retraining.snapshot(model_id)
        meta = self.store.models.metadata(model_id, snapshot.version)
        engine = engine_from_state(snapshot.state, snapshot.records, meta.n_features)
        loaded = _Loaded(
            engine=engine,
            version=snapshot.version,
            seq=meta.seq,
            held={r.record_id: r.subject_id for r in snapshot.records},
            extra=dict(meta.extra),
            holdout=load_holdout(self.store, model_id),
        )
        self._models[model_id] = loaded
        self.loads += 1
        log.info(
            "loaded model %r v%d (%d records, seq %d)",
            model_id,
            loaded.version,
            len(loaded.held),
            loaded.seq,
        )
        return loaded

    def loaded_version(self, model_id: str) -> int | None:
        """The version this applier holds in memory for ``model_id`` (None: not loaded)."""
        cached = self._models.get(model_id)
        return None if cached is None else cached.version

    # ---- merging a retrain --------------------------------------------------------------
    def poll_retrains(self, owns: Callable[[str], bool] | None = None) -> list[Outcome]:
        """Merge every refit the retrainer handed back for a model this worker owns
        (``owns(model_id)``; default: every model); see :meth:`merge_retrain`."""
        models = [m for m in self.store.models.models() if owns is None or owns(m)]
        waiting = self.retraining.pending_results(models)
        return [out for out in (self.merge_retrain(m) for m in waiting) if out is not None]

    def merge_retrain(self, model_id: str) -> Outcome | None:
        """Bring a handed-back refit up to date and publish it (method ``"retrain"``).

        Returns ``None`` when nothing is waiting. If this worker cannot prove it kept
        every record erased since the snapshot (it restarted meanwhile), the result is
        discarded and a new ``RetrainRequested`` returned instead.
        """
        result = self.retraining.take_result(model_id)
        if result is None:
            return None
        loaded = self._load(model_id)
        if loaded.retain_from is None:
            loaded.retain_from = loaded.seq
        S = result.snapshot_seq
        if S < loaded.retain_from:
            log.warning(
                "model %r: refit at seq %d predates what this worker kept (seq %d); "
                "discarding it and asking again",
                model_id,
                S,
                loaded.retain_from,
            )
            self.retraining.release(model_id, forget_rate_limit=True)
            loaded.retained.clear()
            loaded.retain_from = None
            reason: Any = result.reason
            return Outcome(model_id, retrain=self.request_retrain(model_id, reason))

        # the snapshot's records: erased after S -> the features kept in memory; else Redis
        snapshot_ids = [str(i) for i in _json_ids(result.state)]
        kept: dict[str, tuple[np.ndarray, Any]] = {}
        for tag, rid, x, label in loaded.retained:
            if tag > S and rid not in kept:
                kept[rid] = (x, label)
        from_store = [rid for rid in snapshot_ids if rid not in kept]
        stored = self.store.records.get_many(model_id, from_store)
        missing = [rid for rid, rec in zip(from_store, stored, strict=True) if rec is None]
        if missing:
            msg = (
                f"model {model_id!r}: {len(missing)} records of the refit's snapshot are "
                f"neither held nor kept (first {missing[0]!r}); cannot merge"
            )
            raise PipelineError(msg)
        by_id = {rec.record_id: rec for rec in stored if rec is not None}
        records = [
            by_id[rid] if rid in by_id else StoredRecord(rid, "", kept[rid][0], kept[rid][1])
            for rid in snapshot_ids
        ]
        engine = engine_from_state(result.state, records, loaded.engine.n_features_in_)
        forget = [rid for rid in snapshot_ids if rid in kept]
        if forget:
            engine.forget(forget)
        still = set(snapshot_ids) - set(forget)
        learn_ids = sorted(rid for rid in loaded.held if rid not in still)
        if learn_ids:
            new = [r for r in self.store.records.get_many(model_id, learn_ids) if r is not None]
            engine.learn(
                np.stack([r.features for r in new]),
                np.array([r.label for r in new]),
                ids=[r.record_id for r in new],
            )
        _certified(engine, model_id)
        metrics = holdout_score(engine, loaded.holdout)
        extra = dict(loaded.extra)
        extra.update(
            last_fit={
                "version": loaded.version + 1,
                "score": next(iter(metrics.values()), None),
                "n_records": len(snapshot_ids),
            },
            deleted_since_fit=len(forget),
            retrain={"reason": result.reason, "snapshot_seq": S, "duration_s": result.duration_s},
        )
        pub: Publication = self.store.models.publication(model_id, loaded.version)
        pub.set_model(
            engine_spec(
                engine, method="retrain", seq=loaded.seq, holdout_metrics=metrics, extra=extra
            )
        )
        pub.applied_seq(loaded.seq).checkpoint(engine.state_dict()).retain(self.keep_versions)
        crash_point("merge.commit", model_id)
        published = pub.retrain_done().commit()
        crash_point("merge.committed", model_id)
        loaded.engine, loaded.version, loaded.extra = engine, published.version, extra
        loaded.retained.clear()
        loaded.retain_from = None
        log.info(
            "model %r: merged the refit of seq %d as v%d (%d forgotten, %d learned since)",
            model_id,
            S,
            published.version,
            len(forget),
            len(learn_ids),
        )
        completed = RetrainCompleted(
            event_id=f"retrained:{model_id}:{published.version}",
            model_id=model_id,
            version=published.version,
            snapshot_seq=S,
            applied_seq=loaded.seq,
            duration_s=result.duration_s,
            ts=_now(),
        )
        return Outcome(model_id, published=published.notice(), completed=completed)


def _summary(report: UpdateReport) -> str:
    """``fisher 2.1 ms`` (``, curvature recomputed`` when it was), for the batch log line."""
    recomputed = ", curvature recomputed" if report.curvature_recomputed else ""
    return f"{report.method} {report.seconds * 1e3:.1f} ms{recomputed}"


def _certified(engine: Engine, model_id: str) -> list[UpdateReport]:
    """Refit in place when an update left the certificate over the budget.

    The budget bounds what Guo et al.'s Theorem 3 certifies: a version over it would
    void the guarantee of every earlier deletion, so it is never published. Normally the
    policy asks the retrainer well before (``retrain_recommended`` looks one batch ahead);
    this catches a batch that overshoots at once, such as records far from the data.

    One refit is not always enough: with poisoned records (features far from the data,
    labels flipped) the engine's Newton loop can stop while the gradient residual is still
    thousands of times the budget (tests/reliability/test_abuse.py); each further warm
    refit goes on from there, so refit until the certificate is within the budget (at most
    ``_MAX_REFITS`` times, then publish what the certificate says, logged as an error).
    """
    budget = float(getattr(engine, "budget_", 0.0) or 0.0)
    certificate = float(getattr(engine, "certificate_", 0.0) or 0.0)
    if budget <= 0 or certificate <= budget:
        return []
    log.warning(
        "model %r: certificate %.3g over the budget %.3g after an update; refitting before "
        "publishing",
        model_id,
        certificate,
        budget,
    )
    reports = [engine.refit()]
    while float(engine.certificate_) > budget and len(reports) < _MAX_REFITS:
        reports.append(engine.refit())
    if float(engine.certificate_) > budget:
        log.error(
            "model %r: certificate %.3g still over the budget %.3g after %d refits",
            model_id,
            float(engine.certificate_),
            budget,
            len(reports),
        )
    return reports


_MAX_REFITS = 20


def _json_ids(state: dict[str, Any]) -> list[Any]:
    return decode_ids(str(state["record_ids_json"]))

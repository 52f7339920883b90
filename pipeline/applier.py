"""The model writer: one model, one owner; load, apply, publish, merge.

The worker's owner stage hands an :class:`Applier` each model's operations
(:class:`~pipeline.ops.Forget`, :class:`~pipeline.ops.ForgetFeatures`,
:class:`~pipeline.ops.Relabel`, :class:`~pipeline.ops.Learn`) in their order, and
publishes the :class:`~pipeline.ops.Outcome` it returns. For one model and one batch,
:meth:`Applier.apply`

1. loads the model (:func:`pipeline.held.load`; cached between batches, reloaded when
   another writer moved ``current``);
2. reads what the plan needs from Redis and plans the batch's net effect
   (:func:`pipeline.plan.plan_batch`: replays dropped, records resolved, bad records
   rejected, no I/O);
3. makes one ``forget``, ``relabel``, ``forget_features`` and ``learn`` call each on the
   engine, as the batch needs (the middle two: :func:`pipeline.edits.edit`), and refits it
   when the certificate ended over the budget (:func:`pipeline.held.certified`);
4. publishes in ONE Redis transaction (:class:`~pipeline.store.Publication`): the new
   version and ``current``, the erasure of the forgotten records' features, the new
   records, the forgotten columns zeroed and the corrected labels in the stored records,
   a receipt per request, the applied event ids and sequence number, the engine
   checkpoint;
5. asks the retrain policy (:mod:`pipeline.policy`) whether to fall back to a full fit.

The outcome carries the ``ModelPublished`` notice, the receipts, the record ids to
tombstone on the compacted records topic, the corrected records to send back on it, the
rejected events (for the dead-letter topic) and a ``RetrainRequested`` when a trigger
fired. A replayed batch changes nothing and only announces its receipts again.

:meth:`Applier.merge_retrain` merges a refit handed back by the retrainer
(:mod:`pipeline.merge`).

The applier is not thread-safe: a worker runs it on one executor thread (single writer).
"""

from __future__ import annotations

import json
import logging
import time
from collections import ChainMap
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np

from pipeline.edits import Edits, corrected_record, corrected_records, edit, receipt_fields
from pipeline.errors import ModelVersionConflict, NoEngineCheckpoint, UnknownModel
from pipeline.events import ReceiptStatus, RecordAdded, RetrainRequested
from pipeline.held import HeldModel, certified, load, summary
from pipeline.intake import Rejected, produced_at
from pipeline.merge import merge_refit
from pipeline.ops import Forget, Learn, Op, Outcome
from pipeline.plan import Facts, Plan, plan_batch
from pipeline.policy import FitBaseline, ModelHealth, RetrainPolicy, RetrainReason
from pipeline.retraining import Retraining
from pipeline.store.facade import Store
from pipeline.store.publication import PublishResult
from pipeline.store.suppression import Candidate
from pipeline.training import class_scores, engine_spec, holdout_score
from pipeline.unlearning import UpdateReport

# Forget, Learn and Outcome live in pipeline.ops; named here too for the callers that
# import them with the Applier (bench/audit.py).
__all__ = ["Applier", "Forget", "Learn", "Outcome"]

log = logging.getLogger(__name__)
_RETRIES = 3


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
        self._models: dict[str, HeldModel] = {}
        self._triggered: dict[str, float] = {}
        self.loads = 0  # models (re)loaded from Redis so far

    # ---- applying a batch -------------------------------------------------------------
    def apply(self, model_id: str, ops: list[Op], *, _attempt: int = 0) -> Outcome:
        """Apply a batch of events (in order) to one model; see the module docstring."""
        start = time.perf_counter()
        try:
            model = self._load(model_id)
        except UnknownModel as exc:
            return _unknown(model_id, ops, exc)
        except NoEngineCheckpoint as exc:
            return self._refuse(model_id, ops, exc)
        in_flight = self.retraining.in_flight(model_id) is not None
        model.track_retrain(in_flight)

        plan = plan_batch(
            model_id,
            ops,
            self._facts(model_id, ops),
            engine=model.engine,
            held=model.held,
            holdout=model.holdout,
            feature_names=model.extra.get("feature_names"),
        )
        # a crash's leftovers: erased records' tombstones, corrected records
        unsent = self.store.records.unsent_tombstones(model_id)
        uncorrected = self.store.records.unsent_corrections(model_id)
        if not plan.changes:
            out = self._close_unchanged(model_id, model, plan)
            out.tombstones = sorted(set(out.tombstones) | set(unsent))
            out.republish = self._corrected_again(model_id, uncorrected, set(out.tombstones))
            return out

        reports: list[UpdateReport] = []
        erased: list[tuple[str, np.ndarray, Any]] = []
        try:
            if in_flight and plan.removed:  # kept for the merge, from the engine's memory
                ids = list(plan.removed)
                X, labels = model.engine.held_records(ids)
                erased = list(zip(ids, X, labels.tolist(), strict=True))
            if plan.removed:
                reports.append(model.engine.forget(list(plan.removed)))
            edits = edit(model.engine, model.held, plan, reports, in_flight=in_flight)
            if plan.added:
                recs = list(plan.added.values())
                X = np.stack([r.features for r in recs])
                y = np.array([r.label for r in recs])
                reports.append(model.engine.learn(X, y, ids=[r.record_id for r in recs]))
            reports.extend(certified(model.engine, model_id))
            result, health = self._publish_batch(model_id, model, plan, reports, edits)
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
        model.keep(new_seq, erased)
        if edits.kept_columns is not None:
            model.keep_columns(new_seq, *edits.kept_columns)
        if edits.kept_labels:
            model.keep_labels(new_seq, edits.kept_labels)
        for rid in plan.removed:
            model.held.pop(rid, None)
        model.held.update((rid, rec.subject_id) for rid, rec in plan.added.items())
        model.version, model.seq = result.version, new_seq
        model.extra = dict(result.metadata.extra)
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
            ", ".join(summary(r) for r in reports) or "unchanged",
        )

        tombstones = set(plan.dropped) | plan.erased | set(unsent)
        # a crash's corrections, unless this batch erased the record or corrected it again
        superseded = tombstones | set(plan.removed) | set(edits.republish)
        out = Outcome(
            model_id,
            published=result.notice(),
            receipts=list(result.receipts) + list(plan.announce.values()),
            tombstones=sorted(tombstones),
            republish=edits.events + self._corrected_again(model_id, uncorrected, superseded),
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

    def _corrected_again(
        self, model_id: str, unsent: dict[str, str], gone: set[str]
    ) -> list[RecordAdded]:
        """The corrected records a crash kept from the broker, as Redis holds them now,
        under the event ids their publication marked applied (reading them back learns
        nothing). The records in ``gone`` are left out: erased since (their tombstone is
        due instead) or corrected again by this batch."""
        ids = [rid for rid in sorted(unsent) if rid not in gone]
        if not ids:
            return []
        now = datetime.now(UTC)
        return [
            corrected_record(
                unsent[rec.record_id],
                model_id,
                rec.record_id,
                rec.subject_id,
                rec.features,
                rec.label,
                now,
            )
            for rec in self.store.records.get_many(model_id, ids)
            if rec is not None
        ]

    def _facts(self, model_id: str, ops: list[Op]) -> Facts:
        """What :func:`~pipeline.plan.plan_batch` needs from Redis for ``ops``."""
        forgets = [op.request for op in ops if isinstance(op, Forget)]
        request_ids = list(
            dict.fromkeys(op.request.request_id for op in ops if not isinstance(op, Learn))
        )
        stored = self.store.receipts.get_many(request_ids, model_id)
        final = {
            rid: rcpt
            for rid, rcpt in zip(request_ids, stored, strict=True)
            if rcpt and rcpt.status.final
        }
        subjects = {r.subject_id for r in forgets if r.subject_id is not None}
        learns = [(i, op) for i, op in enumerate(ops) if isinstance(op, Learn)]
        candidates = [
            Candidate(op.event.record_id, op.event.subject_id, produced_at(op.event, op.message))
            for _, op in learns
        ]
        suppressed = self.store.suppressions.suppressed(model_id, candidates)
        corrected = self._relabelled_before(model_id, candidates)
        suppressed = [a or b for a, b in zip(suppressed, corrected, strict=True)]
        return Facts(
            final=final,
            subject_records=self.store.records.subject_record_ids_many(model_id, subjects),
            seen=self._seen_events(model_id, [op.event.event_id for _, op in learns]),
            suppressed={i for (i, _), out in zip(learns, suppressed, strict=True) if out},
        )

    def _relabelled_before(self, model_id: str, candidates: list[Candidate]) -> list[bool]:
        """Per new record: produced at or before its label was corrected? Then it carries
        the old label (a replay of the records topic) and must never be learned."""
        if not candidates:
            return []
        client: Any = self.store.client
        times = client.hmget(
            self.store.keys.relabelled(model_id), [c.record_id for c in candidates]
        )
        return [
            t is not None and c.produced_at.timestamp() <= float(t)
            for c, t in zip(candidates, times, strict=True)
        ]

    def _seen_events(self, model_id: str, event_ids: list[str]) -> set[str]:
        if not event_ids:
            return set()
        client: Any = self.store.client
        scores = client.zmscore(self.store.keys.applied_events(model_id), event_ids)
        return {e for e, s in zip(event_ids, scores, strict=True) if s is not None}

    def _refuse(self, model_id: str, ops: list[Op], exc: NoEngineCheckpoint) -> Outcome:
        """A batch for a model the worker cannot change: each request closed ``rejected``
        with the reason, each message a dead letter, new records tombstoned."""
        out = _unknown(model_id, ops, exc, reason="unsupported_model")
        requests = {op.request.request_id: op.request.ts for op in ops if not isinstance(op, Learn)}
        out.receipts = self.store.receipts.close_many(
            model_id, requests, ReceiptStatus.REJECTED, reason=str(exc)
        )
        return out

    def _close_unchanged(self, model_id: str, model: HeldModel, plan: Plan) -> Outcome:
        """Requests that remove nothing: final receipts on the current version."""
        out = Outcome(
            model_id,
            receipts=list(plan.announce.values()),
            tombstones=sorted(set(plan.dropped)),
            rejected=plan.rejected,
            skipped=plan.skipped,
        )
        common = {
            "version": model.version,
            "method": "none",
            "certificate": float(model.engine.certificate_),
            "budget": float(model.engine.budget_),
        }
        groups: dict[tuple[ReceiptStatus, str], tuple[dict[str, Any], dict[str, Any]]] = {}
        for request_id, received in plan.received.items():
            status, fields = receipt_fields(plan, request_id, 0, {})
            key = (status, json.dumps(fields, sort_keys=True, default=str))
            groups.setdefault(key, (fields, {}))[1][request_id] = received
        for (status, _), (fields, requests) in groups.items():
            out.receipts += self.store.receipts.close_many(
                model_id, requests, status, **{**common, **fields}
            )
        return out

    def _publish_batch(
        self,
        model_id: str,
        model: HeldModel,
        plan: Plan,
        reports: list[UpdateReport],
        edits: Edits,
    ) -> tuple[PublishResult, ModelHealth]:
        engine = model.engine
        deleted = sum(1 for rid in plan.removed if rid not in plan.added)
        deleted += len(plan.erased_pending)
        extra = dict(model.extra)
        extra["deleted_since_fit"] = int(extra.get("deleted_since_fit", 0)) + deleted
        holdout = model.holdout  # without erased rows and the forgotten columns' values
        gone = (plan.subjects, plan.holdout_records)
        new_holdout = holdout.without(*gone, zero=list(plan.columns)) if holdout else None
        holdout = new_holdout or holdout
        metrics = holdout_score(engine, holdout)
        method = reports[0].method if reports else "none"
        new_seq = model.seq + len(plan.events) + len(plan.requests)
        pub = self.store.models.publication(model_id, model.version)
        pub.set_model(
            engine_spec(engine, method=method, seq=new_seq, holdout_metrics=metrics, extra=extra)
        )
        pub.add_records(plan.added.values())
        pub.erase_records(plan.removed, {r: model.held[r] for r in plan.removed})
        pub.tombstones(plan.erased)
        for request_id, n in plan.requests.items():
            status, fields = receipt_fields(plan, request_id, n, edits.methods)
            pub.receipt(request_id, status, received_at=plan.received[request_id], **fields)
        now = datetime.now(UTC)
        pub.update_records(edits.features, edits.labels, relabelled_at=now.timestamp())
        if edits.republish:
            subjects = ChainMap({r: rec.subject_id for r, rec in plan.added.items()}, model.held)
            edits.events = corrected_records(model_id, edits, subjects, new_seq, now)
            pub.corrections({ev.record_id: ev.event_id for ev in edits.events})
        pub.mark_events([*plan.events, *(ev.event_id for ev in edits.events)])
        pub.applied_seq(new_seq)
        pub.checkpoint(engine.state_dict()).retain(self.keep_versions)
        pub.erased_versions_grace(self.erased_versions_grace)
        if plan.columns or edits.labels:  # earlier versions used the columns, old labels
            pub.retire_earlier()
        if new_holdout is not None:
            pub.replace_holdout(new_holdout.fields())
        result = pub.commit()
        model.holdout = holdout
        health = ModelHealth(
            retrain_recommended=any(r.retrain_recommended for r in reports),
            score=next(iter(metrics.values()), None),
            baseline=FitBaseline.from_dict(extra.get("last_fit")),
            deleted_since_fit=int(extra["deleted_since_fit"]),
            class_scores=class_scores(metrics),
            first_class_scores=dict((extra.get("first_fit") or {}).get("class_scores", {})),
        )
        return result, health

    # ---- retrain triggers --------------------------------------------------------------
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

    # ---- the model cache ---------------------------------------------------------------
    def _load(self, model_id: str) -> HeldModel:
        current = self.store.models.current_version(model_id)
        if current == 0:
            raise UnknownModel(model_id)
        cached = self._models.get(model_id)
        if cached is not None and cached.version == current:
            return cached
        model = load(self.store, self.retraining, model_id)
        self._models[model_id] = model
        self.loads += 1
        return model

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
        """Bring a handed-back refit up to date and publish it (:mod:`pipeline.merge`).

        Returns ``None`` when nothing is waiting. If this worker cannot prove it kept
        every record erased since the snapshot (it restarted meanwhile), the result is
        discarded and a new ``RetrainRequested`` returned instead.
        """
        result = self.retraining.take_result(model_id)
        if result is None:
            return None
        return merge_refit(
            self.store,
            self.retraining,
            self._load(model_id),
            result,
            keep_versions=self.keep_versions,
            request_retrain=self.request_retrain,
        )


def _unknown(
    model_id: str, ops: list[Op], exc: Exception, reason: str = "unknown_model"
) -> Outcome:
    """A batch for a model that does not exist (or that the worker cannot change): dead
    letters, and its records' features tombstoned (they must not stay on the records
    topic)."""
    out = Outcome(model_id)
    for op in ops:
        if op.message is not None:
            out.rejected.append(Rejected(op.message, reason, str(exc)))
        if isinstance(op, Learn):
            out.tombstones.append(op.event.record_id)
    return out

"""The refit hand-back: a model refitted by the retrainer, brought up to date and published.

The retrainer refits a model on a snapshot taken at sequence S and hands the engine state
back through Redis (:class:`~pipeline.retraining.HandBack`); it never publishes. The
model's writer merges it (:func:`merge_refit`):

1. if the writer cannot show it kept every record erased since S (it restarted, or the
   model moved to it after S), the result is discarded and a new retrain requested;
2. the refit's records are rebuilt: those erased after S from the features the writer
   kept in memory (:meth:`~pipeline.held.HeldModel.keep`), the rest from Redis;
3. every record erased after S is forgotten, every label corrected after S corrected
   again, every feature column forgotten after S forgotten, every record added after S
   learned, and the engine refitted if the certificate ended over the budget (the
   snapshot's records are rebuilt as they were at S: the columns' values and the labels
   before the correction come from what the writer kept, Redis holding them changed);
4. the result is published (method ``"retrain"``) in one transaction that also clears the
   retrain marker and result.

So no published version holds a record whose deletion was acknowledged before it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import numpy as np

from pipeline.errors import PipelineError
from pipeline.events import RetrainCompleted, RetrainRequested
from pipeline.faults import crash_point
from pipeline.held import HeldModel, certified
from pipeline.ops import Outcome
from pipeline.retraining import HandBack, Retraining, engine_from_state
from pipeline.store.facade import Store
from pipeline.store.records import StoredRecord
from pipeline.training import engine_spec, holdout_score
from pipeline.unlearning.base import decode_ids

__all__ = ["merge_refit"]

log = logging.getLogger(__name__)


def merge_refit(
    store: Store,
    retraining: Retraining,
    model: HeldModel,
    result: HandBack,
    *,
    keep_versions: int,
    request_retrain: Callable[[str, Any], RetrainRequested],
) -> Outcome:
    """Merge ``result`` into ``model`` and publish it; see the module docstring.

    Parameters
    ----------
    store, retraining
    model : HeldModel
        The writer's model, updated in place once the merge is published.
    result : HandBack
        The refit, taken from Redis.
    keep_versions : int
        Versions kept per model.
    request_retrain : callable
        ``request_retrain(model_id, reason)``: a new request, when the result is discarded.

    Returns
    -------
    Outcome
        The published version and ``completed``; or, when discarded, ``retrain``.
    """
    model_id = result.model_id
    if model.retain_from is None:
        model.retain_from = model.seq
    S = result.snapshot_seq
    if S < model.retain_from:
        log.warning(
            "model %r: refit at seq %d predates what this worker kept (seq %d); "
            "discarding it and asking again",
            model_id,
            S,
            model.retain_from,
        )
        retraining.release(model_id, forget_rate_limit=True)
        model.drop_retained()
        return Outcome(model_id, retrain=request_retrain(model_id, result.reason))

    # the snapshot's records: erased after S -> the features kept in memory; else Redis
    snapshot_ids = [str(i) for i in decode_ids(str(result.state["record_ids_json"]))]
    kept = model.kept_after(S)
    from_store = [rid for rid in snapshot_ids if rid not in kept]
    stored = store.records.get_many(model_id, from_store)
    missing = [rid for rid, rec in zip(from_store, stored, strict=True) if rec is None]
    if missing:
        msg = (
            f"model {model_id!r}: {len(missing)} records of the refit's snapshot are "
            f"neither held nor kept (first {missing[0]!r}); cannot merge"
        )
        raise PipelineError(msg)
    by_id = {rec.record_id: rec for rec in stored if rec is not None}
    records = [
        _as_of(model, S, by_id[rid] if rid in by_id else StoredRecord(rid, "", *kept[rid]))
        for rid in snapshot_ids
    ]
    engine = engine_from_state(result.state, records, model.engine.n_features_in_)
    forget = [rid for rid in snapshot_ids if rid in kept]
    if forget:
        engine.forget(forget)
    corrected = model.relabelled_after(S)
    relabel = [rid for rid in snapshot_ids if rid in by_id and rid in corrected]
    if relabel:  # the snapshot had the labels the corrections replaced
        engine.relabel(relabel, [by_id[rid].label for rid in relabel])
    columns = [int(c) for c in getattr(model.engine, "forgotten_features_", ())]
    if columns:  # the columns forgotten after S (those before are no-ops)
        engine.forget_features(columns)
    still = set(snapshot_ids) - set(forget)
    learn_ids = sorted(rid for rid in model.held if rid not in still)
    if learn_ids:
        new = [r for r in store.records.get_many(model_id, learn_ids) if r is not None]
        engine.learn(
            np.stack([r.features for r in new]),
            np.array([r.label for r in new]),
            ids=[r.record_id for r in new],
        )
    certified(engine, model_id)
    metrics = holdout_score(engine, model.holdout)
    extra = dict(model.extra)
    extra.update(
        last_fit={
            "version": model.version + 1,
            "score": next(iter(metrics.values()), None),
            "n_records": len(snapshot_ids),
        },
        deleted_since_fit=len(forget),
        retrain={"reason": result.reason, "snapshot_seq": S, "duration_s": result.duration_s},
    )
    pub = store.models.publication(model_id, model.version)
    pub.set_model(
        engine_spec(engine, method="retrain", seq=model.seq, holdout_metrics=metrics, extra=extra)
    )
    pub.applied_seq(model.seq).checkpoint(engine.state_dict()).retain(keep_versions)
    crash_point("merge.commit", model_id)
    published = pub.retrain_done().commit()
    crash_point("merge.committed", model_id)
    model.engine, model.version, model.extra = engine, published.version, extra
    model.drop_retained()
    log.info(
        "model %r: merged the refit of seq %d as v%d (%d forgotten, %d relabelled, "
        "%d columns forgotten, %d learned since)",
        model_id,
        S,
        published.version,
        len(forget),
        len(relabel),
        len(columns),
        len(learn_ids),
    )
    completed = RetrainCompleted(
        event_id=f"retrained:{model_id}:{published.version}",
        model_id=model_id,
        version=published.version,
        snapshot_seq=S,
        applied_seq=model.seq,
        duration_s=result.duration_s,
        ts=datetime.now(UTC),
    )
    return Outcome(model_id, published=published.notice(), completed=completed)


def _as_of(model: HeldModel, seq: int, record: StoredRecord) -> StoredRecord:
    """``record`` as the snapshot at ``seq`` had it (:meth:`HeldModel.as_of`)."""
    x, label = model.as_of(seq, record.record_id, record.features, record.label)
    if x is record.features and label == record.label:
        return record
    return StoredRecord(record.record_id, record.subject_id, x, label)

"""A model as its writer holds it between batches, and the engine kept within its budget.

:func:`load` rebuilds a model from Redis (the engine checkpoint of the current version and
its records, the holdout); the writer caches it and reloads it only when ``current``
moved under it. While a retrain is in flight, :class:`HeldModel` also keeps the features
of the records erased since then (:meth:`HeldModel.keep`): the merge of the refit
(:mod:`pipeline.merge`) must forget them from a model fitted on a snapshot that still had
them, and Redis no longer does.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipeline.retraining import Retraining, engine_from_state
from pipeline.store.facade import Store
from pipeline.training import Engine, Holdout, load_holdout
from pipeline.unlearning import UpdateReport

__all__ = ["HeldModel", "certified", "load", "summary"]

log = logging.getLogger(__name__)

MAX_REFITS = 20
"""Refits in a row after which :func:`certified` publishes what the certificate says."""


@dataclass
class HeldModel:
    """A model as the worker holds it between batches.

    Attributes
    ----------
    engine : Engine
    version, seq : int
        The version it is, and the sequence number of the last event it applied.
    held : dict of str to str
        Record id to subject id of every record the version holds.
    extra : dict
        The version's metadata ``extra`` (fit baselines, deletions since the last fit).
    holdout : Holdout or None
    retained : list of (seq, record id, features, label)
        Records erased while a retrain is in flight, tagged with the sequence number of the
        version that erased them.
    retain_from : int or None
        The sequence number from which :attr:`retained` is complete (None: no retrain is
        in flight as far as this worker knows).
    retained_columns : list of (seq, columns, {record id: values})
        While a retrain is in flight, the values every held record had in the columns a
        version forgot (Redis holds them zeroed since).
    retained_labels : list of (seq, record id, label)
        While a retrain is in flight, the label a record had before a version relabelled it.
    """

    engine: Engine
    version: int
    seq: int
    held: dict[str, str]
    extra: dict[str, Any]
    holdout: Holdout | None
    retained: list[tuple[int, str, np.ndarray, Any]] = field(default_factory=list)
    retain_from: int | None = None
    retained_columns: list[tuple[int, tuple[int, ...], dict[str, np.ndarray]]] = field(
        default_factory=list
    )
    retained_labels: list[tuple[int, str, Any]] = field(default_factory=list)

    def track_retrain(self, in_flight: bool) -> None:
        """Keep erased features from now on while a retrain is in flight; else drop them."""
        if not in_flight:
            self.drop_retained()
        elif self.retain_from is None:
            self.retain_from = self.seq

    def drop_retained(self) -> None:
        """Forget the kept features: the refit was merged, discarded, or none is running."""
        self.retained.clear()
        self.retained_columns.clear()
        self.retained_labels.clear()
        self.retain_from = None

    def keep_columns(
        self, seq: int, columns: tuple[int, ...], values: dict[str, np.ndarray]
    ) -> None:
        """Keep the values the held records had in ``columns``, forgotten by version ``seq``."""
        self.retained_columns.append((seq, columns, values))

    def keep_labels(self, seq: int, labels: dict[str, Any]) -> None:
        """Keep the labels records had before version ``seq`` corrected them."""
        self.retained_labels.extend((seq, rid, label) for rid, label in labels.items())

    def as_of(self, seq: int, record_id: str, x: np.ndarray, label: Any) -> tuple[np.ndarray, Any]:
        """A record's features and label as they were at ``seq``: the columns forgotten and
        the label corrected after ``seq`` put back from what was kept."""
        restored = x
        for tag, columns, values in self.retained_columns:
            if tag > seq and record_id in values:
                if restored is x:
                    restored = np.array(x, dtype=np.float64)
                restored[list(columns)] = values[record_id]
        for tag, rid, old in self.retained_labels:
            if tag > seq and rid == record_id:
                return restored, old  # the first correction after seq holds the old label
        return restored, label

    def relabelled_after(self, seq: int) -> set[str]:
        """Record ids whose label a version after ``seq`` corrected."""
        return {rid for tag, rid, _ in self.retained_labels if tag > seq}

    def keep(self, seq: int, erased: list[tuple[str, np.ndarray, Any]]) -> None:
        """Keep the features of records the version ``seq`` erased, for the merge."""
        self.retained.extend((seq, rid, x, label) for rid, x, label in erased)

    def kept_after(self, seq: int) -> dict[str, tuple[np.ndarray, Any]]:
        """Features and label of each record kept and erased after ``seq``."""
        kept: dict[str, tuple[np.ndarray, Any]] = {}
        for tag, rid, x, label in self.retained:
            if tag > seq and rid not in kept:
                kept[rid] = (x, label)
        return kept


def load(store: Store, retraining: Retraining, model_id: str) -> HeldModel:
    """The current version of ``model_id`` from Redis, engine rebuilt from its checkpoint
    (the caller has checked that the model exists)."""
    snapshot = retraining.snapshot(model_id)
    meta = store.models.metadata(model_id, snapshot.version)
    engine = engine_from_state(snapshot.state, snapshot.records, meta.n_features)
    model = HeldModel(
        engine=engine,
        version=snapshot.version,
        seq=meta.seq,
        held={r.record_id: r.subject_id for r in snapshot.records},
        extra=dict(meta.extra),
        holdout=load_holdout(store, model_id),
    )
    log.info(
        "loaded model %r v%d (%d records, seq %d)",
        model_id,
        model.version,
        len(model.held),
        model.seq,
    )
    return model


def certified(engine: Engine, model_id: str) -> list[UpdateReport]:
    """Refit in place when an update left the certificate over the budget.

    The budget bounds what Guo et al.'s Theorem 3 certifies: a version over it would
    void the guarantee of every earlier deletion, so it is never published. Normally the
    policy asks the retrainer well before (``retrain_recommended`` looks one batch ahead);
    this catches a batch that overshoots at once, such as records far from the data.

    One refit is not always enough: with poisoned records (features far from the data,
    labels flipped) the engine's Newton loop can stop while the gradient residual is still
    thousands of times the budget (tests/reliability/test_abuse.py); each further warm
    refit goes on from there, so refit until the certificate is within the budget (at most
    :data:`MAX_REFITS` times, then publish what the certificate says, logged as an error).
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
    while float(engine.certificate_) > budget and len(reports) < MAX_REFITS:
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


def summary(report: UpdateReport) -> str:
    """``fisher 2.1 ms`` (``, curvature recomputed`` when it was), for the batch log line."""
    recomputed = ", curvature recomputed" if report.curvature_recomputed else ""
    return f"{report.method} {report.seconds * 1e3:.1f} ms{recomputed}"

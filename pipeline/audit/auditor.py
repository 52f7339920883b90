"""``audit``: every part of an audit of one model version, its report stored and its gauges
set; what ``unlearn audit MODEL [--request ID] [--reference]`` runs."""

from __future__ import annotations

import time
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from numpy.typing import ArrayLike

from pipeline.audit.certificate import certificate_part
from pipeline.audit.disparity import disparity
from pipeline.audit.erasure import erasure_part
from pipeline.audit.integrity import integrity_part
from pipeline.audit.membership import MEMBERSHIP_TOLERANCE, membership_of
from pipeline.audit.reference import LinearModel, retrained_reference
from pipeline.audit.report import AuditReport, Finding, PartReport, save_report
from pipeline.audit.snapshot import Snapshot, find_orphans, read_snapshot
from pipeline.errors import InvalidInput
from pipeline.events import DeletionRequested
from pipeline.topics import Topics

if TYPE_CHECKING:
    from pipeline.metrics import Metrics
    from pipeline.store.facade import Store

__all__ = ["audit"]


def audit(
    store: Store,
    model_id: str,
    request_id: str | None = None,
    bootstrap: str | None = None,
    topic_prefix: str = "",
    *,
    kafka_config: Mapping[str, Any] | None = None,
    request: DeletionRequested | None = None,
    reference: bool = False,
    erased: tuple[ArrayLike, ArrayLike] | None = None,
    unseen: tuple[ArrayLike, ArrayLike] | None = None,
    lira: bool = True,
    save: bool = True,
    metrics: Metrics | None = None,
) -> AuditReport:
    """Audit the current version of ``model_id`` (and a deletion request) from stored state.

    Parameters
    ----------
    store : Store
        A writer's store (the audit saves its report; ``save=False`` only reads).
    model_id : str
    request_id : str, optional
        Also audit this deletion request's erasure, in every model its receipts name.
    bootstrap : str, optional
        The broker: read the request's event on ``unlearn.deletions`` and the tombstones on
        ``unlearn.records``. Without it the erasure part checks what Redis shows.
    topic_prefix : str
        ``UNLEARN_TOPIC_PREFIX``.
    kafka_config : mapping, optional
        Security options for kafka-python (``Settings.kafka_config()``).
    request : DeletionRequested, optional
        The request event, when the caller has it (instead of reading the topic).
    reference : bool
        Refit a reference model from the held records with the checkpoint's objective (a
        full refit: the slow part) and compare the published version's accuracy with it,
        overall and per class (the disparity part). Implied by ``erased``.
    erased, unseen : (X, y), optional
        The erased records' features and labels, and never-seen records (default: the
        holdout): adds the membership part and the disparity on the erased data. Tests and
        benchmarks only.
    lira : bool
        With ``erased``: also run the LiRA attack (shadow refits; bounded, see
        :mod:`pipeline.audit.lira`).
    save : bool
        Store the report's JSON with the version (``KeySpace.audits``).
    metrics : Metrics, optional
        Set the ``unlearn_audit_*`` gauges of this process.

    Returns
    -------
    AuditReport

    Raises
    ------
    UnknownModel, UnknownRequest
        Nothing stored under that model or request id.
    """
    start = time.perf_counter()
    audited_at = datetime.now(UTC)
    snap = read_snapshot(store, model_id)
    orphans = find_orphans(store, model_id, set(snap.ids))
    parts = [certificate_part(snap), integrity_part(snap, orphans)]
    if request_id is not None:
        parts.append(
            erasure_part(
                store,
                request_id,
                snap,
                {snap.model_id: orphans},
                request=request,
                bootstrap=bootstrap,
                topics=Topics(topic_prefix),
                kafka_config=kafka_config,
            )
        )
    else:
        parts.append(
            PartReport(
                "erasure",
                (Finding("request", None, "no request given: audit one with --request ID"),),
            )
        )
    ref = _reference(snap) if reference or erased is not None else None
    if erased is not None and isinstance(ref, LinearModel):
        parts.append(
            membership_of(snap, erased, unseen, MEMBERSHIP_TOLERANCE, reference=ref, lira=lira)
        )
    else:
        parts.append(
            PartReport(
                "membership",
                (
                    Finding(
                        "loss_threshold",
                        None,
                        "needs the erased records' features, which the pipeline deleted: "
                        "tests and benchmarks run it (pipeline.audit.membership)"
                        if erased is None
                        else str(ref),
                    ),
                ),
            )
        )
    parts.append(_disparity_part(snap, ref, erased))
    report = AuditReport(
        model_id=model_id,
        version=snap.version.version,
        audited_at=audited_at,
        parts=tuple(parts),
        request_id=request_id,
        seconds=time.perf_counter() - start,
    )
    if save:
        save_report(store, report)
    if metrics is not None:
        metrics.audited(report)
    return report


def _reference(snap: Snapshot) -> LinearModel | str:
    """The retrained reference, or why there is none (no checkpoint, unreadable records)."""
    if snap.federated:
        return "federated: the records stay with the clients, no reference can be refitted"
    try:
        return retrained_reference(snap)
    except InvalidInput as exc:
        return str(exc)


def _disparity_part(
    snap: Snapshot, ref: LinearModel | str | None, erased: tuple[ArrayLike, ArrayLike] | None
) -> PartReport:
    if ref is None:
        return PartReport(
            "disparity",
            (
                Finding(
                    "acc_err",
                    None,
                    "needs a reference refitted from the held records: audit with "
                    "--reference (a full refit)",
                ),
            ),
        )
    if isinstance(ref, str):
        return PartReport("disparity", (Finding("acc_err", None, ref),))
    holdout = snap.holdout
    if holdout is None or not holdout.ids:
        return PartReport("disparity", (Finding("acc_err", None, "the model has no holdout"),))
    return disparity(
        LinearModel.from_version(snap.version), ref, holdout.X, holdout.y, erased=erased
    )

"""What flows between the worker's stages: operations in, outcomes out.

The intake stage (:mod:`pipeline.routing`) turns the requests of ``unlearn.deletions`` into
operations per model: :class:`Forget` (a deletion), :class:`ForgetFeatures` (a feature
removal), :class:`Relabel` (corrected labels); the records topic gives :class:`Learn`
operations. A model's writer
(:class:`~pipeline.applier.Applier`) applies them and returns an :class:`Outcome`, which
:func:`pipeline.notices.notices` turns into the messages the worker sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.events import (
    DeletionRequested,
    FeatureRemovalRequested,
    ModelOps,
    ModelPublished,
    Receipt,
    RecordAdded,
    RelabelRequested,
    Request,
    RetrainCompleted,
    RetrainRequested,
)
from pipeline.intake import Message, Rejected
from pipeline.unlearning import UpdateReport

__all__ = [
    "Forget",
    "ForgetFeatures",
    "Learn",
    "Op",
    "Outcome",
    "Relabel",
    "RequestOp",
    "request_op",
]


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


@dataclass(frozen=True)
class ForgetFeatures:
    """A feature-removal request for one model, with the message it came from."""

    request: FeatureRemovalRequested
    message: Message | None = None


@dataclass(frozen=True)
class Relabel:
    """A label-correction request for one model, with the message it came from."""

    request: RelabelRequested
    message: Message | None = None


RequestOp = Forget | ForgetFeatures | Relabel
"""An operation from ``unlearn.deletions``: it has a ``request`` with a ``request_id`` and
gets a receipt."""
Op = Forget | ForgetFeatures | Relabel | Learn


def request_op(request: Request, message: Message | None = None) -> RequestOp:
    """The operation of a decoded request."""
    if isinstance(request, FeatureRemovalRequested):
        return ForgetFeatures(request, message)
    if isinstance(request, RelabelRequested):
        return Relabel(request, message)
    return Forget(request, message)


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
    republish : list of RecordAdded
        Records the batch corrected (a relabel; a feature removal, or a new record that
        carried a forgotten column), sent again on ``unlearn.records`` under their key so
        that compaction drops the message with the old label or the column's value.
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
    republish: list[RecordAdded] = field(default_factory=list)
    rejected: list[Rejected[Any]] = field(default_factory=list)
    retrain: RetrainRequested | None = None
    completed: RetrainCompleted | None = None
    reports: list[UpdateReport] = field(default_factory=list)
    skipped: int = 0
    held_back: tuple[str, str] | None = None
    forward: list[ModelOps] = field(default_factory=list)

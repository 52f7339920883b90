"""What flows between the worker's stages: operations in, outcomes out.

The intake stage (:mod:`pipeline.routing`) turns deletion requests into :class:`Forget`
operations per model; the records topic gives :class:`Learn` operations. A model's writer
(:class:`~pipeline.applier.Applier`) applies them and returns an :class:`Outcome`, which
:func:`pipeline.notices.notices` turns into the messages the worker sends.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pipeline.events import (
    DeletionRequested,
    ModelOps,
    ModelPublished,
    Receipt,
    RecordAdded,
    RetrainCompleted,
    RetrainRequested,
)
from pipeline.intake import Message, Rejected
from pipeline.unlearning import UpdateReport

__all__ = ["Forget", "Learn", "Op", "Outcome"]


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

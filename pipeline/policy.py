"""When to fall back from incremental updates to a full retrain (DESIGN section 5).

Any of these triggers a retrain of one model, each with its reason (the ``reason`` of
``RetrainRequested``):

``budget``
    The engine says the certified budget is spent, or the next batch like the last
    would spend it (``UpdateReport.retrain_recommended``).
``accuracy``
    Holdout accuracy (R^2 for ridge) fell by more than ``accuracy_drop`` since the last
    full fit: the incremental updates have drifted from what a retrain would give.
``class_accuracy``
    The bias watch: some class's holdout accuracy fell by more than
    ``class_accuracy_drop`` against the model's first version, even if the overall
    accuracy held (unlearning "should not introduce new biases"; per-class accuracy as in
    Mahadevan & Mathioudakis, 2022).
``deleted_fraction``
    More than ``class_accuracy``
    The bias watch: some class's holdout accuracy fell by more than
    ``class_accuracy_drop`` against the model's first version, even if the overall
    accuracy held (unlearning "should not introduce new biases"; per-class accuracy as in
    Mahadevan & Mathioudakis, 2022).
``deleted_fraction`` of the records the last full fit saw were deleted
    since; the approximation error of the updates grows with the removed mass.
``schedule``
    A cron expression (:class:`Schedule`) fired.
``operator``
    Someone asked for it (``unlearn retrain MODEL``).

The policy only decides; coalescing (one retrain in flight per model absorbs further
triggers) and rate limiting are in :mod:`pipeline.retraining`, where the retrainer starts
a fit. Every decision is logged with its reason and counted by the worker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from croniter import croniter

from pipeline.errors import ConfigError
from pipeline.events import RetrainReason  # the reasons a RetrainRequested carries

__all__ = ["FitBaseline", "ModelHealth", "RetrainPolicy", "RetrainReason", "Schedule"]


@dataclass(frozen=True)
class FitBaseline:
    """What the last full fit of a model looked like (kept in each version's metadata).

    Attributes
    ----------
    version : int
        The version that fit produced.
    score : float or None
        Its holdout accuracy (R^2 for ridge); ``None`` without a holdout set.
    n_records : int
        Records it was fitted on.
    """

    version: int
    score: float | None
    n_records: int

    def to_dict(self) -> dict[str, float | int | None]:
        return {"version": self.version, "score": self.score, "n_records": self.n_records}

    @classmethod
    def from_dict(cls, data: dict[str, float | int | None] | None) -> FitBaseline | None:
        if not data:
            return None
        score = data.get("score")
        return cls(
            version=int(data.get("version") or 1),
            score=None if score is None else float(score),
            n_records=int(data.get("n_records") or 0),
        )


@dataclass(frozen=True)
class ModelHealth:
    """A model's state after an update, as the policy sees it.

    Attributes
    ----------
    retrain_recommended : bool
        From the engine's ``UpdateReport``.
    score : float or None
        Holdout accuracy (R^2 for ridge) of the new version.
    baseline : FitBaseline or None
        The last full fit.
    deleted_since_fit : int
        Records deleted since that fit.
    class_scores : dict of str to float
        Holdout accuracy on each class's rows, by label, of the new version.
    first_class_scores : dict of str to float
        The same for the model's first version (the bias watch's reference).
    """

    retrain_recommended: bool
    score: float | None
    baseline: FitBaseline | None
    deleted_since_fit: int
    class_scores: dict[str, float] = field(default_factory=dict)
    first_class_scores: dict[str, float] = field(default_factory=dict)

    def worst_class_drop(self) -> tuple[str, float] | None:
        """The class whose accuracy fell most since the first version, and by how much."""
        drops = [
            (label, first - self.class_scores[label])
            for label, first in self.first_class_scores.items()
            if label in self.class_scores
        ]
        return max(drops, key=lambda d: d[1]) if drops else None


@dataclass(frozen=True)
class RetrainPolicy:
    """Thresholds of the automatic triggers.

    Parameters
    ----------
    accuracy_drop : float
        Retrain when the holdout score is more than this below the last full fit's.
    deleted_fraction : float
        Retrain when more than this fraction of the last fit's records was deleted.
    class_accuracy_drop : float
        Retrain when any class's holdout accuracy is more than this below the first
        version's.
    """

    accuracy_drop: float = 0.02
    deleted_fraction: float = 0.1
    class_accuracy_drop: float = 0.05

    def decide(self, health: ModelHealth) -> RetrainReason | None:
        """The first trigger that fires (budget, accuracy, class accuracy, deleted
        fraction), or ``None``."""
        if health.retrain_recommended:
            return "budget"
        base = health.baseline
        if base is None:
            return None
        if (
            base.score is not None
            and health.score is not None
            and base.score - health.score > self.accuracy_drop
        ):
            return "accuracy"
        worst = health.worst_class_drop()
        if worst is not None and worst[1] > self.class_accuracy_drop:
            return "class_accuracy"
        if base.n_records > 0 and health.deleted_since_fit > self.deleted_fraction * base.n_records:
            return "deleted_fraction"
        return None


class Schedule:
    """A cron expression (five fields, as crontab) for scheduled retrains.

    Parameters
    ----------
    expression : str
        E.g. ``"0 3 * * *"`` (03:00 every day).

    Raises
    ------
    ConfigError
        The expression is not valid cron.
    """

    def __init__(self, expression: str) -> None:
        if not croniter.is_valid(expression):
            msg = (
                f"UNLEARN_RETRAIN_CRON={expression!r} is not a cron expression: use five "
                "fields, e.g. '0 3 * * *' for 03:00 every day"
            )
            raise ConfigError(msg)
        self.expression = expression

    def next_after(self, moment: datetime) -> datetime:
        """The first firing time strictly after ``moment`` (same time zone)."""
        nxt: datetime = croniter(self.expression, moment).get_next(datetime)
        return nxt

    def due(self, last: datetime, now: datetime) -> bool:
        """True if the schedule fired in ``(last, now]``."""
        return self.next_after(last) <= now

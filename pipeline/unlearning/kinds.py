"""The model kinds, in one registry: what training, retraining, the worker and the CLI read.

A kind (:class:`EngineKind`) names its engine class, whose constructor is its parameter
schema (:meth:`~pipeline.unlearning.base.BaseUnlearner.param_names`); it says how a record's
label is checked before the engine learns it, what its holdout score is called and which
classes a published version lists. Checkpoints name their kind (``state["kind"]``, the
engine's ``kind``), so a checkpoint resumes with :func:`kind_of_state`.

Adding a kind is a new engine module (a :class:`~pipeline.unlearning.base.BaseUnlearner`
with its ``kind``) and one entry in :data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from numpy.typing import ArrayLike

from pipeline.errors import InvalidInput
from pipeline.unlearning.base import BaseUnlearner
from pipeline.unlearning.logistic import LogisticUnlearner
from pipeline.unlearning.ridge import RidgeUnlearner

__all__ = ["KINDS", "EngineKind", "kind_named", "kind_of", "kind_of_state"]

#: ``check(engine, label, model_id)``: None if the engine can learn ``label``, else
#: ``(reason, rest)``: the intake rejection reason and the rest of the sentence "record R
#: has label L...", saying what is wrong and the fix.
LabelCheck = Callable[[Any, Any, str], tuple[str, str] | None]

E = TypeVar("E", bound=BaseUnlearner)


def _class_label(engine: Any, label: Any, model_id: str) -> tuple[str, str] | None:
    classes = engine.classes_.tolist()
    if isinstance(label, str) != isinstance(classes[0], str) or label not in classes:
        rest = (
            f", not one of model {model_id!r}'s classes {classes}: refit the model to add a class"
        )
        return "unknown_class", rest
    return None


def _number_label(engine: Any, label: Any, model_id: str) -> tuple[str, str] | None:
    if isinstance(label, str):
        return "schema", f": model {model_id!r} is a ridge regressor and needs a number"
    return None


@dataclass(frozen=True)
class EngineKind(Generic[E]):
    """One model kind.

    Attributes
    ----------
    name : str
        What checkpoints, versions and the CLI call it (``--kind``).
    engine : type
        The engine class; its constructor's parameters are the kind's parameters.
    score : str
        Name of the holdout metric (``engine.score``): ``"accuracy"`` or ``"r2"``.
    classifier : bool
        Labels are classes (a version lists them) rather than numbers.
    label_check : callable
        See :data:`LabelCheck`.
    """

    name: str
    engine: type[E]
    score: str
    classifier: bool
    label_check: LabelCheck

    def params(self) -> tuple[str, ...]:
        """The kind's parameters: its engine constructor's, in declaration order."""
        return self.engine.param_names()

    def select(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """The ``options`` that are parameters of this kind (the CLI offers every kind's)."""
        return {name: options[name] for name in self.params() if name in options}

    def build(self, **params: Any) -> E:
        """A fresh engine; raises :class:`InvalidInput` naming a parameter it does not take."""
        unknown = sorted(set(params) - set(self.params()))
        if unknown:
            msg = (
                f"model kind {self.name!r} takes no parameter(s) {unknown}; its parameters "
                f"are {list(self.params())}"
            )
            raise InvalidInput(msg)
        return self.engine(**params)

    def resume(
        self,
        state: Mapping[str, Any],
        X: ArrayLike | None = None,
        y: ArrayLike | None = None,
        ids: Sequence[Hashable] | None = None,
    ) -> E:
        """The engine of a checkpoint (:meth:`~pipeline.unlearning.base.BaseUnlearner.
        from_state_dict`)."""
        return self.engine.from_state_dict(state, X, y, ids)

    def classes(self, engine: E) -> list[Any] | None:
        """The classes a published version lists: the engine's for a classifier, else
        None."""
        return engine.classes_.tolist() if self.classifier else None

    def check_label(
        self, engine: E, label: Any, *, record_id: str, model_id: str
    ) -> tuple[str, str] | None:
        """None if ``engine`` can learn a record with ``label``; else the intake rejection
        reason and a message naming the record, the label and the fix."""
        problem = self.label_check(engine, label, model_id)
        if problem is None:
            return None
        reason, rest = problem
        return reason, f"record {record_id!r} has label {label!r}{rest}"


#: Every model kind, by name.
KINDS: dict[str, EngineKind[Any]] = {
    kind.name: kind
    for kind in (
        EngineKind("logistic", LogisticUnlearner, "accuracy", True, _class_label),
        EngineKind("ridge", RidgeUnlearner, "r2", False, _number_label),
    )
}


def kind_named(name: str) -> EngineKind[Any]:
    """The kind called ``name``; raises :class:`InvalidInput` naming it and the choices."""
    try:
        return KINDS[name]
    except KeyError:
        msg = f"model kind {name!r} is not one of {', '.join(map(repr, KINDS))}"
        raise InvalidInput(msg) from None


def kind_of(engine: BaseUnlearner) -> EngineKind[Any]:
    """The kind of an engine."""
    return kind_named(engine.kind)


def kind_of_state(state: Mapping[str, Any]) -> EngineKind[Any]:
    """The kind a checkpoint names (``state["kind"]``)."""
    return kind_named(str(state.get("kind")))

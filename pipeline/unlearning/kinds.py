"""The model kinds, in one registry: what training, retraining, the worker and the CLI read.

A kind (:class:`EngineKind`) names its engine class, whose constructor is its parameter
schema (:meth:`~pipeline.unlearning.base.BaseUnlearner.param_names`); it says how a record's
label is checked before the engine learns it, what its holdout score is called and how it
is computed, which classes a published version lists, how a published version's linear
scores ``X @ coef.T + intercept`` become predictions, which scikit-learn estimator is its
uncertified reference, and which federated server trains it. Checkpoints and published
versions name their kind (``state["kind"]``, the engine's ``kind``, ``VersionMetadata.kind``),
so a checkpoint resumes with :func:`kind_of_state` and a version is served by its entry.

Nothing outside this module compares a kind's name: the store, the SDK's predictor, the
tuning, the federation and the CLI read the entry. Adding a kind is a new engine module (a
:class:`~pipeline.unlearning.base.BaseUnlearner` with its ``kind``), optionally a federated
server (a :class:`~pipeline.federated.server.FederatedServer`), and one entry in
:data:`KINDS`.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.errors import InvalidInput
from pipeline.unlearning.base import BaseUnlearner
from pipeline.unlearning.logistic import LogisticUnlearner
from pipeline.unlearning.loss import predicted_index
from pipeline.unlearning.ridge import RidgeUnlearner

__all__ = ["KINDS", "EngineKind", "known_kind", "kind_named", "kind_of", "kind_of_state"]

#: ``check(engine, label, model_id)``: None if the engine can learn ``label``, else
#: ``(reason, rest)``: the intake rejection reason and the rest of the sentence "record R
#: has label L...", saying what is wrong and the fix.
LabelCheck = Callable[[Any, Any, str], tuple[str, str] | None]

#: ``predict(scores, classes)``: predictions from the linear scores ``X @ coef.T +
#: intercept`` (shape (n_samples,) or (n_samples, K)) and the version's classes (None for
#: a regressor).
Predict = Callable[[NDArray[np.float64], NDArray[Any] | None], NDArray[Any]]

#: ``metric(predicted, truth)``: the holdout score named :attr:`EngineKind.score`.
Metric = Callable[[NDArray[Any], NDArray[Any]], float]

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


def _most_likely_class(scores: NDArray[np.float64], classes: NDArray[Any] | None) -> NDArray[Any]:
    assert classes is not None  # a classifier's version always lists its classes
    return classes[predicted_index(scores)]


def _the_scores(scores: NDArray[np.float64], classes: NDArray[Any] | None) -> NDArray[Any]:
    return scores


def _accuracy(predicted: NDArray[Any], truth: NDArray[Any]) -> float:
    """Mean accuracy."""
    return float(np.mean(predicted == np.asarray(truth)))


def _r2(predicted: NDArray[Any], truth: NDArray[Any]) -> float:
    """Coefficient of determination R^2 (0 when the truth is constant), per column summed."""
    y = np.asarray(truth).astype(np.float64)
    ss_res = float(np.sum((y - predicted) ** 2))
    ss_tot = float(np.sum((y - y.mean(axis=0)) ** 2))
    return 1.0 - ss_res / ss_tot if ss_tot > 0.0 else 0.0


def _sklearn_logistic() -> Any:
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(max_iter=1000)


def _sklearn_ridge() -> Any:
    from sklearn.linear_model import Ridge

    return Ridge()


# The federated servers import the store's neighbours; they are looked up when a federation
# is built, so that this module stays importable from the store.
def _federated_logistic() -> type[Any]:
    from pipeline.federated.logistic import FederatedLogistic

    return FederatedLogistic


def _federated_ridge() -> type[Any]:
    from pipeline.federated.ridge import FederatedRidge

    return FederatedRidge


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
        A classifier's published version has ``predict_proba``.
    label_check : callable
        See :data:`LabelCheck`.
    predict : callable
        See :data:`Predict`: class labels (the most likely class) or the scores themselves.
    metric : callable
        See :data:`Metric`: how the score named ``score`` is computed from predictions.
    baseline : callable
        A fresh, unfitted scikit-learn estimator: the uncertified default the CLI compares
        the published model with.
    federated : callable or None
        The :class:`~pipeline.federated.server.FederatedServer` subclass that trains this
        kind across clients (imported when called); None when it has none.
    """

    name: str
    engine: type[E]
    score: str
    classifier: bool
    label_check: LabelCheck
    predict: Predict
    metric: Metric
    baseline: Callable[[], Any]
    federated: Callable[[], type[Any]] | None = None

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

    def federated_server(self) -> type[Any]:
        """The federated server class of this kind; raises :class:`InvalidInput` if none."""
        if self.federated is None:
            msg = f"model kind {self.name!r} cannot be trained by a federation"
            raise InvalidInput(msg)
        return self.federated()


#: Every model kind, by name.
KINDS: dict[str, EngineKind[Any]] = {
    kind.name: kind
    for kind in (
        EngineKind(
            name="logistic",
            engine=LogisticUnlearner,
            score="accuracy",
            classifier=True,
            label_check=_class_label,
            predict=_most_likely_class,
            metric=_accuracy,
            baseline=_sklearn_logistic,
            federated=_federated_logistic,
        ),
        EngineKind(
            name="ridge",
            engine=RidgeUnlearner,
            score="r2",
            classifier=False,
            label_check=_number_label,
            predict=_the_scores,
            metric=_r2,
            baseline=_sklearn_ridge,
            federated=_federated_ridge,
        ),
    )
}


def known_kind(name: str) -> str:
    """``name`` if it is a kind in :data:`KINDS` (a validator for stored and sent kinds);
    raises ``ValueError`` naming it and the choices."""
    if name not in KINDS:
        msg = f"model kind {name!r} is not one of {', '.join(map(repr, KINDS))}"
        raise ValueError(msg)
    return name


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

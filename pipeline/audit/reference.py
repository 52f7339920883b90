"""The models an audit compares: the published coefficients, and a retrained reference.

:class:`LinearModel` holds a linear model's coefficients, enough to score, predict and
compute each record's loss and LiRA confidence; :func:`retrained_reference` fits the
reference the membership and disparity parts compare the published version with: the
optimum of the checkpoint's objective (same lambda, same perturbation b) on the records the
model holds, as a retrain from scratch would reach. The model kind's engine and whether it
classifies come from the kind registry (:mod:`pipeline.unlearning.kinds`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from pipeline.audit.certificate import label_index
from pipeline.audit.snapshot import Snapshot, records_usable
from pipeline.errors import InvalidInput
from pipeline.store.versions import ModelVersion
from pipeline.unlearning.base import BaseUnlearner
from pipeline.unlearning.kinds import kind_named, kind_of, kind_of_state
from pipeline.unlearning.loss import class_probabilities, predicted_index

__all__ = ["LinearModel", "retrained_reference"]

Array = NDArray[np.float64]
_TINY = 1e-300


@dataclass(frozen=True)
class LinearModel:
    """A linear model's published coefficients.

    ``coef`` has shape (d,) (binary logistic, ridge) or (K, d) (one-vs-rest); ``classes``
    are a classifier's labels, in the columns' order (None for a regressor).
    """

    kind: str
    coef: Array
    intercept: Array
    classes: list[Any] | None = None

    @classmethod
    def from_version(cls, version: ModelVersion) -> LinearModel:
        meta = version.metadata
        return cls(meta.kind, version.coef, version.intercept, meta.classes)

    @classmethod
    def from_engine(cls, engine: BaseUnlearner) -> LinearModel:
        kind = kind_of(engine)
        coef = np.asarray(engine.coef_, dtype=np.float64)  # type: ignore[attr-defined]
        intercept = np.asarray(engine.intercept_, dtype=np.float64)  # type: ignore[attr-defined]
        if kind.classifier and coef.ndim == 1:
            intercept = intercept.reshape(-1)[0]
        return cls(kind.name, coef, np.asarray(intercept), kind.classes(engine))

    @property
    def classifier(self) -> bool:
        return kind_named(self.kind).classifier

    def scores(self, X: ArrayLike) -> Array:
        """Decision scores: shape (n,) (binary, ridge) or (n, K) (one-vs-rest)."""
        Xa = np.asarray(X, dtype=np.float64)
        return np.asarray(Xa @ np.asarray(self.coef).T + np.asarray(self.intercept))

    def predict(self, X: ArrayLike) -> NDArray[Any]:
        """Predicted labels (the most likely class) or values (a regressor)."""
        s = self.scores(X)
        if not self.classifier:
            return s
        return np.asarray(self.classes or [])[predicted_index(s)]

    def losses(self, X: ArrayLike, y: ArrayLike) -> Array:
        """Per-record loss: cross-entropy of the true class (logistic; one-vs-rest with the
        normalised sigmoids the model predicts with) or squared error (ridge)."""
        s = self.scores(X)
        if not self.classifier:
            return np.asarray((s - np.asarray(y, dtype=np.float64)) ** 2, dtype=np.float64)
        return np.asarray(-np.log(np.clip(self._true_class(s, y), _TINY, 1.0)))

    def confidence(self, X: ArrayLike, y: ArrayLike) -> Array:
        r"""LiRA's per-record statistic (Carlini et al. 2022, sec. 4.1): the logit of the true
        class's probability, :math:`\phi = \log p_y - \log(1 - p_y)`, which is close to
        Gaussian over training sets; a regressor's is minus the squared error."""
        s = self.scores(X)
        if not self.classifier:
            return -np.asarray((s - np.asarray(y, dtype=np.float64)) ** 2, dtype=np.float64)
        p = np.clip(self._true_class(s, y), _TINY, 1.0)
        q = np.clip(1.0 - p, _TINY, 1.0)
        return np.asarray(np.log(p) - np.log(q))

    def _true_class(self, scores: Array, y: ArrayLike) -> Array:
        probs = class_probabilities(scores)
        idx = label_index(list(np.asarray(y).tolist()), self.classes or [])
        return np.asarray(probs[np.arange(len(idx)), idx], dtype=np.float64)


def retrained_reference(snap: Snapshot) -> LinearModel:
    """A model fitted from scratch on the held records with the checkpoint's objective.

    Raises
    ------
    InvalidInput
        The version has no checkpoint (its objective is unknown), or held records are
        unreadable (the integrity part says which).
    """
    if snap.state is None:
        msg = (
            f"model {snap.model_id!r} v{snap.version.version} has no checkpoint: the "
            "reference model needs its objective (lambda, b)"
        )
        raise InvalidInput(msg)
    usable = records_usable(snap)
    if usable is None:
        msg = f"model {snap.model_id!r} has unreadable records: run the integrity audit"
        raise InvalidInput(msg)
    X, labels = usable
    ids = [r.record_id for r in snap.records]
    engine = kind_of_state(snap.state).resume(snap.state, X, np.asarray(labels), ids)
    engine.refit(warm_start=False)
    return LinearModel.from_engine(engine)

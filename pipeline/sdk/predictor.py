"""A published model version as a scikit-learn-style predictor, for serving teams.

The stored metadata says which kind of model a version is, and that kind's entry in the
registry (:mod:`pipeline.unlearning.kinds`) says how its scores become predictions, whether
it has ``predict_proba`` and what ``score`` computes. For the kinds there are:

* ``logistic`` with two classes: ``coef_`` of shape ``(d,)``, ``intercept_`` shape ``()``;
  ``p = sigmoid(X @ coef_ + intercept_)`` is the probability of ``classes_[1]``.
* ``logistic`` with K > 2 classes (one-vs-rest): ``coef_`` ``(K, d)``; each class has its
  own sigmoid and ``predict_proba`` normalises the K sigmoids to sum to one per row.
* ``ridge``: ``predict(X) = X @ coef_.T + intercept_``; ``score`` is R^2.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.errors import InvalidInput
from pipeline.store.versions import ModelVersion, VersionMetadata
from pipeline.unlearning.kinds import EngineKind, kind_named
from pipeline.unlearning.loss import class_probabilities

__all__ = ["LinearPredictor"]


class LinearPredictor:
    """Predictions from one immutable model version.

    Parameters
    ----------
    version : ModelVersion
        Read from the registry; the arrays are copied and made read-only.

    Attributes
    ----------
    coef_ : ndarray of shape (n_features,) or (n_classes, n_features)
    intercept_ : ndarray of shape () or (n_classes,)
    classes_ : ndarray of shape (n_classes,) or None
        ``None`` for a ridge model.
    metadata : VersionMetadata
        Version, parent, method, certificate, budget, metrics, ...
    """

    def __init__(self, version: ModelVersion) -> None:
        self.metadata: VersionMetadata = version.metadata
        self.coef_ = np.array(version.coef, dtype=np.float64)
        self.intercept_ = np.array(version.intercept, dtype=np.float64)
        self.coef_.flags.writeable = False
        self.intercept_.flags.writeable = False
        classes = self.metadata.classes
        self.classes_: np.ndarray | None = None if classes is None else np.asarray(classes)
        self._kind: EngineKind[Any] = kind_named(self.metadata.kind)

    @property
    def kind(self) -> str:
        return self.metadata.kind

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def n_features_in_(self) -> int:
        return int(self.coef_.shape[-1])

    def __repr__(self) -> str:
        m = self.metadata
        return (
            f"LinearPredictor(model_id={m.model_id!r}, version={m.version}, kind={m.kind!r}, "
            f"method={m.method!r}, n_features={self.n_features_in_})"
        )

    def _check(self, X: Any) -> np.ndarray:
        arr = np.asarray(X, dtype=np.float64)
        if arr.ndim != 2 or arr.shape[1] != self.n_features_in_:
            msg = (
                f"X has shape {arr.shape}; model {self.metadata.model_id!r} "
                f"v{self.version} expects (n_samples, {self.n_features_in_})"
            )
            raise InvalidInput(msg)
        if not np.isfinite(arr).all():
            msg = "X contains NaN or inf: impute or drop those rows first"
            raise InvalidInput(msg)
        return arr

    def decision_function(self, X: Any) -> np.ndarray:
        """Linear scores ``X @ coef_.T + intercept_``.

        Returns
        -------
        ndarray of shape (n_samples,) or (n_samples, n_classes)
        """
        return self._check(X) @ self.coef_.T + self.intercept_

    def predict_proba(self, X: Any) -> np.ndarray:
        """Class probabilities, columns in ``classes_`` order.

        Returns
        -------
        ndarray of shape (n_samples, n_classes)

        Raises
        ------
        InvalidInput
            The model is a regressor (ridge).
        """
        if not self._kind.classifier:
            msg = f"model {self.metadata.model_id!r} is a {self.kind} regressor: no predict_proba"
            raise InvalidInput(msg)
        return class_probabilities(self.decision_function(X))

    def predict(self, X: Any) -> np.ndarray:
        """Class labels (a classifier: logistic) or real values (a regressor: ridge).

        Returns
        -------
        ndarray of shape (n_samples,) (or (n_samples, n_targets) for multi-target ridge)
        """
        return self._kind.predict(self.decision_function(X), self.classes_)

    def score(self, X: Any, y: Any) -> float:
        """The kind's holdout score: accuracy (logistic) or the coefficient of determination
        R^2 (ridge)."""
        return self._kind.metric(self.predict(X), np.asarray(y))

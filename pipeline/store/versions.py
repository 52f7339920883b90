"""What a model version is: its metadata, its coefficients, and what a writer supplies.

A version is immutable once published. Its Redis hash holds ``meta`` (the JSON of
:class:`VersionMetadata`), ``coef`` and ``intercept`` (raw little-endian float64; dtype
and shape are in the metadata).

Shapes, following the engine's conventions:

* ``kind="logistic"``, two classes: ``coef`` of shape ``(d,)``, ``intercept`` shape ``()``;
  ``classes[1]`` is the positive class.
* ``kind="logistic"``, K > 2 classes (one-vs-rest): ``coef`` ``(K, d)``, ``intercept``
  ``(K,)``.
* ``kind="ridge"``: ``coef`` ``(d,)`` and ``intercept`` ``()``, or ``(k, d)`` and ``(k,)``
  for k targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from pipeline.errors import InvalidInput

__all__ = ["ModelKind", "ModelSpec", "ModelVersion", "VersionMetadata"]

ModelKind = Literal["logistic", "ridge"]


class VersionMetadata(BaseModel):
    """Metadata of one published version (stored as JSON next to the coefficients)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    model_id: str
    version: int = Field(ge=1)
    parent: int | None = Field(default=None, ge=1)
    kind: ModelKind
    method: str
    seq: int = Field(ge=0)
    n_records: int = Field(ge=0)
    n_features: int = Field(ge=0)
    classes: list[int | float | str] | None = None
    certificate: float | None = None
    budget: float | None = None
    holdout_metrics: dict[str, float] = Field(default_factory=dict)
    created_at: datetime
    coef_spec: dict[str, Any]
    intercept_spec: dict[str, Any]
    extra: dict[str, Any] = Field(default_factory=dict)


@dataclass(frozen=True)
class ModelSpec:
    """What a writer publishes; the registry adds version, parent and timestamps.

    Parameters
    ----------
    kind : {"logistic", "ridge"}
    coef : ndarray of shape (d,) or (K, d)
    intercept : float or ndarray of shape () or (K,)
    method : str
        How this version was produced: ``"fit"``, ``"influence"``, ``"fisher"``,
        ``"retrain"``, ...
    seq : int
        Sequence number of the last input the version includes.
    classes : list, optional
        Class labels, required for ``kind="logistic"`` (sorted as the engine's columns).
    certificate, budget : float, optional
        Gradient-residual certificate of this version and the model's budget ``eps'``.
    n_records : int, optional
        Records the version was trained on; by default the record store's count after
        the publication's additions and erasures.
    holdout_metrics : dict of str to float
    extra : dict
        Any other JSON-serialisable metadata.
    """

    kind: ModelKind
    coef: np.ndarray
    intercept: float | np.ndarray
    method: str
    seq: int
    classes: list[int | float | str] | None = None
    certificate: float | None = None
    budget: float | None = None
    n_records: int | None = None
    holdout_metrics: dict[str, float] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)

    def checked(self) -> tuple[np.ndarray, np.ndarray]:
        """Validate shapes and values; return ``(coef, intercept)`` as float64 arrays."""
        coef = np.asarray(self.coef, dtype=np.float64)
        intercept = np.asarray(self.intercept, dtype=np.float64)
        if coef.ndim == 1:
            rows, ok_intercept = 1, intercept.shape in ((), (1,))
        elif coef.ndim == 2:
            rows, ok_intercept = coef.shape[0], intercept.shape == (coef.shape[0],)
        else:
            msg = f"coef has shape {coef.shape}; expected (d,) or (K, d)"
            raise InvalidInput(msg)
        if not ok_intercept:
            msg = f"intercept has shape {intercept.shape}, which does not fit coef {coef.shape}"
            raise InvalidInput(msg)
        if not (np.isfinite(coef).all() and np.isfinite(intercept).all()):
            msg = "coef and intercept must be finite: the fit diverged, refusing to publish"
            raise InvalidInput(msg)
        if self.kind == "logistic":
            n_classes = len(self.classes or [])
            expected_rows = 1 if n_classes == 2 else n_classes
            if n_classes < 2 or rows != expected_rows or (n_classes == 2 and coef.ndim != 1):
                msg = (
                    f"a logistic model with classes {self.classes!r} needs coef of shape "
                    f"(d,) for 2 classes or (K, d) for K > 2; got {coef.shape}"
                )
                raise InvalidInput(msg)
        if intercept.shape == (1,) and coef.ndim == 1:
            intercept = intercept.reshape(())
        return coef, intercept


@dataclass(frozen=True)
class ModelVersion:
    """A published version read back from Redis."""

    metadata: VersionMetadata
    coef: np.ndarray
    intercept: np.ndarray

    @property
    def version(self) -> int:
        return self.metadata.version

    @property
    def model_id(self) -> str:
        return self.metadata.model_id

"""What a model version is: its metadata, its coefficients, and what a writer supplies.

A version is immutable once published. Its Redis hash holds ``meta`` (the JSON of
:class:`VersionMetadata`), ``coef`` and ``intercept`` (raw little-endian float64; dtype
and shape are in the metadata).

One version, three shapes, each derived from the one before: a writer's
:class:`ModelSpec` (coefficients and the facts it knows), the stored
:class:`VersionMetadata` (:meth:`ModelSpec.metadata`: the spec's facts plus what the
registry adds: version, parent, time, array layouts), and the ``ModelPublished`` notice
(:meth:`VersionMetadata.notice`: the metadata's public fields). A field the shapes share
has one name and one meaning; ``tests/unit/test_kinds.py`` checks they do not drift. A
version read back is a :class:`ModelVersion` (metadata and arrays).

Shapes, following the engine's conventions (``kind`` is an entry of the registry of model
kinds, :mod:`pipeline.unlearning.kinds`):

* a classifier (``"logistic"``), two classes: ``coef`` of shape ``(d,)``, ``intercept``
  shape ``()``; ``classes[1]`` is the positive class.
* a classifier, K > 2 classes (one-vs-rest): ``coef`` ``(K, d)``, ``intercept`` ``(K,)``.
* a regressor (``"ridge"``): ``coef`` ``(d,)`` and ``intercept`` ``()``, or ``(k, d)`` and
  ``(k,)`` for k targets.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from datetime import datetime
from typing import Annotated, Any

import numpy as np
from pydantic import AfterValidator, BaseModel, ConfigDict, Field

from pipeline.errors import InvalidInput
from pipeline.events import ModelPublished
from pipeline.unlearning.kinds import KINDS, kind_named, known_kind

__all__ = ["ModelKind", "ModelSpec", "ModelVersion", "VersionMetadata"]

#: A model kind's name, one of :data:`pipeline.unlearning.kinds.KINDS` (stored as a string;
#: the JSON schema lists the registry's kinds).
ModelKind = Annotated[
    str, AfterValidator(known_kind), Field(json_schema_extra={"enum": list(KINDS)})
]


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

    def notice(self) -> ModelPublished:
        """The ``ModelPublished`` event announcing this version: every field of the event
        that the metadata has, the event time ``created_at``, the event id
        ``pub:<model>:<version>``."""
        shared = {name: getattr(self, name) for name in _NOTICE_FIELDS}
        event_id = f"pub:{self.model_id}:{self.version}"
        return ModelPublished(event_id=event_id, ts=self.created_at, **shared)


#: The fields a ``ModelPublished`` notice copies from the version's metadata.
_NOTICE_FIELDS = tuple(n for n in ModelPublished.model_fields if n in VersionMetadata.model_fields)


@dataclass(frozen=True)
class ModelSpec:
    """What a writer publishes; the registry adds version, parent and timestamps.

    Parameters
    ----------
    kind : str
        A kind of :data:`pipeline.unlearning.kinds.KINDS`.
    coef : ndarray of shape (d,) or (K, d)
    intercept : float or ndarray of shape () or (K,)
    method : str
        How this version was produced: ``"fit"``, ``"influence"``, ``"fisher"``,
        ``"retrain"``, ...
    seq : int
        Sequence number of the last input the version includes.
    classes : list, optional
        Class labels, required for a classifier kind (sorted as the engine's columns).
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

    def metadata(
        self,
        *,
        model_id: str,
        version: int,
        parent: int | None,
        n_records: int,
        created_at: datetime,
        coef_spec: dict[str, Any],
        intercept_spec: dict[str, Any],
        n_features: int,
    ) -> VersionMetadata:
        """The stored metadata of this spec published as ``version``: every field of the spec
        but the arrays, plus what the registry adds. ``n_records`` is used when the spec
        gives none."""
        shared = {name: getattr(self, name) for name in _SPEC_FIELDS}
        return VersionMetadata(
            **shared,
            model_id=model_id,
            version=version,
            parent=parent,
            n_records=self.n_records if self.n_records is not None else n_records,
            n_features=n_features,
            created_at=created_at,
            coef_spec=coef_spec,
            intercept_spec=intercept_spec,
        )

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
        if kind_named(self.kind).classifier:
            n_classes = len(self.classes or [])
            expected_rows = 1 if n_classes == 2 else n_classes
            if n_classes < 2 or rows != expected_rows or (n_classes == 2 and coef.ndim != 1):
                msg = (
                    f"a {self.kind} model with classes {self.classes!r} needs coef of shape "
                    f"(d,) for 2 classes or (K, d) for K > 2; got {coef.shape}"
                )
                raise InvalidInput(msg)
        if intercept.shape == (1,) and coef.ndim == 1:
            intercept = intercept.reshape(())
        return coef, intercept


#: The fields of a spec its metadata copies as they are (the arrays are stored apart, and
#: ``n_records`` falls back to the record store's count).
_SPEC_FIELDS = tuple(
    f.name for f in fields(ModelSpec) if f.name not in ("coef", "intercept", "n_records")
)


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

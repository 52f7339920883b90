"""Event schemas: the JSON that flows through the pipeline's Kafka topics.

Every event is a frozen pydantic model with a ``schema`` version field, a ``type``
discriminator and a client-supplied id (``event_id``, or ``request_id`` for deletion
requests) that is its idempotency key: a consumer that sees the same id twice applies
it once. Validation happens at the edge: :func:`decode_event` turns bytes into the
right model or raises :class:`~pipeline.errors.SchemaError` naming the bad field.

Topics (DESIGN section 4): ``RecordAdded`` on ``unlearn.records``; ``DeletionRequested``,
``FeatureRemovalRequested`` and ``RelabelRequested`` on ``unlearn.deletions`` (the requests
topic: :func:`decode_request` reads one by its ``type``, ``DeletionRequested`` when
absent); ``ModelPublished`` on ``unlearn.model-updates``; ``RetrainRequested`` /
``RetrainCompleted`` on ``unlearn.retrain``; ``Receipt`` on ``unlearn.receipts``;
``DeadLetter`` on ``unlearn.dead-letter``; ``ClientStats``, ``ClientRemoved``,
``ClassRemoved`` on ``unlearn.federated``.
"""

from __future__ import annotations

import json
import math
import uuid
from datetime import UTC, datetime
from enum import StrEnum
from typing import Annotated, Any, Final, Literal, Self, TypeVar, overload

from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    TypeAdapter,
    ValidationError,
    model_validator,
)

from pipeline.errors import SchemaError

__all__ = [
    "EVENT_TYPES",
    "MAX_BATCH_IDS",
    "MAX_COLUMNS",
    "REQUEST_TYPES",
    "MAX_FEATURES",
    "ID_PATTERN",
    "MAX_ID",
    "SCHEMA_VERSION",
    "ClassRemoved",
    "ClientRemoved",
    "ClientStats",
    "DeadLetter",
    "DeletionRequested",
    "Event",
    "FeatureRemovalRequested",
    "LabelCorrection",
    "ModelOps",
    "ModelPublished",
    "Origin",
    "Receipt",
    "ReceiptStatus",
    "RecordAdded",
    "RelabelRequested",
    "Request",
    "RetrainCompleted",
    "RetrainReason",
    "RetrainRequested",
    "RoutedRequest",
    "decode_event",
    "decode_request",
    "encode_event",
]

SCHEMA_VERSION: Final = 1
MAX_FEATURES = 10_000
"""Largest feature vector (and gradient) an event may carry."""
MAX_STATS_FEATURES = 1_000
"""Largest dimension of a federated client's Hessian (sent as d * d floats)."""
MAX_BATCH_IDS = 10_000
"""Most record ids (or model ids) one deletion request may name."""
MAX_COLUMNS = 1_000
"""Most feature columns one feature-removal request may name."""


def _utcnow() -> datetime:
    return datetime.now(UTC)


def _finite(values: list[float]) -> list[float]:
    for i, value in enumerate(values):
        if not math.isfinite(value):
            msg = f"element [{i}] is {value}: values must be finite numbers (no NaN or inf)"
            raise ValueError(msg)
    return values


def _finite_scalar(value: float | None) -> float | None:
    if value is not None and not math.isfinite(value):
        msg = f"{value} is not a finite number"
        raise ValueError(msg)
    return value


ModelId = Annotated[
    str,
    Field(
        min_length=1,
        max_length=128,
        pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$",
        description="Model id: letters, digits, '.', '_', '-' (it is a Redis hash tag).",
    ),
]
MAX_ID = 256
"""Longest client-supplied id (request, record, subject, event)."""
ID_PATTERN = r"^[^\x00-\x1f{}]+$"
"""Client ids: no control characters, and no braces, which delimit Redis Cluster hash tags
(record and request ids appear in key names; a brace would move a key to another slot or
let it match another key's pattern, e.g. a reader's ACL rule)."""
Id = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID,
        pattern=ID_PATTERN,
        description="1-256 characters: no control characters, no '{' or '}'.",
    ),
]
DerivedId = Annotated[str, Field(min_length=1, max_length=1024, pattern=r"^[^\x00-\x1f]+$")]
"""An id the pipeline builds from client ids and model ids (e.g. a receipt's event id):
long enough for any combination of ids of the maximal lengths."""
Label = int | float | str
FiniteVector = Annotated[
    list[float], Field(min_length=1, max_length=MAX_FEATURES), AfterValidator(_finite)
]
FiniteFloat = Annotated[float | None, AfterValidator(_finite_scalar)]
Timestamp = Annotated[datetime, Field(default_factory=_utcnow)]


class Event(BaseModel):
    """Fields every event has: ``schema`` (version) and ``ts`` (event time, UTC)."""

    model_config = ConfigDict(
        frozen=True, extra="forbid", populate_by_name=True, allow_inf_nan=False
    )

    schema_version: Literal[1] = Field(default=SCHEMA_VERSION, alias="schema")
    ts: Timestamp

    @property
    def idempotency_key(self) -> str:
        """The client-supplied id that makes redelivery harmless."""
        return str(getattr(self, "event_id", None) or getattr(self, "request_id", ""))


class RecordAdded(Event):
    """A training record for one model (``unlearn.records``, key ``model_id/record_id``).

    The topic is compacted: the message key must be ``<model_id>/<record_id>`` (UTF-8) and
    the message must go to the partition of its model (murmur2 of the model id, as the
    Java client and :class:`~pipeline.sdk.DeletionClient` choose), so that the tombstone
    the pipeline writes after an erasure, or for a record it refuses, replaces it.
    """

    model_config = ConfigDict(
        json_schema_extra={
            "x-kafka-key": "<model_id>/<record_id> (UTF-8): the compaction key",
            "x-kafka-partition": "murmur2(model_id) % partitions, as the Java client",
        }
    )

    type: Literal["RecordAdded"] = "RecordAdded"
    event_id: Id
    model_id: ModelId
    record_id: Id
    subject_id: Id
    features: FiniteVector
    label: Label


class DeletionRequested(Event):
    """Forget a subject's records, or named records (``unlearn.deletions``).

    ``model_ids`` absent means every model that holds the subject's or records' data.
    """

    type: Literal["DeletionRequested"] = "DeletionRequested"
    request_id: Id
    subject_id: Id | None = None
    record_ids: Annotated[list[Id], Field(min_length=1, max_length=MAX_BATCH_IDS)] | None = None
    model_ids: Annotated[list[ModelId], Field(min_length=1, max_length=MAX_BATCH_IDS)] | None = None
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "erasure request"
    objection: bool = Field(
        default=False,
        description=(
            "GDPR Art. 21: also keep out every record of the subject produced later, until "
            "the objection is lifted (`unlearn objection lift`)."
        ),
    )

    model_config = ConfigDict(
        json_schema_extra={
            "anyOf": [
                {"required": ["subject_id"], "properties": {"subject_id": {"type": "string"}}},
                {"required": ["record_ids"], "properties": {"record_ids": {"type": "array"}}},
            ]
        }
    )

    @model_validator(mode="after")
    def _needs_target(self) -> Self:
        if self.subject_id is None and self.record_ids is None:
            msg = "give subject_id or record_ids (or both): the request names nothing to delete"
            raise ValueError(msg)
        return self


ColumnName = Annotated[
    str,
    Field(
        min_length=1,
        max_length=MAX_ID,
        pattern=r"^[^\x00-\x1f]+$",
        description="A feature's name in the header of the CSV the model was trained from.",
    ),
]
Column = Annotated[int, Field(ge=0, le=MAX_FEATURES)] | ColumnName


class FeatureRemovalRequested(Event):
    """Stop one model from using feature columns, now and for records it learns later
    (``unlearn.deletions``, key: the model id).

    A column is a 0-based index, or a name when the model was trained from a CSV with a
    header (``unlearn train --data file.csv``). The model's owner resolves names; an
    unknown name or an index out of range gets a ``rejected`` receipt with the reason.
    """

    type: Literal["FeatureRemovalRequested"] = "FeatureRemovalRequested"
    request_id: Id
    model_id: ModelId
    columns: Annotated[list[Column], Field(min_length=1, max_length=MAX_COLUMNS)]
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "feature removal"


class LabelCorrection(BaseModel):
    """One record's corrected label."""

    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)

    record_id: Id
    label: Label


class RelabelRequested(Event):
    """Correct the labels of records one model holds (``unlearn.deletions``, key: the
    model id): a label-flip poisoning repaired, a mistaken annotation fixed.

    A record the model does not hold (never held, or forgotten) or a label outside the
    model's classes gets a ``rejected`` receipt with the reason; the request is then
    applied to none of its records.
    """

    type: Literal["RelabelRequested"] = "RelabelRequested"
    request_id: Id
    model_id: ModelId
    labels: Annotated[list[LabelCorrection], Field(min_length=1, max_length=MAX_BATCH_IDS)]
    reason: Annotated[str, Field(min_length=1, max_length=500)] = "label correction"

    @model_validator(mode="after")
    def _one_label_per_record(self) -> Self:
        seen: set[str] = set()
        for i, item in enumerate(self.labels):
            if item.record_id in seen:
                msg = (
                    f"labels[{i}]: record {item.record_id!r} is named twice; give each "
                    "record one corrected label"
                )
                raise ValueError(msg)
            seen.add(item.record_id)
        return self


Request = DeletionRequested | FeatureRemovalRequested | RelabelRequested
"""What ``unlearn.deletions`` carries: a request about one model's data, by ``type``."""
REQUEST_TYPES: tuple[type[Event], ...] = (
    DeletionRequested,
    FeatureRemovalRequested,
    RelabelRequested,
)


class ModelPublished(Event):
    """A new model version is current (``unlearn.model-updates``, compacted, key: model)."""

    type: Literal["ModelPublished"] = "ModelPublished"
    event_id: DerivedId
    model_id: ModelId
    version: int = Field(ge=1)
    parent: int | None = Field(default=None, ge=1)
    method: str = Field(min_length=1, max_length=64)
    n_records: int = Field(ge=0)
    seq: int = Field(ge=0)
    certificate: FiniteFloat = None
    budget: FiniteFloat = None
    holdout_metrics: dict[str, float] = Field(default_factory=dict)


#: Why a retrain was asked for: a trigger of :class:`~pipeline.policy.RetrainPolicy`, the
#: cron schedule, or an operator.
RetrainReason = Literal[
    "budget", "accuracy", "class_accuracy", "deleted_fraction", "schedule", "operator"
]


class RetrainRequested(Event):
    """Ask the retrainer for a full fit on the snapshot at ``snapshot_seq``."""

    type: Literal["RetrainRequested"] = "RetrainRequested"
    event_id: Id
    model_id: ModelId
    reason: RetrainReason
    snapshot_seq: int = Field(ge=0)

    @classmethod
    def new(cls, model_id: str, reason: RetrainReason, snapshot_seq: int) -> RetrainRequested:
        """A fresh request, the one way the pipeline makes one (worker triggers, the
        schedule, ``unlearn retrain``): event id ``<reason>-<uuid4 hex>``, event time now."""
        return cls(
            event_id=f"{reason}-{uuid.uuid4().hex}",
            model_id=model_id,
            reason=reason,
            snapshot_seq=snapshot_seq,
            ts=_utcnow(),
        )


class RetrainCompleted(Event):
    """The retrainer published a version fitted from scratch."""

    type: Literal["RetrainCompleted"] = "RetrainCompleted"
    event_id: DerivedId
    model_id: ModelId
    version: int = Field(ge=1)
    snapshot_seq: int = Field(ge=0)
    applied_seq: int = Field(ge=0)
    duration_s: float = Field(ge=0)


class ReceiptStatus(StrEnum):
    """Where a deletion request stands for one model.

    ``received`` and ``pending_retrain`` are open; the others are final: ``applied``
    (removed by an incremental update), ``completed`` (removed by a full retrain),
    ``already_absent`` (nothing to remove), ``rejected`` (with a reason).
    """

    RECEIVED = "received"
    APPLIED = "applied"
    ALREADY_ABSENT = "already_absent"
    PENDING_RETRAIN = "pending_retrain"
    COMPLETED = "completed"
    REJECTED = "rejected"

    @property
    def final(self) -> bool:
        return self not in (ReceiptStatus.RECEIVED, ReceiptStatus.PENDING_RETRAIN)


#: What a request asked of a model, as its receipt says.
Operation = Literal["deletion", "feature_removal", "relabel"]


class Receipt(Event):
    """The outcome of one request (a deletion, a feature removal, a relabel) for one model
    (``unlearn.receipts``)."""

    type: Literal["Receipt"] = "Receipt"
    event_id: DerivedId
    request_id: Id
    model_id: ModelId
    status: ReceiptStatus
    reason: str | None = Field(default=None, max_length=500)
    version: int | None = Field(default=None, ge=1)
    method: str | None = None
    certificate: FiniteFloat = None
    budget: FiniteFloat = None
    n_records: int = Field(default=0, ge=0)
    received_at: datetime
    due_at: datetime
    completed_at: datetime | None = None
    operation: Operation | None = Field(
        default=None,
        description="What the request asked (absent: a deletion, as receipts before it).",
    )
    columns: Annotated[list[int], Field(max_length=MAX_COLUMNS)] | None = Field(
        default=None,
        description="Feature removal: the 0-based columns this version stopped using.",
    )
    relabelled: Annotated[list[Id], Field(max_length=MAX_BATCH_IDS)] | None = Field(
        default=None,
        description="Relabel: the record ids whose labels this version corrected.",
    )

    @model_validator(mode="after")
    def _reason_when_rejected(self) -> Self:
        if self.status is ReceiptStatus.REJECTED and not self.reason:
            msg = "a rejected receipt needs a reason"
            raise ValueError(msg)
        return self


class DeadLetter(Event):
    """An input that could not be processed, with where it came from and why."""

    type: Literal["DeadLetter"] = "DeadLetter"
    event_id: Id
    topic: str = Field(min_length=1)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    key_b64: str | None = None
    value_b64: str | None = None
    error: str = Field(min_length=1, max_length=2000)
    reason: str = Field(min_length=1, max_length=64, description="Short code, for metrics.")


class ClientStats(Event):
    """A federated client's gradient and Hessian contribution at the global ``w``."""

    type: Literal["ClientStats"] = "ClientStats"
    event_id: DerivedId
    model_id: ModelId
    client_id: Id
    round: int = Field(ge=0)
    n: int = Field(ge=0)
    class_label: Label | None = None
    gradient: Annotated[
        list[float], Field(min_length=1, max_length=MAX_STATS_FEATURES), AfterValidator(_finite)
    ]
    hessian: Annotated[
        list[float],
        Field(min_length=1, max_length=MAX_STATS_FEATURES**2, description="Row-major d * d."),
        AfterValidator(_finite),
    ]

    @model_validator(mode="after")
    def _square(self) -> Self:
        d = len(self.gradient)
        if len(self.hessian) != d * d:
            msg = f"hessian has {len(self.hessian)} entries, expected {d} * {d} = {d * d}"
            raise ValueError(msg)
        return self


class ClientRemoved(Event):
    """Forget everything a federated client contributed."""

    type: Literal["ClientRemoved"] = "ClientRemoved"
    event_id: Id
    model_id: ModelId
    client_id: Id
    reason: str = Field(default="client removal", min_length=1, max_length=500)


class ClassRemoved(Event):
    """Remove a whole class from a one-vs-rest model."""

    type: Literal["ClassRemoved"] = "ClassRemoved"
    event_id: Id
    model_id: ModelId
    class_label: Label
    reason: str = Field(default="class removal", min_length=1, max_length=500)


class Origin(BaseModel):
    """Where a routed event was consumed: for dead letters and logs of the next stage."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    topic: str = Field(min_length=1, max_length=300)
    partition: int = Field(ge=0)
    offset: int = Field(ge=0)
    timestamp: datetime | None = None


class RoutedRequest(BaseModel):
    """A request as the intake stage hands it to one model's owner."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    request: Annotated[Request, Field(discriminator="type")]
    origin: Origin


class ModelOps(Event):
    """Requests routed to one model (``unlearn.model-ops``, internal, key: model).

    The intake stage consumes ``unlearn.deletions`` (keyed by subject), validates and
    resolves each request to the models it concerns, and writes one ``ModelOps`` per
    model and batch, partitioned by model id as ``unlearn.records`` is: the worker that
    owns a model's partition applies its deletions and its new records, alone.
    """

    type: Literal["ModelOps"] = "ModelOps"
    event_id: DerivedId
    model_id: ModelId
    requests: Annotated[list[RoutedRequest], Field(min_length=1, max_length=MAX_BATCH_IDS)]


EVENT_TYPES: tuple[type[Event], ...] = (
    RecordAdded,
    DeletionRequested,
    FeatureRemovalRequested,
    RelabelRequested,
    ModelPublished,
    RetrainRequested,
    RetrainCompleted,
    Receipt,
    DeadLetter,
    ClientStats,
    ClientRemoved,
    ClassRemoved,
    ModelOps,
)
_BY_NAME: dict[str, type[Event]] = {cls.__name__: cls for cls in EVENT_TYPES}
_REQUESTS: dict[str, type[Event]] = {cls.__name__: cls for cls in REQUEST_TYPES}
_ANY_EVENT: TypeAdapter[Any] = TypeAdapter(
    Annotated[
        RecordAdded
        | DeletionRequested
        | FeatureRemovalRequested
        | RelabelRequested
        | ModelPublished
        | RetrainRequested
        | RetrainCompleted
        | Receipt
        | DeadLetter
        | ClientStats
        | ClientRemoved
        | ClassRemoved
        | ModelOps,
        Field(discriminator="type"),
    ]
)

E = TypeVar("E", bound=Event)


def encode_event(event: Event) -> bytes:
    """Serialise an event to the UTF-8 JSON that goes on the wire."""
    return event.model_dump_json(by_alias=True).encode()


def _schema_error(exc: ValidationError) -> SchemaError:
    errors = exc.errors(include_url=False)
    err = errors[0]
    loc = [str(part) for part in err["loc"]]
    if loc and loc[0] in _BY_NAME:  # the discriminated union puts the class name first
        loc = loc[1:]
    field = ".".join(loc) or "<event>"
    reason = err["msg"].removeprefix("Value error, ")
    ctx = err.get("ctx") or {}
    if err["type"] == "union_tag_invalid":
        field, reason = "type", f"unknown event type; expected one of {sorted(_BY_NAME)}"
    elif err["type"] == "finite_number":
        reason = "must be a finite number: NaN and inf are rejected"
    elif err["type"] == "too_long":
        reason = (
            f"has {ctx.get('actual_length')} items, more than the limit of "
            f"{ctx.get('max_length')}: split it into several events"
        )
    if len(errors) > 1:
        reason += f" (and {len(errors) - 1} more problem(s))"
    return SchemaError(field, err.get("input"), reason)


@overload
def decode_event(data: bytes | str) -> Event: ...
@overload
def decode_event(data: bytes | str, expected: type[E]) -> E: ...
def decode_event(data: bytes | str, expected: type[E] | None = None) -> E | Event:
    """Parse and validate one event.

    Parameters
    ----------
    data : bytes or str
        The message value: UTF-8 JSON.
    expected : type, optional
        The event class the topic carries; ``type`` may then be omitted. Without it the
        ``type`` field chooses the class.

    Returns
    -------
    Event
        An instance of ``expected`` or of the class named by ``type``.

    Raises
    ------
    SchemaError
        Not JSON, not an object, wrong ``schema`` version, unknown ``type``, or a field
        that fails validation; ``field`` and ``reason`` say which and why.
    """
    return _decode(data, expected)


def _decode(data: bytes | str, expected: type[E] | None, *, requests: bool = False) -> E | Event:
    field = "<event>"
    try:
        payload = json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        msg = f"not valid UTF-8 JSON: {exc}"
        raise SchemaError(field, data[:200], msg) from None
    except RecursionError:
        msg = "not valid UTF-8 JSON: nested too deeply to parse"
        raise SchemaError(field, data[:200], msg) from None
    except ValueError as exc:  # e.g. an integer of more digits than Python converts
        msg = f"not valid UTF-8 JSON: {str(exc)[:200]}"
        raise SchemaError(field, data[:200], msg) from None
    if not isinstance(payload, dict):
        msg = "an event must be a JSON object"
        raise SchemaError(field, payload, msg)
    field = "schema"
    version = payload.get(field, SCHEMA_VERSION)
    if version != SCHEMA_VERSION:
        msg = f"unsupported schema version; this build reads schema {SCHEMA_VERSION}"
        raise SchemaError(field, version, msg)
    field = "type"
    try:
        if expected is not None:
            kind = payload.get(field, expected.__name__)
            if kind != expected.__name__:
                msg = f"this topic carries {expected.__name__} events"
                raise SchemaError(field, kind, msg)
            return expected.model_validate(payload)
        if requests:
            kind = payload.get(field, DeletionRequested.__name__)
            cls = _REQUESTS.get(kind) if isinstance(kind, str) else None
            if cls is None:
                msg = f"this topic carries {', '.join(sorted(_REQUESTS))} events"
                raise SchemaError(field, kind, msg)
            return cls.model_validate(payload)
        if field not in payload:
            msg = f"missing; expected one of {sorted(_BY_NAME)}"
            raise SchemaError(field, None, msg)
        event: Event = _ANY_EVENT.validate_python(payload)
        return event
    except ValidationError as exc:
        raise _schema_error(exc) from None


def decode_request(data: bytes | str) -> Request:
    """Parse and validate one message of ``unlearn.deletions``: a ``DeletionRequested``
    (also when ``type`` is absent, as producers written before the other requests send
    it), a ``FeatureRemovalRequested`` or a ``RelabelRequested``.

    Raises
    ------
    SchemaError
        As :func:`decode_event`; ``type`` names another event.
    """
    event: Request = _decode(data, None, requests=True)  # type: ignore[assignment]
    return event

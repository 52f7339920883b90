"""The edge of the workers: raw Kafka messages in, validated events or dead letters out.

Every message a worker consumes goes through :func:`decode_message`. It never raises for
bad input: an event that cannot be processed becomes a :class:`Rejected` with a short
reason code (a metric label) and a message naming the problem, and
:func:`dead_letter` turns that into the ``DeadLetter`` event for ``unlearn.dead-letter``,
carrying the original bytes and where they came from (topic, partition, offset).

Reason codes: ``oversized``, ``malformed_json``, ``non_finite``, ``schema``,
``wrong_type``, ``feature_count``, ``unknown_model``, ``unsupported_model`` (a model the
worker cannot change: no engine checkpoint, e.g. a federated one), ``unknown_class``,
``invalid``; ``internal_error`` for a message the worker's code failed on.
"""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Generic, TypeVar

from pipeline.errors import SchemaError
from pipeline.events import DeadLetter, Event, Request, decode_event, decode_request

__all__ = [
    "REASONS",
    "Message",
    "Rejected",
    "dead_letter",
    "decode_message",
    "decode_request_message",
    "oversized",
    "produced_at",
    "rejection_reason",
]

REASONS = (
    "oversized",
    "malformed_json",
    "non_finite",
    "schema",
    "wrong_type",
    "feature_count",
    "unknown_model",
    "unsupported_model",
    "unknown_class",
    "invalid",
)
_KEPT_BYTES = 65_536
"""Of an oversized message, only this many bytes go to the dead-letter topic."""

E = TypeVar("E", bound=Event)


@dataclass(frozen=True)
class Message:
    """A consumed message: where it came from and its raw bytes."""

    topic: str
    partition: int
    offset: int
    key: bytes | None
    value: bytes | None
    timestamp: datetime | None = None
    """The broker's timestamp of the message (producer's create time or log append time)."""

    @classmethod
    def from_faust(cls, event: Any) -> Message:
        """The message a faust ``EventT`` carries (duck-typed: intake does not import faust)."""
        msg = event.message
        return cls(
            msg.topic, msg.partition, msg.offset, event.key, event.value, _when(msg.timestamp)
        )

    @property
    def where(self) -> str:
        """``topic[partition] offset=N``, for log lines."""
        return f"{self.topic}[{self.partition}] offset={self.offset}"


def _when(seconds: float | None) -> datetime | None:
    """A Kafka timestamp (epoch seconds; absent or negative when unknown) as a datetime."""
    if seconds is None or seconds <= 0:
        return None
    return datetime.fromtimestamp(seconds, UTC)


def produced_at(event: Event, message: Message | None) -> datetime:
    """When an event was produced: the earlier of its event time and its broker timestamp.

    A client that leaves ``ts`` out gets the decoding time as event time; the broker's
    timestamp then says how old the message really is.
    """
    if message is None or message.timestamp is None:
        return event.ts
    return min(event.ts, message.timestamp)


@dataclass(frozen=True)
class Rejected(Generic[E]):
    """A message that will not be processed, and why."""

    message: Message
    reason: str
    error: str


def rejection_reason(exc: SchemaError) -> str:
    """The dead-letter reason code of a decoding error."""
    if exc.field == "<event>" and exc.reason.startswith("not valid UTF-8 JSON"):
        return "malformed_json"
    if exc.field == "type":
        return "wrong_type"
    if "finite" in exc.reason:
        return "non_finite"
    return "schema"


def oversized(message: Message, max_bytes: int, remedy: str) -> Rejected[Any] | None:
    """The ``oversized`` rejection of a message over ``max_bytes``, or None if it fits."""
    size = len(message.value or b"")
    if size <= max_bytes:
        return None
    error = (
        f"message of {size} bytes is larger than the limit of {max_bytes} "
        f"(UNLEARN_MAX_EVENT_BYTES): {remedy}"
    )
    return Rejected(message, "oversized", error)


def decode_message(
    message: Message, expected: type[E], *, max_bytes: int
) -> E | Rejected[E] | None:
    """Validate one message as an ``expected`` event.

    Returns
    -------
    Event, Rejected or None
        The event; a :class:`Rejected` with its reason; ``None`` for a tombstone (a
        ``null`` value, which the pipeline itself writes after an erasure).
    """
    return _decoded(
        message, max_bytes, "split it into several events", lambda v: decode_event(v, expected)
    )


def decode_request_message(message: Message, *, max_bytes: int) -> Request | Rejected[Any] | None:
    """:func:`decode_message` for ``unlearn.deletions``, which carries several request
    types (:func:`~pipeline.events.decode_request`): chosen by ``type``."""
    return _decoded(message, max_bytes, "split it into several requests", decode_request)


def _decoded(message: Message, max_bytes: int, remedy: str, decode: Callable[[bytes], Any]) -> Any:
    """``decode(message.value)``, or the :class:`Rejected` saying why not (``remedy``:
    what to do about an oversized one), or ``None`` for a tombstone."""
    value = message.value
    if value is None:
        return None
    too_big = oversized(message, max_bytes, remedy)
    if too_big is not None:
        return too_big
    try:
        return decode(value)
    except SchemaError as exc:
        return Rejected(message, rejection_reason(exc), str(exc))
    except Exception as exc:  # noqa: BLE001 - one message must never take the batch with it
        return Rejected(message, "invalid", f"could not decode: {type(exc).__name__}: {exc}"[:500])


def dead_letter(rejected: Rejected[E] | Rejected[Event]) -> DeadLetter:
    """The ``DeadLetter`` event for a rejected message (its id is stable across replays)."""
    msg = rejected.message
    value = msg.value
    error = rejected.error
    if value is not None and len(value) > _KEPT_BYTES:
        value = value[:_KEPT_BYTES]
        error = f"{error} (first {_KEPT_BYTES} bytes kept)"
    origin = f"{msg.topic}:{msg.partition}:{msg.offset}"
    return DeadLetter(
        event_id="dl:" + hashlib.sha256(origin.encode()).hexdigest()[:32],
        topic=msg.topic,
        partition=msg.partition,
        offset=msg.offset,
        key_b64=None if msg.key is None else base64.b64encode(msg.key).decode(),
        value_b64=None if value is None else base64.b64encode(value).decode(),
        error=error[:2000],
        reason=rejected.reason,
        ts=datetime.now(UTC),
    )

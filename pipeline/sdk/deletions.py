"""The producer side of the SDK: publish deletion requests, feature removals, label
corrections and new training records.

An application team uses :class:`DeletionClient`::

    with DeletionClient("kafka:9092") as client:
        client.add_records("churn", [{"record_id": "r1", "subject_id": "alice",
                                      "features": [0.3, 1.2], "label": 1}])
        request_id = client.request(subject_id="alice", reason="GDPR Art. 17")
        client.forget_features("churn", ["zip_code"])   # or 0-based indices
        client.relabel("churn", {"r1": 0})              # record id -> corrected label

Events are validated before they leave the process (a bad one raises
:class:`~pipeline.errors.SchemaError`, nothing is sent) and produced with ``acks="all"``
and the idempotent producer, so a retried send is written once. ``request`` waits for
the broker's acknowledgement: when it returns the request is durable and its
``request_id`` is the idempotency key to quote in the receipt lookup.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from types import TracebackType
from typing import TYPE_CHECKING, Any, Self

from kafka import KafkaProducer
from kafka.partitioner import murmur2
from pydantic import ValidationError

from pipeline.errors import SchemaError
from pipeline.events import (
    DeletionRequested,
    Event,
    FeatureRemovalRequested,
    RecordAdded,
    RelabelRequested,
    encode_event,
)
from pipeline.topics import Topics, record_key

if TYPE_CHECKING:
    from pipeline.config import Settings
    from pipeline.store.records import StoredRecord

__all__ = ["DeletionClient", "partition_for"]


def partition_for(key: str, partitions: Iterable[int]) -> int:
    """The partition the Java client (and faust) would pick for ``key`` (murmur2)."""
    ordered = sorted(partitions)
    return ordered[(murmur2(key.encode()) & 0x7FFFFFFF) % len(ordered)]


def _validated(cls: type[Event], **fields: Any) -> Any:
    try:
        return cls(**fields)
    except ValidationError as exc:
        err = exc.errors(include_url=False)[0]
        field = ".".join(str(p) for p in err["loc"]) or cls.__name__
        reason = err["msg"].removeprefix("Value error, ")
        raise SchemaError(field, err.get("input"), reason) from None


class DeletionClient:
    """Publish ``DeletionRequested``, ``FeatureRemovalRequested``, ``RelabelRequested``
    and ``RecordAdded`` events.

    Parameters
    ----------
    bootstrap : str
        Kafka ``host:port[,host:port]``.
    topic_prefix : str
        Prefix of the pipeline's topics (``UNLEARN_TOPIC_PREFIX``).
    timeout : float
        Seconds to wait for the broker to acknowledge a send.
    **producer_config
        Extra ``KafkaProducer`` options (security settings, ``client_id``, ...).
    """

    def __init__(
        self,
        bootstrap: str,
        topic_prefix: str = "",
        *,
        timeout: float = 30.0,
        **producer_config: Any,
    ) -> None:
        self.topics = Topics(topic_prefix)
        self.timeout = timeout
        config: dict[str, Any] = {
            "acks": "all",
            "enable_idempotence": True,
            "linger_ms": 5,
            "client_id": "unlearn-sdk",
        }
        config.update(producer_config)
        self._producer = KafkaProducer(bootstrap_servers=bootstrap, **config)

    @classmethod
    def from_settings(cls, settings: Settings, bootstrap: str | None = None) -> DeletionClient:
        """A client configured from ``settings`` (address, prefix, SASL/TLS)."""
        address = bootstrap or settings.kafka_bootstrap
        if not address:
            from pipeline.errors import ConfigError

            msg = "no Kafka address: set UNLEARN_KAFKA_BOOTSTRAP or use resolve_services()"
            raise ConfigError(msg)
        return cls(address, settings.topic_prefix, **settings.kafka_config())

    def request(
        self,
        *,
        subject_id: str | None = None,
        record_ids: Iterable[str] | None = None,
        model_ids: Iterable[str] | None = None,
        reason: str = "erasure request",
        request_id: str | None = None,
        objection: bool = False,
    ) -> str:
        """Ask for a subject's data (or named records) to be forgotten.

        Parameters
        ----------
        subject_id : str, optional
            Forget every record of this subject.
        record_ids : iterable of str, optional
            Forget these records. At least one of ``subject_id`` / ``record_ids``.
        model_ids : iterable of str, optional
            Only these models; by default every model holding the data.
        reason : str
            Why (kept in the audit trail), e.g. ``"GDPR Art. 17"``.
        request_id : str, optional
            Idempotency key; a new UUID by default. Resending with the same id is safe.
        objection : bool
            GDPR Art. 21: also keep out every record of the subject produced after the
            request, until the objection is lifted (``unlearn objection lift``). Without
            it, only data produced before the erasure is kept out; later data is learned.

        Returns
        -------
        str
            The request id, to look up receipts with ``ModelClient.receipt``.

        Raises
        ------
        SchemaError
            The request is invalid (nothing named, bad ids); nothing was sent.
        """
        event: DeletionRequested = _validated(
            DeletionRequested,
            request_id=request_id or uuid.uuid4().hex,
            subject_id=subject_id,
            record_ids=None if record_ids is None else list(record_ids),
            model_ids=None if model_ids is None else list(model_ids),
            reason=reason,
            objection=objection,
        )
        key = event.subject_id or (event.record_ids or [event.request_id])[0]
        return self._send_request(event, key)

    def forget_features(
        self,
        model_id: str,
        columns: Iterable[int | str],
        *,
        reason: str = "feature removal",
        request_id: str | None = None,
    ) -> str:
        """Ask a model to stop using feature columns, now and for records learned later.

        Parameters
        ----------
        model_id : str
        columns : iterable of int or str
            0-based column indices, or feature names when the model was trained from a
            CSV with a header (``unlearn train --data file.csv``). The model's owner
            resolves them; an unknown name or an index out of range gets a ``rejected``
            receipt with the reason.
        reason : str
            Why, for the audit trail (e.g. ``"protected attribute"``).
        request_id : str, optional
            Idempotency key; a new UUID by default.

        Returns
        -------
        str
            The request id, to look up the receipt with ``ModelClient.receipt``: it names
            the columns forgotten, the method and the certificate.

        Raises
        ------
        SchemaError
            The request is invalid (no column, a negative index); nothing was sent.
        """
        event: FeatureRemovalRequested = _validated(
            FeatureRemovalRequested,
            request_id=request_id or uuid.uuid4().hex,
            model_id=model_id,
            columns=list(columns),
            reason=reason,
        )
        return self._send_request(event, event.model_id)

    def relabel(
        self,
        model_id: str,
        labels: Mapping[str, Any],
        *,
        reason: str = "label correction",
        request_id: str | None = None,
    ) -> str:
        """Correct the labels of records a model holds.

        Parameters
        ----------
        model_id : str
        labels : mapping of str to label
            Record id -> corrected label. A record the model does not hold (never held or
            forgotten) or a label outside its classes gets a ``rejected`` receipt with the
            reason, and none of the request's labels is applied.
        reason : str
            Why, for the audit trail (e.g. ``"label-flip poisoning"``).
        request_id : str, optional
            Idempotency key; a new UUID by default.

        Returns
        -------
        str
            The request id, for the receipt (it names the records relabelled).

        Raises
        ------
        SchemaError
            The request is invalid (no label, a bad record id); nothing was sent.
        """
        event: RelabelRequested = _validated(
            RelabelRequested,
            request_id=request_id or uuid.uuid4().hex,
            model_id=model_id,
            labels=[{"record_id": rid, "label": label} for rid, label in labels.items()],
            reason=reason,
        )
        return self._send_request(event, event.model_id)

    def _send_request(self, event: Event, key: str) -> str:
        """Produce a request on ``unlearn.deletions`` and wait for the broker's ack."""
        future = self._producer.send(
            self.topics.deletions,
            key=key.encode(),
            value=encode_event(event),
            headers=[("type", type(event).__name__.encode())],
        )
        future.get(timeout=self.timeout)
        return event.idempotency_key

    def add_records(
        self, model_id: str, records: Iterable[Mapping[str, Any] | StoredRecord]
    ) -> list[str]:
        """Publish training records for ``model_id`` and wait until all are acknowledged.

        Parameters
        ----------
        model_id : str
        records : iterable of mapping or StoredRecord
            Each with ``record_id``, ``subject_id``, ``features`` (finite numbers) and
            ``label``; an optional ``event_id`` (default: a new UUID).

        Returns
        -------
        list of str
            The event ids, in order.

        Raises
        ------
        SchemaError
            A record is invalid; no record of the batch was sent.
        """
        events: list[RecordAdded] = []
        for i, rec in enumerate(records):
            fields = dict(rec) if isinstance(rec, Mapping) else vars(rec).copy()
            fields["features"] = [float(x) for x in fields["features"]]
            fields.setdefault("event_id", uuid.uuid4().hex)
            try:
                events.append(_validated(RecordAdded, model_id=model_id, **fields))
            except SchemaError as exc:
                where = f"records[{i}].{exc.field}"
                raise SchemaError(where, exc.value, exc.reason) from None
        topic = self.topics.records
        partitions = self._producer.partitions_for(topic)
        partition = partition_for(model_id, partitions) if partitions else None
        futures = [
            self._producer.send(
                topic,
                key=record_key(model_id, event.record_id),
                value=encode_event(event),
                partition=partition,
                headers=[("type", b"RecordAdded"), ("model_id", model_id.encode())],
            )
            for event in events
        ]
        self._producer.flush(timeout=self.timeout)
        for future in futures:
            future.get(timeout=self.timeout)
        return [event.event_id for event in events]

    def flush(self, timeout: float | None = None) -> None:
        """Wait until every queued event is acknowledged."""
        self._producer.flush(timeout=timeout if timeout is not None else self.timeout)

    def close(self) -> None:
        """Flush and close the producer."""
        self._producer.close(timeout=self.timeout)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

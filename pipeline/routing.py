"""The intake stage's hand-off: deletion requests routed to models, as per-model batches.

Deletion requests arrive keyed by subject; a model's state belongs to one model. As Kafka
Streams does with a repartition topic, the worker runs two stages:

1. **intake** (any worker, partitions of ``unlearn.deletions``): decodes, dead-letters,
   writes suppressions and ``received`` receipts, resolves each request to the models it
   concerns (:meth:`pipeline.applier.Applier.route`), and writes one :class:`ModelOps`
   per model to ``unlearn.model-ops``, keyed by model id and partitioned as
   ``unlearn.records`` is (murmur2 of the model id);
2. **owner** (the worker assigned that partition of ``unlearn.model-ops`` and, because
   faust assigns co-partitioned topics together, the same partition of
   ``unlearn.records``): applies the model's deletions and new records, alone.

This module turns routed requests into :class:`~pipeline.events.ModelOps` messages (split
to stay under the event size limit) and back into the applier's operations.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime

from pipeline.applier import Forget
from pipeline.events import ModelOps, Origin, RoutedRequest, encode_event
from pipeline.intake import Message

__all__ = ["forgets", "model_ops"]

_OVERHEAD = 512
"""Bytes of a ModelOps message besides its requests (ids, field names)."""


def model_ops(by_model: dict[str, list[Forget]], max_bytes: int) -> list[ModelOps]:
    """One or more :class:`ModelOps` per model, each at most ``max_bytes`` when encoded.

    Parameters
    ----------
    by_model : dict of str to list of Forget
        The routing of a batch (:meth:`~pipeline.applier.Applier.route`); every
        ``Forget`` carries the message it was decoded from.
    max_bytes : int
        The size limit of an event (``UNLEARN_MAX_EVENT_BYTES``); a single request is
        always below it, as it was accepted under the same limit.

    Returns
    -------
    list of ModelOps
        In model order, then request order. Event ids are derived from the model and the
        requests' origins, so a replayed intake batch produces the same ids.
    """
    out: list[ModelOps] = []
    for model_id, ops in by_model.items():
        chunk: list[RoutedRequest] = []
        size = _OVERHEAD
        for op in ops:
            routed = RoutedRequest(request=op.request, origin=_origin(op.message))
            n = len(routed.model_dump_json(by_alias=True))
            if chunk and size + n > max_bytes:
                out.append(_batch(model_id, chunk))
                chunk, size = [], _OVERHEAD
            chunk.append(routed)
            size += n
        if chunk:
            out.append(_batch(model_id, chunk))
    return out


def forgets(batches: Iterable[ModelOps]) -> list[Forget]:
    """The applier's operations of routed batches, each with a message that names where
    its request was first consumed (the dead-letter topic gets that origin and the
    request's JSON)."""
    return [
        Forget(
            routed.request,
            Message(
                routed.origin.topic,
                routed.origin.partition,
                routed.origin.offset,
                (routed.request.subject_id or routed.request.request_id).encode(),
                encode_event(routed.request),
                routed.origin.timestamp,
            ),
        )
        for batch in batches
        for routed in batch.requests
    ]


def _origin(message: Message | None) -> Origin:
    if message is None:
        return Origin(topic="-", partition=0, offset=0)
    return Origin(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=message.timestamp,
    )


def _batch(model_id: str, requests: Sequence[RoutedRequest]) -> ModelOps:
    first, last = requests[0].origin, requests[-1].origin
    ids = "\0".join(r.request.request_id for r in requests)
    digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
    return ModelOps(
        event_id=f"ops:{model_id}:{first.topic}:{first.partition}:{first.offset}-{last.offset}:{digest}",
        model_id=model_id,
        requests=list(requests),
        ts=datetime.now(UTC),
    )

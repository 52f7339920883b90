"""Notices: what a batch's outcomes say, as messages (topic, key, value, partition).

The worker sends them with :func:`workers.transport.deliver` and commits the batch's input
offsets only once the broker has taken them all. Per outcome, in order:

* ``ModelPublished`` on ``unlearn.model-updates``, keyed by model id;
* each ``Receipt`` on ``unlearn.receipts``, keyed by request id;
* each forwarded ``ModelOps`` (the intake stage's output) on ``unlearn.model-ops``, keyed
  by model id, to the model's partition;
* a tombstone (null value) per erased record on ``unlearn.records``, keyed
  ``model/record``, to the model's partition; then each corrected record's
  ``RecordAdded`` (relabelled, or without a forgotten column's value) under the same key
  and partition, so compaction drops the old message;
* ``RetrainRequested`` and ``RetrainCompleted`` on ``unlearn.retrain``, keyed by model id;

then a ``DeadLetter`` on ``unlearn.dead-letter`` per rejected event (keyed by the original
message's key). "The model's" partition is murmur2 of the model id over the partitions of
``unlearn.records``, which ``unlearn.model-ops`` shares: that is what makes one worker the
owner of a model (:func:`partition_of`).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from pipeline.events import encode_event
from pipeline.intake import Rejected, dead_letter
from pipeline.ops import Outcome
from pipeline.sdk.deletions import partition_for
from pipeline.topics import Topics, record_key

__all__ = ["Notice", "notices", "partition_of", "rejections"]

Notice = tuple[str, bytes | None, bytes | None, int | None]
"""A message to send: topic, key, value (``None``: a tombstone), partition (or ``None``)."""


def partition_of(model_id: str, partitions: int) -> int:
    """The partition of a model on ``unlearn.records`` and ``unlearn.model-ops``."""
    return partition_for(model_id, range(partitions))


def rejections(
    outcomes: Iterable[Outcome], rejected: Iterable[Rejected[Any]]
) -> list[Rejected[Any]]:
    """Every dead letter of a batch: those rejected while decoding, then each outcome's."""
    out = list(rejected)
    for outcome in outcomes:
        out.extend(outcome.rejected)
    return out


def notices(
    outcomes: Iterable[Outcome],
    rejected: Iterable[Rejected[Any]],
    topics: Topics,
    partitions: int,
) -> list[Notice]:
    """The messages of a batch's outcomes and dead letters; see the module docstring.

    Parameters
    ----------
    outcomes : iterable of Outcome
    rejected : iterable of Rejected
        Events rejected before they reached a model (decoding).
    topics : Topics
    partitions : int
        Partitions of ``unlearn.records`` (and ``unlearn.model-ops``).

    Returns
    -------
    list of Notice
        In the order given above, outcome by outcome; keys and values encoded.
    """
    outcomes = list(outcomes)
    messages: list[Notice] = []

    def send(name: str, key: str | bytes | None, value: bytes | None, part: int | None) -> None:
        messages.append((name, key.encode() if isinstance(key, str) else key, value, part))

    for outcome in outcomes:
        if outcome.published is not None:
            pub = outcome.published
            send(topics.model_updates, pub.model_id, encode_event(pub), None)
        for receipt in outcome.receipts:
            send(topics.receipts, receipt.request_id, encode_event(receipt), None)
        for ops in outcome.forward:  # the intake stage's per-model batches
            part = partition_of(ops.model_id, partitions)
            send(topics.model_ops, ops.model_id, encode_event(ops), part)
        if outcome.tombstones:
            part = partition_of(outcome.model_id, partitions)
            for record_id in outcome.tombstones:
                send(topics.records, record_key(outcome.model_id, record_id), None, part)
        for record in outcome.republish:
            part = partition_of(record.model_id, partitions)
            key = record_key(record.model_id, record.record_id)
            send(topics.records, key, encode_event(record), part)
        for event in (outcome.retrain, outcome.completed):
            if event is not None:
                send(topics.retrain, outcome.model_id, encode_event(event), None)
    for rej in rejections(outcomes, rejected):
        send(topics.dead_letter, rej.message.key, encode_event(dead_letter(rej)), None)
    return messages

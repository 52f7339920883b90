"""The broker's view of a request: its events on ``unlearn.deletions`` and, on the compacted
``unlearn.records`` topic, the last message of each of the models' record keys.

Read with kafka-python from the beginning of each partition to the end offsets seen at the
start (:func:`read_topic`); the request's events are found by their id as JSON writes it.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pipeline.errors import PipelineError
from pipeline.events import DeletionRequested, RecordAdded, decode_event
from pipeline.topics import Topics, record_key

__all__ = ["BrokerView", "produced_at", "read_topic", "read_topics"]

_TOPIC_TIMEOUT = 120.0


@dataclass
class BrokerView:
    """The broker's view: the request's events and the records topic's last messages."""

    requests: list[DeletionRequested]
    # record key -> (last value or None for a tombstone, broker timestamp ms, subjects seen)
    records: dict[bytes, tuple[bytes | None, int, set[str]]]


def read_topic(
    bootstrap: str, topic: str, config: Mapping[str, Any], timeout: float = _TOPIC_TIMEOUT
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Every message of ``topic`` (key, value, timestamp ms), from the beginning to the end
    offsets seen at the start."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **dict(config),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            msg = (
                f"topic {topic!r} does not exist on {bootstrap}: check UNLEARN_TOPIC_PREFIX "
                "and UNLEARN_KAFKA_BOOTSTRAP (or audit from Redis only)"
            )
            raise PipelineError(msg)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            waiting = [tp for tp in tps if consumer.position(tp) < end[tp]]
            if not waiting:
                return out
            if time.monotonic() > deadline:
                msg = (
                    f"reading {topic!r} took longer than {timeout:g} s ({len(out)} messages "
                    "read): is the broker reachable and the topic readable?"
                )
                raise PipelineError(msg)
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend((m.key, m.value, int(m.timestamp)) for m in batch)
    finally:
        consumer.close()


def read_topics(
    bootstrap: str, topics: Topics, request_id: str, models: set[str], config: Mapping[str, Any]
) -> BrokerView:
    requests = []
    # the id as JSON writes it (escaped quotes and backslashes; \\uXXXX or raw non-ASCII)
    needles = {
        json.dumps(request_id)[1:-1].encode(),
        json.dumps(request_id, ensure_ascii=False)[1:-1].encode(),
    }
    for _key, value, _ts in read_topic(bootstrap, topics.deletions, config):
        if value is None or not any(n in value for n in needles):
            continue
        try:
            event = decode_event(value, DeletionRequested)
        except PipelineError:
            continue  # a dead-lettered message
        if event.request_id == request_id:
            requests.append(event)
    prefixes = tuple(record_key(m, "") for m in models)
    records: dict[bytes, tuple[bytes | None, int, set[str]]] = {}
    for key, value, ts in read_topic(bootstrap, topics.records, config):
        if key is None or not key.startswith(prefixes):
            continue
        _old, _old_ts, subjects = records.get(key, (None, 0, set()))
        if value is not None:
            try:
                subjects.add(decode_event(value, RecordAdded).subject_id)
            except PipelineError:
                pass  # a refused record: dead-lettered, its key tombstoned
        records[key] = (value, ts, subjects)
    return BrokerView(requests, records)


def produced_at(value: bytes, broker_ms: int) -> float | None:
    """When a ``RecordAdded`` was produced: the earlier of its ``ts`` and the broker's."""
    try:
        event = decode_event(value, RecordAdded)
    except PipelineError:
        return None
    return min(event.ts.timestamp(), broker_ms / 1000.0)

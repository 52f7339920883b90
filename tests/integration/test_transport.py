"""deliver() against the real broker: every notice arrives once, where ``send`` puts it.

The worker sends a batch's notices as one record batch per topic partition
(``workers.transport``); these tests read them back from Tansu with a plain consumer.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.partitioner import DefaultPartitioner

from pipeline.embedded import EmbeddedServices
from pipeline.topics import Topics
from workers.transport import Notice, deliver


async def _deliver_and_read(bootstrap: str, messages: list[Notice], **producer: Any) -> list:
    kafka = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all", **producer)
    await kafka.start()
    try:
        await deliver(kafka, messages)
    finally:
        await kafka.stop()
    topics = sorted({topic for topic, *_ in messages})
    consumer = AIOKafkaConsumer(
        *topics, bootstrap_servers=bootstrap, auto_offset_reset="earliest", group_id=None
    )
    await consumer.start()
    read: list = []
    try:
        while len(read) < len(messages):
            batches = await asyncio.wait_for(consumer.getmany(timeout_ms=500), 30)
            for records in batches.values():
                read.extend(records)
    finally:
        await consumer.stop()
    return read


def test_notices_arrive_once_in_their_partitions_and_in_order(
    services: EmbeddedServices, topics: Topics
) -> None:
    receipts = [
        (topics.receipts, f"req-{i}".encode(), f'{{"n": {i}}}'.encode(), None) for i in range(60)
    ]
    tombstones = [(topics.records, f"m/r{i}".encode(), None, 1) for i in range(40)]
    # a batch holds a few hundred bytes here: the lists are split into several batches
    read = asyncio.run(
        _deliver_and_read(services.kafka_bootstrap, receipts + tombstones, max_batch_size=512)
    )
    assert len(read) == len(receipts) + len(tombstones)
    partitioner = DefaultPartitioner()
    for record in read:
        if record.topic == topics.receipts:
            assert record.partition == partitioner(record.key, [0, 1, 2], [0, 1, 2])
        else:
            assert record.partition == 1 and record.value is None
    got_tombstones = [r.key for r in read if r.topic == topics.records]
    assert got_tombstones == [key for _, key, _, _ in tombstones]  # one partition: in order
    got_receipts = {r.key: r.value for r in read if r.topic == topics.receipts}
    assert got_receipts == {key: value for _, key, value, _ in receipts}


def test_a_notice_larger_than_a_batch_is_delivered(
    services: EmbeddedServices, topics: Topics
) -> None:
    big = b"x" * 200_000
    messages: list[Notice] = [
        (topics.dead_letter, b"small-1", b"{}", 0),
        (topics.dead_letter, b"big", big, 0),
        (topics.dead_letter, b"small-2", b"{}", 0),
    ]
    read = asyncio.run(_deliver_and_read(services.kafka_bootstrap, messages, max_batch_size=16_384))
    assert [(r.key, len(r.value)) for r in read] == [
        (b"small-1", 2),
        (b"big", 200_000),
        (b"small-2", 2),
    ]

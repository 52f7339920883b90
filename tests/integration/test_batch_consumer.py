"""BatchConsumer against the real broker: batches, and offsets only after the handler.

The worker reads ``unlearn.deletions`` with :class:`workers.consumer.BatchConsumer`, which
commits a batch's offsets itself. These tests check, on Tansu, what the delivery guarantee
rests on: every message is handed over, in order within its partition, in batches of at
most ``max_batch``; a batch whose handler fails is not committed, so the group reads it
again (at least once).
"""

from __future__ import annotations

import asyncio

from aiokafka import AIOKafkaProducer

from pipeline.embedded import EmbeddedServices
from pipeline.intake import Message
from pipeline.topics import Topics
from workers.consumer import BatchConsumer

FAST = {"session_timeout_ms": 2000, "heartbeat_interval_ms": 500, "fetch_max_wait_ms": 50}


async def _produce(bootstrap: str, topic: str, n: int) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for i in range(n):
            await producer.send(topic, f"m{i}".encode(), key=f"k{i % 7}".encode())
        await producer.flush()
    finally:
        await producer.stop()


async def _consume(
    bootstrap: str, topic: str, group: str, until: int, fail_first: bool = False
) -> tuple[list[list[Message]], BaseException | None]:
    batches: list[list[Message]] = []
    seen = 0
    done = asyncio.Event()

    async def handle(messages: list[Message]) -> None:
        nonlocal seen
        if fail_first and not batches:
            batches.append(messages)
            raise RuntimeError("the handler failed")
        batches.append(messages)
        seen += len(messages)
        if seen >= until:
            done.set()

    consumer = BatchConsumer(
        topic, group, bootstrap, handle, max_batch=40, max_wait=0.05, config=FAST
    )
    task = asyncio.ensure_future(consumer.run())
    waiter = asyncio.ensure_future(done.wait())
    await asyncio.wait([task, waiter], timeout=60, return_when=asyncio.FIRST_COMPLETED)
    error = task.exception() if task.done() else None
    for pending in (task, waiter):
        pending.cancel()
    await asyncio.gather(task, waiter, return_exceptions=True)
    return batches, error


def test_every_message_arrives_in_partition_order_in_bounded_batches(
    services: EmbeddedServices, topics: Topics
) -> None:
    bootstrap, topic = services.kafka_bootstrap, topics.deletions
    asyncio.run(_produce(bootstrap, topic, 300))
    batches, error = asyncio.run(_consume(bootstrap, topic, f"{topic}-g", until=300))
    assert error is None
    assert all(0 < len(b) <= 40 for b in batches)
    got = [m for b in batches for m in b]
    assert sorted(m.value for m in got) == sorted(f"m{i}".encode() for i in range(300))
    for partition in {m.partition for m in got}:
        offsets = [m.offset for m in got if m.partition == partition]
        assert offsets == sorted(offsets) and len(set(offsets)) == len(offsets)
    assert all(m.timestamp is not None and m.topic == topic for m in got)


def test_a_failed_batch_is_not_committed_and_is_read_again(
    services: EmbeddedServices, topics: Topics
) -> None:
    bootstrap, topic = services.kafka_bootstrap, topics.deletions
    group = f"{topic}-g"
    asyncio.run(_produce(bootstrap, topic, 100))
    first, error = asyncio.run(_consume(bootstrap, topic, group, until=100, fail_first=True))
    assert isinstance(error, RuntimeError)
    failed = {(m.partition, m.offset) for m in first[0]}
    # the same group again: the failed batch is read again, and everything else
    again, error = asyncio.run(_consume(bootstrap, topic, group, until=100))
    assert error is None
    reread = {(m.partition, m.offset) for b in again for m in b}
    assert failed <= reread
    assert len(reread) == 100


def test_committed_offsets_are_not_read_again(services: EmbeddedServices, topics: Topics) -> None:
    bootstrap, topic = services.kafka_bootstrap, topics.deletions
    handled = 100
    group = f"{topic}-g"
    asyncio.run(_produce(bootstrap, topic, handled))
    _, error = asyncio.run(_consume(bootstrap, topic, group, until=handled))
    assert error is None
    asyncio.run(_produce(bootstrap, topic, 10))
    later, error = asyncio.run(_consume(bootstrap, topic, group, until=10))
    assert error is None
    assert sum(len(b) for b in later) == 10


async def _produce_to(bootstrap: str, topic: str, per_partition: dict[int, int]) -> None:
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for partition, n in per_partition.items():
            for i in range(n):
                await producer.send(topic, f"p{partition}-{i}".encode(), partition=partition)
        await producer.flush()
    finally:
        await producer.stop()


def test_a_follower_reads_only_the_partitions_it_is_given_and_hands_them_on_committed(
    services: EmbeddedServices, topics: Topics
) -> None:
    """The records consumer follows faust's assignment of the model-ops partitions: it
    reads what it is told, and a partition it gives up leaves with its offsets."""
    bootstrap, topic = services.kafka_bootstrap, topics.records
    group = f"{topic}-g"
    asyncio.run(_produce_to(bootstrap, topic, {0: 30, 1: 30, 2: 30}))

    async def follow(steps: list[tuple[set[int], int]]) -> list[set[tuple[int, int]]]:
        """Follow each step's partitions until that many messages were handled."""
        seen: list[set[tuple[int, int]]] = []

        async def handle(messages: list[Message]) -> None:
            seen[-1].update((m.partition, m.offset) for m in messages)

        consumer = BatchConsumer(
            topic, group, bootstrap, handle, max_batch=40, max_wait=0.05, config=FAST, follow=True
        )
        task = asyncio.ensure_future(consumer.run())
        try:
            for partitions, expected in steps:
                seen.append(set())
                await consumer.follow(partitions)
                deadline = asyncio.get_running_loop().time() + 60
                while len(seen[-1]) < expected:
                    assert not task.done(), task.exception()
                    assert asyncio.get_running_loop().time() < deadline, (partitions, seen)
                    await asyncio.sleep(0.05)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        return seen

    only_0, the_rest = asyncio.run(follow([({0}, 30), ({1, 2}, 60)]))
    assert {p for p, _ in only_0} == {0} and len(only_0) == 30
    assert {p for p, _ in the_rest} == {1, 2} and len(the_rest) == 60
    # partition 0 was committed when it was given up: a new follower of it reads only
    # what came after
    asyncio.run(_produce_to(bootstrap, topic, {0: 5}))
    (again,) = asyncio.run(follow([({0}, 5)]))
    assert again == {(0, offset) for offset in range(30, 35)}

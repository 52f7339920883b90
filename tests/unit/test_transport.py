"""deliver(): a batch's notices are sent again until the broker takes them all.

The broker outage itself runs against the real Tansu in tests/reliability/test_restarts.py;
here a producer that fails on cue pins down what is retried and what is not.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError
from aiokafka.partitioner import DefaultPartitioner

from pipeline.retry import Backoff
from workers.transport import deliver

FAST = Backoff(initial=0.001, cap=0.002, jitter=0.0)


class FlakyBatch:
    def __init__(self, capacity: int) -> None:
        self.items: list[tuple] = []
        self.capacity = capacity

    def append(self, *, key, value, timestamp):
        if len(self.items) >= self.capacity:
            return None
        self.items.append((key, value))
        return object()

    def record_count(self) -> int:
        return len(self.items)


class FlakyProducer:
    """aiokafka's batch interface; the delivery futures of the first ``failures`` rounds fail.

    A round is one call of ``deliver``'s sending; ``rounds`` records what each sent as
    ``(topic, key, value, partition)``, batches in order.
    """

    def __init__(self, failures: int, error: Exception, capacity: int = 100) -> None:
        self.failures, self.error, self.capacity = failures, error, capacity
        self.rounds: list[list[tuple]] = []
        self.expected = 0

    def expect(self, n: int) -> FlakyProducer:
        self.expected = n
        return self

    async def partitions_for(self, topic):
        return {0, 1, 2}

    def create_batch(self) -> FlakyBatch:
        return FlakyBatch(self.capacity)

    def _sent(self, messages: list[tuple]) -> asyncio.Future:
        if not self.rounds or len(self.rounds[-1]) == self.expected:
            self.rounds.append([])
        self.rounds[-1].extend(messages)
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if len(self.rounds) <= self.failures:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future

    async def send_batch(self, batch, topic, *, partition):
        return self._sent([(topic, k, v, partition) for k, v in batch.items])

    async def send(self, topic, value, *, key, partition):
        return self._sent([(topic, key, value, partition)])


MESSAGES = [("receipts", b"req-1", b"{}", 1), ("records", b"m/r1", None, 2)]


def test_a_retriable_failure_sends_the_whole_batch_again(caplog) -> None:
    producer = FlakyProducer(2, KafkaConnectionError("broker away")).expect(len(MESSAGES))
    with caplog.at_level(logging.WARNING, logger="unlearn.worker"):
        asyncio.run(deliver(producer, MESSAGES, FAST))
    assert producer.rounds == [MESSAGES] * 3  # two failed rounds, then all taken
    assert caplog.text.count("sending them again") == 2
    assert "took the 2 notices after 2 retries" in caplog.text


def test_a_non_retriable_failure_is_raised() -> None:
    producer = FlakyProducer(1, MessageSizeTooLargeError()).expect(len(MESSAGES))
    with pytest.raises(MessageSizeTooLargeError):
        asyncio.run(deliver(producer, MESSAGES, FAST))
    assert len(producer.rounds) == 1


def test_a_keyed_message_goes_where_send_would_put_it() -> None:
    producer = FlakyProducer(0, KafkaConnectionError("unused")).expect(4)
    keys = [b"req-1", b"req-2", b"req-3", b"req-4"]
    asyncio.run(deliver(producer, [("receipts", k, b"{}", None) for k in keys], FAST))
    placed = {key: partition for _, key, _, partition in producer.rounds[0]}
    partitioner = DefaultPartitioner()
    assert placed == {k: partitioner(k, [0, 1, 2], [0, 1, 2]) for k in keys}


def test_full_batches_are_split_and_keep_the_order() -> None:
    producer = FlakyProducer(0, KafkaConnectionError("unused"), capacity=2).expect(5)
    messages = [("records", f"m/r{i}".encode(), None, 0) for i in range(5)]
    asyncio.run(deliver(producer, messages, FAST))
    assert producer.rounds == [messages]


def test_a_message_larger_than_a_batch_is_sent_on_its_own() -> None:
    producer = FlakyProducer(0, KafkaConnectionError("unused"), capacity=0).expect(2)
    asyncio.run(deliver(producer, MESSAGES, FAST))
    assert producer.rounds == [MESSAGES]

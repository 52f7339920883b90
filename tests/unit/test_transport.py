"""deliver(): a batch's notices are sent again until the broker takes them all.

The broker outage itself runs against the real Tansu in tests/reliability/test_restarts.py;
here a producer that fails on cue pins down what is retried and what is not.
"""

from __future__ import annotations

import asyncio
import logging

import pytest
from aiokafka.errors import KafkaConnectionError, MessageSizeTooLargeError

from pipeline.retry import Backoff
from workers.transport import deliver

FAST = Backoff(initial=0.001, cap=0.002, jitter=0.0)


class FlakyProducer:
    """Accepts sends; the delivery futures of the first ``failures`` rounds fail."""

    def __init__(self, failures: int, error: Exception) -> None:
        self.failures, self.error = failures, error
        self.rounds: list[list[tuple]] = []
        self._current: list[tuple] | None = None

    async def send(self, topic, key, value, partition, timestamp, headers):
        if self._current is None or len(self._current) == self._expected:
            self._current = []
            self.rounds.append(self._current)
        self._current.append((topic, key, value, partition))
        future: asyncio.Future = asyncio.get_running_loop().create_future()
        if len(self.rounds) <= self.failures:
            future.set_exception(self.error)
        else:
            future.set_result(None)
        return future

    def expect(self, n: int) -> FlakyProducer:
        self._expected = n
        return self


MESSAGES = [("receipts", b"req-1", b"{}", None), ("records", b"m/r1", None, 2)]


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

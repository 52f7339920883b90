"""faust's Kafka transport with the consumer's fetch wait under our control.

faust-streaming builds its worker consumer with ``fetch_max_wait_ms=1500`` written into
the code (``faust/transport/drivers/aiokafka.py``), with no setting to change it. A
broker may hold a fetch that long when the partition has no new data, and the embedded
Tansu broker does so even when data arrives meanwhile: measured with aiokafka against
Tansu at 2,000 messages/s, the delivery latency was p50 281 ms / p99 771 ms with a
1,500 ms wait and p50 16 ms / p99 60 ms with 100 ms (at 1,000 messages/s: p50 12 / p99
56 ms with 100 ms, p50 4 / p99 31 ms with 50 ms, the default). The deletion path's latency target
(p99 under 250 ms) cannot be met with faust's value, so the worker uses
``Settings.fetch_max_wait`` instead.

Only the consumer changes; the producer and everything else are faust's own.

:func:`deliver` sends a batch's notices (receipts, versions, tombstones, dead letters)
with the aiokafka producer under faust's, one record batch per topic partition, and
retries them until the broker has taken them all. A deletion has two notices (its receipt
and its record's tombstone); sent one by one, each with its own delivery future, they
cost the worker's event loop about as much as faust's whole consumer path did in a
profile of the throughput benchmark.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.partitioner import DefaultPartitioner
from faust.transport.drivers import aiokafka as driver

from pipeline.notices import Notice
from pipeline.retry import Backoff

__all__ = ["App", "Notice", "deliver"]

log = logging.getLogger("unlearn.worker")


class _ConsumerThread(driver.AIOKafkaConsumerThread):
    def _create_worker_consumer(self, transport: Any) -> Any:
        consumer = super()._create_worker_consumer(transport)
        wait = getattr(self.app, "fetch_max_wait_ms", None)
        if wait is not None:
            # read by AIOKafkaConsumer.start() when it builds its Fetcher
            consumer._fetch_max_wait_ms = int(wait)
        return consumer


class _Consumer(driver.Consumer):
    def _new_consumer_thread(self) -> _ConsumerThread:
        return _ConsumerThread(self, loop=self.loop, beacon=self.beacon)


class _Transport(driver.Transport):
    Consumer = _Consumer


class App(faust.App):
    """A ``faust.App`` whose Kafka consumer waits at most ``fetch_max_wait`` seconds.

    Parameters
    ----------
    *args, **kwargs
        As ``faust.App``.
    fetch_max_wait : float
        Seconds (``fetch_max_wait_ms`` of the aiokafka consumer).
    """

    def __init__(self, *args: Any, fetch_max_wait: float, **kwargs: Any) -> None:
        self.fetch_max_wait_ms = round(fetch_max_wait * 1000)
        super().__init__(*args, **kwargs)

    def _new_transport(self) -> Any:
        return _Transport(self.conf.broker_consumer, self)

    def kafka_producer(self) -> Any:
        """The ``AIOKafkaProducer`` under faust's producer (running once the app is)."""
        return self.producer._ensure_producer()


def _retriable(exc: BaseException) -> bool:
    return isinstance(exc, KafkaTimeoutError) or bool(getattr(exc, "retriable", False))


async def deliver(
    producer: Any, messages: Sequence[Notice], backoff: Backoff | None = None
) -> None:
    """Send ``messages`` and wait until the broker acknowledged every one.

    A retriable broker error (unreachable, timed out, leader moving) sends the whole list
    again after a capped exponential backoff, for as long as it takes: the caller commits
    its input offsets only afterwards, so giving up would lose the notices. Repeats are
    harmless: every notice's ``event_id`` is deterministic and consumers drop repeats.
    A non-retriable error (a message too large) is raised.

    Parameters
    ----------
    producer
        An ``AIOKafkaProducer`` (:meth:`App.kafka_producer`): its batch interface
        (``create_batch``, ``send_batch``, ``partitions_for``) and, for a message too large
        for an empty batch, ``send``.
    """
    delays = (backoff or Backoff()).delays()
    tries = 0
    while True:
        try:
            futures = await _send_batches(producer, messages)
            # wait for every one (their errors retrieved), then raise the first error
            results = await asyncio.gather(*futures, return_exceptions=True)
            failed = next((r for r in results if isinstance(r, BaseException)), None)
            if failed is not None:
                raise failed
        except KafkaError as exc:
            if not _retriable(exc):
                raise
            tries += 1
            delay = next(delays)
            log.warning(
                "the broker did not take %d notices (%s: %s); sending them again in %.1f s",
                len(messages),
                type(exc).__name__,
                exc,
                delay,
            )
            await asyncio.sleep(delay)
            continue
        if tries:
            log.warning("the broker took the %d notices after %d retries", len(messages), tries)
        return


_PARTITIONER = DefaultPartitioner()  # aiokafka's (murmur2 of the key), as ``send`` uses


async def _send_batches(producer: Any, messages: Sequence[Notice]) -> list[asyncio.Future[Any]]:
    """Submit ``messages`` as record batches, one per topic partition; their futures.

    A message without a partition goes where ``producer.send`` would put it (the key's
    murmur2 hash over the topic's partitions), so keyed notices keep their order per key.
    """
    by_partition: dict[tuple[str, int], list[tuple[bytes | None, bytes | None]]] = {}
    partitions: dict[str, list[int]] = {}
    for topic, key, value, partition in messages:
        if partition is None:
            if topic not in partitions:
                partitions[topic] = sorted(await producer.partitions_for(topic))
            partition = _PARTITIONER(key, partitions[topic], partitions[topic])
        by_partition.setdefault((topic, partition), []).append((key, value))
    futures = []
    for (topic, partition), items in by_partition.items():
        batch = producer.create_batch()
        for key, value in items:
            if batch.append(key=key, value=value, timestamp=None) is not None:
                continue
            if batch.record_count():
                futures.append(await producer.send_batch(batch, topic, partition=partition))
                batch = producer.create_batch()
                if batch.append(key=key, value=value, timestamp=None) is not None:
                    continue
            # larger than a whole batch: on its own, up to the producer's request size
            futures.append(await producer.send(topic, value, key=key, partition=partition))
            batch = producer.create_batch()
        if batch.record_count():
            futures.append(await producer.send_batch(batch, topic, partition=partition))
    return futures

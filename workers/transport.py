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
with faust's producer directly (faust's ``Topic.send`` machinery cost more than the
sends in a profile of the worker) and retries them until the broker has taken them all.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

import faust
from aiokafka.errors import KafkaError, KafkaTimeoutError
from faust.transport.drivers import aiokafka as driver

from pipeline.retry import Backoff

__all__ = ["App", "Notice", "deliver"]

log = logging.getLogger("unlearn.worker")

Notice = tuple[str, bytes | None, bytes | None, int | None]
"""A message to send: topic, key, value (``None``: a tombstone), partition (or ``None``)."""


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
        faust's producer (``app.producer``): ``await producer.send(topic, key, value,
        partition, timestamp, headers)`` returns the delivery future.
    """
    delays = (backoff or Backoff()).delays()
    tries = 0
    while True:
        try:
            futures = [await producer.send(t, k, v, p, None, None) for t, k, v, p in messages]
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

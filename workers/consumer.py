"""The deletion topic's consumer: record batches straight from aiokafka.

faust hands an agent one event at a time through its stream machinery (about 100-130 µs
per event on the benchmark machine, measured with an agent that does nothing), even when
the agent takes them in batches. ``unlearn.deletions`` carries the pipeline's highest
volume and its intake stage needs no faust feature: no table, no co-partitioning (any
worker may route any request), no exactly-once. So the worker reads it with an aiokafka
consumer of its own (``getmany``), in a consumer group of its own, inside the faust app's
lifecycle, and commits a batch's offsets itself once the batch's outputs are acknowledged
(:class:`BatchConsumer`). The owner stage (``unlearn.model-ops`` and ``unlearn.records``)
stays a faust agent: co-partitioning is what makes one worker the owner of a model.

Delivery is at least once, as with the agents: a batch is committed only after its
handler returns (its versions and receipts in Redis, its notices taken by the broker). A
rebalance waits for the batch in hand, so a partition moves with its offsets committed;
records fetched but not yet handled are read again by the partition's next owner, and
replays are harmless (the applier's replay check).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.abc import ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import OffsetAndMetadata

from pipeline.intake import Message, _when

__all__ = ["BatchConsumer"]

log = logging.getLogger("unlearn.worker")

Handler = Callable[[list[Message]], Awaitable[None]]


class _Drain(ConsumerRebalanceListener):  # type: ignore[misc]
    """Let the batch in hand finish (and commit) before partitions move."""

    def __init__(self, busy: asyncio.Lock) -> None:
        self._busy = busy

    async def on_partitions_revoked(self, revoked: Any) -> None:
        async with self._busy:
            pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None


class BatchConsumer:
    """Consume one topic in batches of up to ``max_batch``, filled for at most ``max_wait``.

    Two ways to get partitions: as a member of its consumer group (the default: the
    group's assignment), or following another assignment (``follow=True``): it reads
    only the partitions :meth:`follow` names, and uses the group only for its offsets.
    The worker reads ``unlearn.records`` that way, following faust's assignment of
    ``unlearn.model-ops``, so that a model's records reach the worker that owns it.

    Parameters
    ----------
    topic : str
    group_id : str
        A consumer group of its own (not the faust app's: its assignment is independent).
    bootstrap : str
    handle : async callable
        Called with each batch, in partition order within a partition; the batch's offsets
        are committed when it returns. An exception stops the consumer (and is raised by
        :meth:`run`); the batch is then read again by whoever next holds its partitions.
    max_batch, max_wait : int, float
        As the agents' ``take_events(max_batch, within=max_wait)``.
    config : dict
        More ``AIOKafkaConsumer`` options (timeouts, fetch sizes, security).
    follow : bool
        Read the partitions given to :meth:`follow` (none until then), not the group's.
    """

    def __init__(
        self,
        topic: str,
        group_id: str,
        bootstrap: str,
        handle: Handler,
        *,
        max_batch: int,
        max_wait: float,
        config: Mapping[str, Any] | None = None,
        follow: bool = False,
    ) -> None:
        self.topic = topic
        self.follows = follow
        self._busy = asyncio.Lock()  # held while a batch is handled and committed
        self._wanted: list[TopicPartition] = []
        self._assigned = asyncio.Event()
        self.group_id = group_id
        self.max_batch = max_batch
        self.max_wait = max_wait
        self.handle = handle
        """The batch handler (a stage of the worker; tests call it directly)."""
        self._options = {
            "bootstrap_servers": bootstrap,
            "group_id": group_id,
            "enable_auto_commit": False,
            "auto_offset_reset": "earliest",
            **(config or {}),
        }
        self._consumer: AIOKafkaConsumer | None = None  # made in run(): it needs the loop
        self.committed: dict[TopicPartition, int] = {}
        """The offset committed last per partition (for the lag gauge)."""

    async def run(self) -> None:
        """Consume until cancelled."""
        self._consumer = consumer = AIOKafkaConsumer(**self._options)
        if self.follows:
            consumer.assign(self._wanted)
        else:
            consumer.subscribe([self.topic], listener=_Drain(self._busy))
        await consumer.start()
        try:
            while True:
                if self.follows and not self._wanted:
                    await self._assigned.wait()
                    continue
                batch = await self._take()
                async with self._busy:
                    # partitions that moved while the batch was filled are their next
                    # holder's, from the offsets committed before they moved
                    held = consumer.assignment()
                    batch = {tp: ms for tp, ms in batch.items() if tp in held and ms}
                    if batch:
                        await self.handle([m for records in batch.values() for m in records])
                        await self._commit(batch)
        finally:
            await consumer.stop()

    async def follow(self, partitions: Iterable[int]) -> None:
        """Read exactly these partitions of the topic (``follow=True`` only), once the
        batch in hand is handled and committed: a partition leaves with its offsets."""
        wanted = sorted(TopicPartition(self.topic, p) for p in set(partitions))
        async with self._busy:
            self._wanted = wanted
            if self._consumer is not None:
                self._consumer.assign(wanted)
            if wanted:
                self._assigned.set()
            else:
                self._assigned.clear()

    def lag(self) -> tuple[dict[TopicPartition, int], dict[TopicPartition, int]]:
        """End offsets and committed offsets of the assigned partitions."""
        consumer = self._consumer
        ends: dict[TopicPartition, int] = {}
        if consumer is None:
            return ends, {}
        for tp in consumer.assignment():
            end = consumer.highwater(tp)
            if end is not None:
                ends[tp] = end
        return ends, {tp: self.committed.get(tp, 0) for tp in ends}

    async def _take(self) -> dict[TopicPartition, list[Message]]:
        """Records for a batch: the first that arrive, then more until it is full or
        ``max_wait`` has passed since the first."""
        consumer = self._consumer
        assert consumer is not None
        out: dict[TopicPartition, list[Message]] = {}
        n = 0
        deadline: float | None = None
        while n < self.max_batch:
            wait = 1.0 if deadline is None else deadline - time.monotonic()
            if deadline is not None and wait <= 0:
                break
            fetched = await consumer.getmany(
                timeout_ms=max(1, int(wait * 1000)), max_records=self.max_batch - n
            )
            if not fetched:
                if deadline is None:
                    continue  # nothing yet: keep polling (cancellation ends the loop)
                break
            for tp, records in fetched.items():
                out.setdefault(tp, []).extend(
                    Message(
                        r.topic,
                        r.partition,
                        r.offset,
                        r.key,
                        r.value,
                        _when(r.timestamp / 1000 if r.timestamp is not None else None),
                    )
                    for r in records
                )
                n += len(records)
            if deadline is None:
                deadline = time.monotonic() + self.max_wait
        return out

    async def _commit(self, batch: dict[TopicPartition, list[Message]]) -> None:
        offsets = {tp: records[-1].offset + 1 for tp, records in batch.items() if records}
        assert self._consumer is not None
        try:
            await self._consumer.commit(
                {tp: OffsetAndMetadata(offset, "") for tp, offset in offsets.items()}
            )
        except (CommitFailedError, KafkaError) as exc:
            # the group moved on (this worker was too slow or fenced): the partitions'
            # next holder reads the batch again, which is harmless
            log.warning("committing a %s batch failed (%s): it will be replayed", self.topic, exc)
            return
        self.committed.update(offsets)

"""What the worker's agents share: the writer's thread, decoding, isolation, publishing.

Everything that touches the models runs on ONE executor thread (:meth:`Runtime.run`: the
applier is the single writer of the models this process holds), so the event loop keeps
heartbeating and committing during a large batch. Side work that only reads or writes
Redis (the gauges, the status key) has a thread of its own (:meth:`Runtime.aside`): queued
behind it, a batch would wait for it.

Each agent's batch goes the same way: :meth:`Runtime.decode` (bad input becomes dead
letters, counted), :meth:`Runtime.guarded` (Redis outages retried, a message that breaks
the code isolated by bisection), :meth:`Runtime.publish` (the notices of
:func:`pipeline.notices.notices`, sent until the broker took them all; only then does the
agent take its next batch and its offsets get committed: at-least-once).
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import os
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, TypeVar

from pipeline.applier import Applier
from pipeline.config import Settings
from pipeline.events import Event
from pipeline.intake import Message, Rejected, decode_message
from pipeline.metrics import Metrics, default_metrics
from pipeline.notices import notices, partition_of, rejections
from pipeline.ops import Outcome
from pipeline.retry import Outage, retry_transient
from pipeline.routing import Router
from pipeline.store import Store
from pipeline.topics import Topics
from workers.transport import deliver

__all__ = ["Runtime"]

log = logging.getLogger("unlearn.worker")
T = TypeVar("T")
Parse = type[Event] | Callable[..., Any]
"""How a batch's messages are decoded: an event type, or ``f(message, *, max_bytes)``."""
EventTimes = Callable[[Outcome], list[datetime]]
"""The event times of the inputs an outcome answers (for the latency histogram)."""


@dataclass
class Runtime:
    """What the agents share: settings, Redis state, the applier and its one thread.

    ``app`` is the faust app (its producer sends the notices, its consumer's assignment
    says which models this worker owns); ``None`` where no app runs.
    """

    settings: Settings
    store: Store
    applier: Applier
    router: Router
    topics: Topics
    record_partitions: int
    name: str
    app: Any = None
    metrics: Metrics = field(default_factory=default_metrics)
    metrics_port: int | None = None
    executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="unlearn-apply")
    )
    side_executor: ThreadPoolExecutor = field(
        default_factory=lambda: ThreadPoolExecutor(1, thread_name_prefix="unlearn-side")
    )
    started: float = field(default_factory=time.time)
    assigned: int = 0
    outage: Outage = field(default_factory=lambda: Outage(log))  # Redis unreachable
    consumers: dict[str, Any] = field(default_factory=dict)
    """The stages read with batch consumers, by name (``intake``, ``records``)."""

    # ---- threads -----------------------------------------------------------------------
    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the applier's thread."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.executor, self._run_and_settle, fn, args)

    async def aside(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn`` on the side thread: work that never touches the applier's models."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self.side_executor, fn, *args)

    def _run_and_settle(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        loads = self.applier.loads
        try:
            return fn(*args)
        finally:
            if self.applier.loads != loads:
                _settle_heap()

    # ---- status and ownership ----------------------------------------------------------
    def status(self) -> dict[str, Any]:
        return {
            "pid": os.getpid(),
            "metrics_port": self.metrics_port,
            "assigned_partitions": self.assigned,
            "started_at": self.started,
            "updated_at": time.time(),
        }

    def write_status(self) -> None:
        self.store.client.set(self.store.keys.worker(self.name), json.dumps(self.status()), ex=30)

    def owns(self, model_id: str) -> bool:
        """This worker holds the model's partition of ``unlearn.model-ops`` (and, faust
        assigning co-partitioned topics together, of ``unlearn.records``)."""
        consumer = self.app.consumer if self.app is not None else None
        assignment = consumer.assignment() if consumer is not None else set()
        partition = partition_of(model_id, self.record_partitions)
        return any(
            tp.topic == self.topics.model_ops and tp.partition == partition for tp in assignment
        )

    # ---- a batch: decode, apply guarded, publish ---------------------------------------
    def decode(self, events: Sequence[Any], parse: Parse) -> tuple[list[Any], list[Any]]:
        """(event, message) pairs and rejections of a batch of faust events or consumed
        :class:`~pipeline.intake.Message`; ``parse`` decodes a message: an event type
        (:func:`~pipeline.intake.decode_message`) or a function of the message and the
        size limit returning an event, a Rejected or None."""
        max_bytes = self.settings.max_event_bytes
        good, bad = [], []
        topics: dict[str, int] = {}
        for event in events:
            msg = event if isinstance(event, Message) else Message.from_faust(event)
            topics[msg.topic] = topics.get(msg.topic, 0) + 1
            result = (
                decode_message(msg, parse, max_bytes=max_bytes)
                if isinstance(parse, type)
                else parse(msg, max_bytes=max_bytes)
            )
            if isinstance(result, Rejected):
                bad.append(result)
            elif result is not None:
                good.append((result, msg))
        for name, n in topics.items():
            self.metrics.consumed(name, n)
        return good, bad

    async def guarded(
        self,
        what: str,
        items: Sequence[Any],
        work: Callable[[Sequence[Any]], Awaitable[list[Outcome]]],
        message_of: Callable[[Any], Message | None],
    ) -> list[Outcome]:
        """Run ``work(items)`` until Redis takes it; isolate a message that breaks it.

        Redis unreachable (:func:`pipeline.retry.is_transient`) is not the batch's fault:
        the batch is retried with backoff, its offsets uncommitted, for as long as it takes.
        Any other error is a message the code cannot handle (a bug): the batch is split in
        halves, each applied on its own (replays are harmless), down to the one message
        that fails, which alone is dead-lettered; every other message is applied.
        """
        try:
            return await retry_transient(lambda: work(items), f"the {what} batch", self.outage)
        except Exception as exc:  # a bug: keep the evidence, keep the rest of the batch
            if len(items) > 1:
                log.warning(
                    "a %s batch of %d failed (%r): applying its halves apart",
                    what,
                    len(items),
                    exc,
                )
                half = len(items) // 2
                first = await self.guarded(what, items[:half], work, message_of)
                return first + await self.guarded(what, items[half:], work, message_of)
            log.exception("applying a %s message failed; dead-lettering it", what)
            msg = message_of(items[0]) if items else None
            if msg is None:
                return []
            return [Outcome("*", rejected=[Rejected(msg, "internal_error", repr(exc)[:1500])])]

    async def publish(
        self,
        outcomes: Iterable[Outcome],
        rejected: Iterable[Rejected[Any]],
        agent: str = "",
        event_times: EventTimes | None = None,
    ) -> None:
        """Send every notice of the outcomes and the dead letters; wait for the broker.

        Retried until the broker takes them all (:func:`workers.transport.deliver`): the
        batch's offsets are committed only after this returns. Counts and logs what the
        notices say (versions, latencies, retrain triggers, dead letters).
        """
        outcomes = list(outcomes)
        rejected = list(rejected)
        self._observe(outcomes, rejected, agent, event_times)
        messages = notices(outcomes, rejected, self.topics, self.record_partitions)
        await deliver(self.app.kafka_producer(), messages)
        sent = [
            (o.model_id, o.tombstones, [r.record_id for r in o.republish])
            for o in outcomes
            if (o.tombstones or o.republish) and o.model_id != "*"
        ]
        if sent:  # the broker has them: the ids kept for a crash's replay can go
            with self.outage.tolerated("clearing delivered tombstones and corrections"):
                await self.run(self._delivered, sent)

    def _delivered(self, sent: list[tuple[str, list[str], list[str]]]) -> None:
        for model_id, tombstones, corrected in sent:
            self.store.records.tombstones_delivered(model_id, tombstones)
            self.store.records.corrections_delivered(model_id, corrected)

    def _observe(
        self,
        outcomes: list[Outcome],
        rejected: list[Rejected[Any]],
        agent: str,
        event_times: EventTimes | None,
    ) -> None:
        metrics = self.metrics
        for outcome in outcomes:
            pub = outcome.published
            if pub is not None:
                metrics.published(
                    pub.model_id,
                    version=pub.version,
                    certificate=pub.certificate,
                    budget=pub.budget,
                    accuracy=pub.holdout_metrics.get("accuracy"),
                    at=pub.ts,
                )
                metrics.class_accuracies(pub.model_id, pub.holdout_metrics)
                for report in outcome.reports:
                    metrics.applied(report.method, report.n_removed, report.n_added)
                if event_times is not None:
                    metrics.latencies(agent, datetime.now(UTC), event_times(outcome))
            if outcome.retrain is not None:
                metrics.retrain_triggers.labels(outcome.retrain.reason, "requested").inc()
            if outcome.held_back is not None:  # the policy fired, no request was sent
                metrics.retrain_triggers.labels(*outcome.held_back).inc()
        for rej in rejections(outcomes, rejected):
            msg = rej.message
            log.warning("dead letter from %s: %s (%s)", msg.where, rej.error, rej.reason)
            metrics.dead_lettered(msg.topic, rej.reason)


def _settle_heap() -> None:
    """Collect once after a model load, then freeze what survived.

    A loaded model is a few hundred thousand long-lived objects (its record ids and
    subjects, the engine's index). Python's full collections scan every tracked object
    and hold the GIL meanwhile: on Adult (48,842 records) each took 80-115 ms, every few
    seconds under load, and stalled the event loop with the batch. Frozen objects are
    left out of those scans; they are still freed as soon as nothing refers to them.
    """
    start = time.perf_counter()
    gc.collect()
    gc.freeze()
    log.info(
        "heap settled after a model load in %.0f ms (%d objects frozen)",
        (time.perf_counter() - start) * 1e3,
        gc.get_freeze_count(),
    )

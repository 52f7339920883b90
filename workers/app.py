"""The faust worker: agents that decode, call :mod:`pipeline.applier`, and publish.

Stages (each batches up to ``max_batch`` events, waiting at most ``max_wait``):

* intake, on ``unlearn.deletions`` (:class:`~workers.consumer.BatchConsumer`, record
  batches straight from aiokafka in a consumer group of its own): route each request to
  the models it concerns; apply at once the models this worker owns, send the others'
  batches to ``unlearn.model-ops``; publish ``ModelPublished``, receipts and tombstones;
* ``owner`` agent on ``unlearn.model-ops``: apply the batches routed to the models whose
  partition this worker holds;
* ``records`` agent on ``unlearn.records`` (co-partitioned with ``unlearn.model-ops``, so
  the same worker): learn new records per model (tombstones, which the pipeline writes
  itself after an erasure, are skipped);
* timers: merge refits handed back by the retrainer; fire the cron schedule; keep the
  worker's status key alive.

Everything that touches the models runs on ONE executor thread (the applier is the
single writer of the models this process holds), so the event loop keeps heartbeating and
committing during a large batch. Side work that only reads or writes Redis (the gauges,
the status key) has a thread of its own: queued behind it, a batch would wait for it.
Bad input goes to ``unlearn.dead-letter`` and is counted; the agent goes on. Offsets are
committed after a batch is applied and published (at-least-once); replays are
made harmless by the applier.
"""

from __future__ import annotations

import asyncio
import atexit
import gc
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, TypeVar

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor

from pipeline.applier import Applier, Forget, Learn, Outcome
from pipeline.config import Settings
from pipeline.events import DeletionRequested, Event, ModelOps, RecordAdded, encode_event
from pipeline.intake import Message, Rejected, dead_letter, decode_message
from pipeline.metrics import Metrics, default_metrics
from pipeline.policy import RetrainPolicy, Schedule
from pipeline.retraining import Retraining
from pipeline.retry import Outage, retry_transient
from pipeline.routing import Router, forgets, model_ops
from pipeline.sdk.deletions import partition_for
from pipeline.store import Store
from pipeline.topics import Topics, record_key
from workers.consumer import BatchConsumer
from workers.federated import register_federated
from workers.transport import App, Notice, deliver

__all__ = ["Runtime", "build_app"]

log = logging.getLogger("unlearn.worker")
T = TypeVar("T")
Parse = type[Event] | Callable[..., Any]
"""How a batch's messages are decoded: an event type, or ``f(message, *, max_bytes)``."""

FAST_TIMEOUTS = {
    "broker_session_timeout": 6.0,
    "broker_heartbeat_interval": 1.0,
    "broker_rebalance_timeout": 10.0,
    "broker_commit_interval": 0.5,
    "broker_request_timeout": 20.0,
}


@dataclass
class Runtime:
    """What the agents share: settings, Redis state, the applier and its one thread."""

    settings: Settings
    store: Store
    applier: Applier
    router: Router
    topics: Topics
    record_partitions: int
    name: str
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


def _route_deletions(
    runtime: Runtime, ops: list[Forget], owns: Callable[[str], bool]
) -> list[Outcome]:
    """The intake stage: suppressions, received receipts, and per-model batches.

    A model whose partition this worker owns is applied here at once (with one worker,
    every model): the hop through ``unlearn.model-ops`` would only add latency, and the
    owner is still the only writer. The others' batches are sent to their owners.
    """
    by_model, routed = runtime.router.route(ops)
    local = {m: batch for m, batch in by_model.items() if owns(m)}
    remote = {m: batch for m, batch in by_model.items() if m not in local}
    routed.forward = model_ops(remote, runtime.settings.max_event_bytes)
    return [routed] + [runtime.applier.apply(m, batch) for m, batch in local.items()]


def _apply_routed(runtime: Runtime, ops: list[tuple[str, Forget]]) -> list[Outcome]:
    """The owner stage: each model's routed requests, in order, one batch per model."""
    by_model: dict[str, list[Forget]] = {}
    for model_id, op in ops:
        by_model.setdefault(model_id, []).append(op)
    return [runtime.applier.apply(m, model_ops) for m, model_ops in by_model.items()]


def _tombstones_delivered(runtime: Runtime, sent: list[tuple[str, list[str]]]) -> None:
    for model_id, record_ids in sent:
        runtime.store.records.tombstones_delivered(model_id, record_ids)


def _apply_records(runtime: Runtime, ops: list[Learn]) -> list[Outcome]:
    by_model: dict[str, list[Learn]] = {}
    for op in ops:
        by_model.setdefault(op.event.model_id, []).append(op)
    return [runtime.applier.apply(m, list(model_ops)) for m, model_ops in by_model.items()]


def build_app(
    settings: Settings, kafka_bootstrap: str, redis_url: str
) -> tuple[faust.App, Runtime]:
    """The worker's faust app and the runtime its agents share.

    Parameters
    ----------
    settings : Settings
        Batching, limits, topic prefix, key namespace, retrain policy.
    kafka_bootstrap, redis_url : str
        Where the services are (see :func:`pipeline.config.resolve_services`).
    """
    # The gauges' refresh reads stored audit reports; importing the audit package there,
    # on its first call, took 0.4-0.7 s with the interpreter lock held: a stall every
    # deletion in flight waited out. It is paid here, before the worker consumes.
    import pipeline.audit  # noqa: F401

    topics = Topics(settings.topic_prefix)
    store = Store.from_settings(settings, redis_url)
    retraining = Retraining(
        store, timeout=settings.retrain_timeout, min_interval=settings.retrain_min_interval
    )
    applier = Applier(
        store,
        policy=RetrainPolicy(
            accuracy_drop=settings.retrain_accuracy_drop,
            deleted_fraction=settings.retrain_deleted_fraction,
            class_accuracy_drop=settings.retrain_class_accuracy_drop,
        ),
        retraining=retraining,
        keep_versions=settings.keep_versions,
        erased_versions_grace=timedelta(seconds=settings.erased_versions_grace_s),
        retrigger_after=max(settings.retrain_min_interval, 1.0),
    )
    app_id = f"{settings.topic_prefix}unlearn-worker"
    runtime = Runtime(
        settings=settings,
        store=store,
        applier=applier,
        router=Router(store),
        topics=topics,
        record_partitions=_partitions(kafka_bootstrap, topics.records, settings),
        name=f"{app_id}:{os.getpid()}",
    )
    timeouts = FAST_TIMEOUTS if settings.broker_timeouts == "fast" else {}
    app = App(
        app_id,
        fetch_max_wait=settings.fetch_max_wait,
        broker=[f"kafka://{host}" for host in kafka_bootstrap.split(",")],
        broker_credentials=_credentials(settings),
        value_serializer="raw",
        key_serializer="raw",
        web_enabled=False,
        store="memory://",
        # faust makes a data directory even with in-memory tables: not in the cwd
        datadir=_faust_dir(),
        topic_partitions=settings.partitions,
        topic_replication_factor=settings.replication_factor,
        consumer_auto_offset_reset="earliest",
        producer_acks=-1,
        producer_max_request_size=max(settings.max_event_bytes * 2, 1_048_576),
        # a batch's receipts and tombstones leave in a few produce requests, not one each
        producer_linger=0.002,
        producer_max_batch_size=1_048_576,
        consumer_max_fetch_size=max(settings.max_event_bytes * 2, 4_194_304),
        **timeouts,
    )
    configs = topics.configs()

    def topic(name: str) -> faust.TopicT:
        return app.topic(name, partitions=settings.partitions, config=configs[name])

    # the topics exist (`unlearn worker` creates them with their policies); notices are
    # sent with the producer directly, see publish()
    records_t = topic(topics.records)
    model_ops_t = topic(topics.model_ops)

    def partition_of(model_id: str) -> int:
        """The partition of a model on ``unlearn.records`` and ``unlearn.model-ops``."""
        return partition_for(model_id, range(runtime.record_partitions))

    def owns(model_id: str) -> bool:
        """This worker holds the model's partition of ``unlearn.model-ops`` (and, faust
        assigning co-partitioned topics together, of ``unlearn.records``)."""
        assignment = app.consumer.assignment() if app.consumer is not None else set()
        return any(
            tp.topic == topics.model_ops and tp.partition == partition_of(model_id)
            for tp in assignment
        )

    metrics = runtime.metrics
    metrics.up.labels("worker").set(1)
    sensor = FaustMetrics.create(metrics.registry, "faust")  # faust's own sensor, same registry
    app.monitor = PrometheusMonitor(metrics=sensor)

    async def publish(
        outcomes: Iterable[Outcome],
        rejected: Iterable[Rejected[Any]],
        agent: str = "",
        event_times: Callable[[Outcome], list[datetime]] | None = None,
    ) -> None:
        """Send every notice of the outcomes and the dead letters; wait for the broker.

        Retried until the broker takes them all (:func:`workers.transport.deliver`): the
        batch's offsets are committed only after this returns.
        """
        messages: list[Notice] = []
        outcomes = list(outcomes)

        def send(
            name: str, key: str | bytes | None, value: bytes | None, partition: int | None = None
        ) -> None:
            messages.append((name, key.encode() if isinstance(key, str) else key, value, partition))

        all_rejected = list(rejected)
        for outcome in outcomes:
            all_rejected.extend(outcome.rejected)
            if outcome.published is not None:
                pub = outcome.published
                observe_published(outcome, agent, event_times)
                send(topics.model_updates, pub.model_id, encode_event(pub))
            for receipt in outcome.receipts:
                send(topics.receipts, receipt.request_id, encode_event(receipt))
            for ops in outcome.forward:  # the intake stage's per-model batches
                send(topics.model_ops, ops.model_id, encode_event(ops), partition_of(ops.model_id))
            if outcome.tombstones:
                part = partition_for(outcome.model_id, range(runtime.record_partitions))
                for record_id in outcome.tombstones:
                    send(topics.records, record_key(outcome.model_id, record_id), None, part)
            for event in (outcome.retrain, outcome.completed):
                if event is not None:
                    send(topics.retrain, outcome.model_id, encode_event(event))
            if outcome.retrain is not None:
                metrics.retrain_triggers.labels(outcome.retrain.reason, "requested").inc()
            if outcome.held_back is not None:  # the policy fired, no request was sent
                metrics.retrain_triggers.labels(*outcome.held_back).inc()
        for rej in all_rejected:
            msg = rej.message
            log.warning("dead letter from %s: %s (%s)", msg.where, rej.error, rej.reason)
            metrics.dead_lettered(msg.topic, rej.reason)
            send(topics.dead_letter, msg.key, encode_event(dead_letter(rej)))
        await deliver(app.kafka_producer(), messages)
        sent = [(o.model_id, o.tombstones) for o in outcomes if o.tombstones and o.model_id != "*"]
        if sent:  # the broker has them: the ids kept for a crash's replay can go
            with runtime.outage.tolerated("clearing delivered tombstones"):
                await runtime.run(_tombstones_delivered, runtime, sent)

    def observe_published(
        outcome: Outcome, agent: str, event_times: Callable[[Outcome], list[datetime]] | None
    ) -> None:
        pub = outcome.published
        assert pub is not None
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

    def decode(events: Sequence[Any], parse: Parse) -> tuple[list[Any], list[Any]]:
        """(event, message) pairs and rejections of a batch of faust events or consumed
        :class:`~pipeline.intake.Message`; ``parse`` decodes a message: an event type
        (:func:`~pipeline.intake.decode_message`) or a function of the message and the
        size limit returning an event, a Rejected or None."""
        good, bad = [], []
        topics: dict[str, int] = {}
        for event in events:
            msg = event if isinstance(event, Message) else Message.from_faust(event)
            topics[msg.topic] = topics.get(msg.topic, 0) + 1
            result = (
                decode_message(msg, parse, max_bytes=settings.max_event_bytes)
                if isinstance(parse, type)
                else parse(msg, max_bytes=settings.max_event_bytes)
            )
            if isinstance(result, Rejected):
                bad.append(result)
            elif result is not None:
                good.append((result, msg))
        for name, n in topics.items():
            metrics.consumed(name, n)
        return good, bad

    async def guarded(
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
            return await retry_transient(lambda: work(items), f"the {what} batch", runtime.outage)
        except Exception as exc:  # a bug: keep the evidence, keep the rest of the batch
            if len(items) > 1:
                log.warning(
                    "a %s batch of %d failed (%r): applying its halves apart",
                    what,
                    len(items),
                    exc,
                )
                half = len(items) // 2
                first = await guarded(what, items[:half], work, message_of)
                return first + await guarded(what, items[half:], work, message_of)
            log.exception("applying a %s message failed; dead-lettering it", what)
            msg = message_of(items[0]) if items else None
            if msg is None:
                return []
            return [Outcome("*", rejected=[Rejected(msg, "internal_error", repr(exc)[:1500])])]

    async def deletions(messages: list[Message]) -> None:
        """Intake: requests keyed by subject, routed to per-model batches (model-ops)."""
        good, bad = decode(messages, DeletionRequested)
        ops = [Forget(ev, msg) for ev, msg in good]
        with metrics.batch("deletions", len(messages)):
            outcomes = await guarded(
                "deletion",
                ops,
                lambda part: runtime.run(_route_deletions, runtime, list(part), owns),
                lambda op: op.message,
            )
        sent = {ev.request_id: ev.ts for ev, _ in good}
        await publish(
            outcomes,
            bad,
            "deletions",
            lambda o, sent=sent: [sent[r.request_id] for r in o.receipts if r.request_id in sent],
        )

    intake = BatchConsumer(
        topics.deletions,
        f"{app_id}-intake",
        kafka_bootstrap,
        deletions,
        max_batch=settings.max_batch,
        max_wait=settings.max_wait,
        config=_consumer_config(app, settings),
    )

    @app.task
    async def consume_deletions() -> None:
        try:
            await intake.run()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # a bug or a broker that refuses us: stop, be restarted
            log.exception("the deletion consumer stopped")
            await app.crash(exc)

    @app.agent(model_ops_t)
    async def owner(stream: faust.StreamT) -> None:
        """Owner: the requests routed to the models of this worker's partitions."""
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait):
            good, bad = decode(events, ModelOps)
            ops = [(batch.model_id, op) for batch, _ in good for op in forgets([batch])]
            with metrics.batch("model-ops", len(events)):
                outcomes = await guarded(
                    "deletion",
                    ops,
                    lambda part: runtime.run(_apply_routed, runtime, list(part)),
                    lambda pair: pair[1].message,
                )
            sent = {op.request.request_id: op.request.ts for _, op in ops}
            await publish(
                outcomes,
                bad,
                "deletions",
                lambda o, sent=sent: [
                    sent[r.request_id] for r in o.receipts if r.request_id in sent
                ],
            )

    @app.agent(records_t)
    async def records(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait):
            good, bad = decode(events, RecordAdded)
            ops = [Learn(ev, msg) for ev, msg in good]
            if not ops and not bad:
                continue  # only tombstones (our own erasures): nothing to apply or count
            with metrics.batch("records", len(events)):
                outcomes = await guarded(
                    "record",
                    ops,
                    lambda part: runtime.run(_apply_records, runtime, list(part)),
                    lambda op: op.message,
                )
            await publish(
                outcomes,
                bad,
                "records",
                lambda o, good=good: [ev.ts for ev, _ in good if ev.model_id == o.model_id],
            )

    @app.timer(interval=1.0)
    async def merge_retrains() -> None:
        outcomes: list[Outcome] = []
        try:
            with runtime.outage.tolerated("merging refits"):
                outcomes = await runtime.run(runtime.applier.poll_retrains, owns)
        except Exception:
            log.exception("merging a refit failed; the result stays in Redis for a retry")
            return
        for outcome in outcomes:
            metrics.retrain_triggers.labels(
                "merge", "merged" if outcome.completed is not None else "discarded"
            ).inc()
        await publish(outcomes, [], "merge")

    schedule = Schedule(settings.retrain_cron) if settings.retrain_cron else None
    last_tick = [datetime.now(UTC)]

    @app.timer(interval=15.0)
    async def scheduled_retrains() -> None:
        now = datetime.now(UTC)
        if schedule is None or not schedule.due(last_tick[0], now):
            last_tick[0] = now
            return
        last_tick[0] = now
        requests: list[Any] = []
        with runtime.outage.tolerated("the scheduled retrains"):
            requests = [
                runtime.applier.request_retrain(m, "schedule")
                for m in store.models.models()
                if owns(m)
            ]
        outcomes = [Outcome(r.model_id, retrain=r) for r in requests]
        await publish(outcomes, [])

    @app.timer(interval=5.0)
    async def heartbeat() -> None:
        with runtime.outage.tolerated("the status heartbeat"):
            await runtime.aside(runtime.write_status)

    @app.timer(interval=settings.metrics_interval)
    async def refresh_metrics() -> None:
        """Model gauges from Redis (whoever published) and consumer lag from faust."""
        try:
            with runtime.outage.tolerated("refreshing the model gauges"):
                await runtime.aside(metrics.refresh_models, store)
        except Exception:  # the gauges keep their last values
            log.warning("refreshing the model gauges failed", exc_info=True)
        monitor = app.monitor
        ends, committed = intake.lag()
        ends.update(monitor.tp_end_offsets or {})
        committed.update(monitor.tp_committed_offsets or {})
        metrics.lag(dict(ends), dict(committed))

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        runtime.assigned = len(assigned)
        with runtime.outage.tolerated("the status heartbeat"):
            await runtime.aside(runtime.write_status)
        log.info("worker %s ready: %d partitions assigned", runtime.name, len(assigned))

    register_federated(app, runtime, publish, topic, guarded, decode)
    return app, runtime


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


def _faust_dir() -> str:
    """A data directory of this process's own for faust (unused: tables are in memory)."""
    path = tempfile.mkdtemp(prefix="unlearn-faust-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def _partitions(bootstrap: str, topic: str, settings: Settings) -> int:
    """Partitions of ``topic`` as the broker has them (for tombstones' partitions)."""
    from kafka import KafkaConsumer

    consumer = KafkaConsumer(bootstrap_servers=bootstrap, **settings.kafka_config())
    try:
        found = consumer.partitions_for_topic(topic)
        return len(found) if found else settings.partitions
    finally:
        consumer.close()


def _consumer_config(app: faust.App, settings: Settings) -> dict[str, Any]:
    """aiokafka consumer options matching the faust app's consumer (timeouts, fetch
    sizes and wait, security), for :class:`~workers.consumer.BatchConsumer`."""
    conf = app.conf
    config: dict[str, Any] = {
        "fetch_max_wait_ms": round(settings.fetch_max_wait * 1000),
        "max_partition_fetch_bytes": conf.consumer_max_fetch_size,
        "session_timeout_ms": round(conf.broker_session_timeout * 1000),
        "heartbeat_interval_ms": round(conf.broker_heartbeat_interval * 1000),
        "rebalance_timeout_ms": round(conf.broker_rebalance_timeout * 1000),
        "request_timeout_ms": round(conf.broker_request_timeout * 1000),
        "client_id": f"{conf.broker_client_id}-intake",
    }
    security = settings.kafka_config()
    config["security_protocol"] = security.pop("security_protocol")
    cafile = security.pop("ssl_cafile", None)
    if config["security_protocol"] in ("SSL", "SASL_SSL"):
        from aiokafka.helpers import create_ssl_context

        config["ssl_context"] = create_ssl_context(cafile=cafile)
    config.update(security)  # sasl_mechanism, sasl_plain_username, sasl_plain_password
    return config


def _credentials(settings: Settings) -> Any:
    """faust's broker credentials from the settings (None: plaintext)."""
    config = settings.kafka_config()
    protocol = config.get("security_protocol", "PLAINTEXT")
    if protocol == "PLAINTEXT":
        return None
    import ssl

    context = ssl.create_default_context(cafile=config.get("ssl_cafile"))
    if protocol == "SSL":
        return faust.SSLCredentials(context)
    return faust.SASLCredentials(
        username=config["sasl_plain_username"],
        password=config["sasl_plain_password"],
        mechanism=config["sasl_mechanism"],
        ssl_context=context if protocol == "SASL_SSL" else None,
    )

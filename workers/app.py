"""The faust worker, as the data flows: intake, owner, records, federated, timers.

1. **intake**, on ``unlearn.deletions`` (a :class:`~workers.consumer.BatchConsumer`:
   record batches straight from aiokafka, in a consumer group of its own): decode, route
   each request to the models it concerns (:func:`workers.stages.route_deletions`), apply
   at once the models this worker owns and send the others' batches to
   ``unlearn.model-ops``;
2. **owner** agent, on ``unlearn.model-ops``: apply the batches routed to the models whose
   partition this worker holds;
3. **records**, on ``unlearn.records`` (a :class:`~workers.consumer.BatchConsumer` that
   follows faust's assignment of ``unlearn.model-ops``: partition p of both to the same
   worker, the model's owner): learn new records per model (tombstones, which the
   pipeline writes itself after an erasure, are skipped);
4. **federated** agent, on ``unlearn.federated`` (:mod:`workers.federated`);
5. **timers**: merge refits handed back by the retrainer; fire the cron schedule; refresh
   the gauges; keep the worker's status key alive.

Each stage batches up to ``max_batch`` events, waiting at most ``max_wait``, and handles a
batch with the :class:`~workers.runtime.Runtime`: decode, apply on the writer's one thread
(guarded), publish the notices, and only then commit (at-least-once; replays are made
harmless by the applier).

The agents are made per app, inside :func:`build_app`, not at module level as in faust's
examples: the app's broker, topic prefix and partitions are known only once the settings
are read and the services found (``unlearn worker`` may start embedded ones), and a
process may build several apps with their own topics and Redis namespaces (the tests of
``tests/integration/test_worker_agents.py`` do, driving the agents with faust's
``agent.test_context()``).
"""

from __future__ import annotations

import asyncio
import logging
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry

from pipeline.applier import Applier
from pipeline.config import Settings
from pipeline.events import ModelOps, RecordAdded
from pipeline.intake import Message, decode_request_message
from pipeline.ops import Learn, Outcome, request_op
from pipeline.policy import RetrainPolicy, Schedule
from pipeline.retraining import Retraining
from pipeline.routing import Router, forgets
from pipeline.store import Store
from pipeline.topics import Topics
from workers.broker import FAST_TIMEOUTS, consumer_config, new_app, topic_partitions
from workers.consumer import BatchConsumer
from workers.federated import register_federated
from workers.runtime import Runtime
from workers.stages import apply_by_model, route_deletions

# FAST_TIMEOUTS and Runtime are named here for the callers that import them from here
__all__ = ["FAST_TIMEOUTS", "Runtime", "build_app"]

log = logging.getLogger("unlearn.worker")


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
    app_id = f"{settings.topic_prefix}unlearn-worker"
    app = new_app(app_id, settings, kafka_bootstrap)
    runtime = Runtime(
        settings=settings,
        store=store,
        applier=_applier(store, settings),
        router=Router(store),
        topics=topics,
        record_partitions=topic_partitions(kafka_bootstrap, topics.records, settings),
        name=f"{app_id}:{os.getpid()}",
        app=app,
    )
    metrics = runtime.metrics
    metrics.up.labels("worker").set(1)
    app.monitor = PrometheusMonitor(metrics=_faust_sensor(metrics.registry))
    configs = topics.configs()

    def topic(name: str) -> faust.TopicT:
        # the topics exist (`unlearn worker` creates them with their policies); notices
        # are sent with the producer directly (Runtime.publish)
        return app.topic(name, partitions=settings.partitions, config=configs[name])

    # ---- 1. intake: unlearn.deletions -> routed, applied here or sent to the owner ------
    async def deletions(messages: list[Message]) -> None:
        """Intake: deletions keyed by subject, feature removals and relabels keyed by model,
        routed to per-model batches (model-ops)."""
        good, bad = runtime.decode(messages, decode_request_message)
        ops = [request_op(ev, msg) for ev, msg in good]
        with metrics.batch("deletions", len(messages)):
            outcomes = await runtime.guarded(
                "deletion",
                ops,
                lambda part: runtime.run(
                    route_deletions,
                    runtime.router,
                    runtime.applier,
                    list(part),
                    runtime.owns,
                    settings.max_event_bytes,
                ),
                lambda op: op.message,
            )
        sent = {ev.request_id: ev.ts for ev, _ in good}
        await runtime.publish(
            outcomes,
            bad,
            "deletions",
            lambda o, sent=sent: [sent[r.request_id] for r in o.receipts if r.request_id in sent],
        )

    def read_in_batches(
        topic_name: str, name: str, handle: Any, *, follow: bool = False
    ) -> BatchConsumer:
        """A stage read in record batches for the app's life (:mod:`workers.consumer`),
        in consumer group ``<app id>-<name>``; an error in it stops the worker."""
        consumer = BatchConsumer(
            topic_name,
            f"{app_id}-{name}",
            kafka_bootstrap,
            handle,
            max_batch=settings.max_batch,
            max_wait=settings.max_wait,
            config=consumer_config(app, settings, name),
            follow=follow,
        )
        runtime.consumers[name] = consumer

        async def run() -> None:
            await _until_crash(app, consumer, f"the {name} consumer")

        app.task(run)
        return consumer

    intake = read_in_batches(topics.deletions, "intake", deletions)

    # ---- 2. owner: unlearn.model-ops -> the models of this worker's partitions ----------
    @app.agent(topic(topics.model_ops))
    async def owner(stream: faust.StreamT) -> None:
        """Owner: the requests routed to the models of this worker's partitions."""
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait):
            good, bad = runtime.decode(events, ModelOps)
            ops = [(batch.model_id, op) for batch, _ in good for op in forgets([batch])]
            with metrics.batch("model-ops", len(events)):
                outcomes = await runtime.guarded(
                    "deletion",
                    ops,
                    lambda part: runtime.run(apply_by_model, runtime.applier, list(part)),
                    lambda pair: pair[1].message,
                )
            sent = {op.request.request_id: op.request.ts for _, op in ops}
            await runtime.publish(
                outcomes,
                bad,
                "deletions",
                lambda o, sent=sent: [
                    sent[r.request_id] for r in o.receipts if r.request_id in sent
                ],
            )

    # ---- 3. records: unlearn.records -> learned by the model's owner --------------------
    async def records(messages: list[Message]) -> None:
        good, bad = runtime.decode(messages, RecordAdded)
        ops = [Learn(ev, msg) for ev, msg in good]
        if not ops and not bad:
            return  # only tombstones (our own erasures): nothing to apply or count
        with metrics.batch("records", len(messages)):
            outcomes = await runtime.guarded(
                "record",
                ops,
                lambda part: runtime.run(
                    apply_by_model, runtime.applier, [(op.event.model_id, op) for op in part]
                ),
                lambda op: op.message,
            )
        await runtime.publish(
            outcomes,
            bad,
            "records",
            lambda o, good=good: [ev.ts for ev, _ in good if ev.model_id == o.model_id],
        )

    # Partition p of unlearn.records goes with partition p of unlearn.model-ops, which
    # faust assigns: the records consumer follows that assignment (see on_revoked and
    # on_assigned), so a model's records reach its owner; it reads in record batches, as
    # the intake does, and skips the tombstones of the worker's own erasures cheaply.
    records_in = read_in_batches(topics.records, "records", records, follow=True)

    # ---- 4. federated: unlearn.federated -> the federation's server ---------------------
    register_federated(app, runtime, topic)

    # ---- 5. timers -----------------------------------------------------------------------
    @app.timer(interval=1.0)
    async def merge_retrains() -> None:
        outcomes: list[Outcome] = []
        try:
            with runtime.outage.tolerated("merging refits"):
                outcomes = await runtime.run(runtime.applier.poll_retrains, runtime.owns)
        except Exception:
            log.exception("merging a refit failed; the result stays in Redis for a retry")
            return
        for outcome in outcomes:
            metrics.retrain_triggers.labels(
                "merge", "merged" if outcome.completed is not None else "discarded"
            ).inc()
        await runtime.publish(outcomes, [], "merge")

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
                if runtime.owns(m)
            ]
        await runtime.publish([Outcome(r.model_id, retrain=r) for r in requests], [])

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
        records_ends, records_committed = records_in.lag()
        ends.update({**records_ends, **(monitor.tp_end_offsets or {})})
        committed.update({**records_committed, **(monitor.tp_committed_offsets or {})})
        metrics.lag(dict(ends), dict(committed))

    @app.on_partitions_revoked.connect
    async def on_revoked(sender: Any, revoked: Any, **kwargs: Any) -> None:
        # before faust hands the partitions on: the records batch in hand is applied and
        # committed first, so the next owner starts where this one stopped
        await records_in.follow(())

    @app.on_partitions_assigned.connect
    async def on_assigned(sender: Any, assigned: Any, **kwargs: Any) -> None:
        await records_in.follow(tp.partition for tp in assigned if tp.topic == topics.model_ops)
        runtime.assigned = len(assigned)
        with runtime.outage.tolerated("the status heartbeat"):
            await runtime.aside(runtime.write_status)
        log.info("worker %s ready: %d partitions assigned", runtime.name, len(assigned))

    return app, runtime


async def _until_crash(app: faust.App, consumer: BatchConsumer, what: str) -> None:
    """Run a batch consumer for the app's life; an error stops the worker (a supervisor
    restarts it, and the uncommitted batch is read again)."""
    try:
        await consumer.run()
    except asyncio.CancelledError:
        raise
    except Exception as exc:  # a bug or a broker that refuses us
        log.exception("%s stopped", what)
        await app.crash(exc)


_SENSORS: dict[CollectorRegistry, FaustMetrics] = {}


def _faust_sensor(registry: CollectorRegistry) -> FaustMetrics:
    """faust's own sensor, in the worker's registry: made once per registry, which refuses
    the same series twice (a process may build more than one app; the tests do)."""
    if registry not in _SENSORS:
        _SENSORS[registry] = FaustMetrics.create(registry, "faust")
    return _SENSORS[registry]


def _applier(store: Store, settings: Settings) -> Applier:
    """The model writer, with the retrain policy and limits of the settings."""
    return Applier(
        store,
        policy=RetrainPolicy(
            accuracy_drop=settings.retrain_accuracy_drop,
            deleted_fraction=settings.retrain_deleted_fraction,
            class_accuracy_drop=settings.retrain_class_accuracy_drop,
        ),
        retraining=Retraining(
            store, timeout=settings.retrain_timeout, min_interval=settings.retrain_min_interval
        ),
        keep_versions=settings.keep_versions,
        erased_versions_grace=timedelta(seconds=settings.erased_versions_grace_s),
        retrigger_after=max(settings.retrain_min_interval, 1.0),
    )

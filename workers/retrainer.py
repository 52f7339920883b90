"""The retrainer process (``unlearn retrainer``): full refits, handed back to the worker.

It consumes ``RetrainRequested`` from ``unlearn.retrain`` (consumer group
``<prefix>unlearn-retrainer``), and for each one claims the model (coalescing and rate
limit), takes a consistent snapshot, refits with progress (a rich progress bar on a
terminal, the ``unlearn_retrain_progress_ratio`` gauge, and the in-flight marker in Redis
that ``unlearn status`` shows) and hands the result back. The worker merges it: see
:mod:`pipeline.retraining`. Offsets are committed after each request is handled.

Triggers are coalesced and rate-limited, never lost while the retrainer runs: a request
for a model whose retrain is in flight is absorbed by it (``coalesced``); one that comes
less than ``UNLEARN_RETRAIN_MIN_INTERVAL`` after the model's last start is deferred until
the interval has passed (``rate_limited``; one deferred request per model, later ones are
``coalesced`` into it) and then started, or absorbed by a retrain in flight by then.
Each outcome is counted in ``unlearn_retrain_triggers_total{reason, outcome}``. Deferred
requests live in this process's memory: a retrainer that stops drops them (logged), and
the worker's policy asks again on the model's next batch.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from kafka import KafkaConsumer, KafkaProducer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from pipeline.config import Settings
from pipeline.errors import PipelineError
from pipeline.events import RetrainRequested, encode_event
from pipeline.intake import Message, Rejected, decode_message
from pipeline.metrics import default_metrics
from pipeline.policy import RetrainReason
from pipeline.retraining import HandBack, Retraining, engine_from_state, refit
from pipeline.store import Store
from pipeline.topics import Topics

__all__ = ["request_retrain", "retrain_once", "run_retrainer"]

log = logging.getLogger("unlearn.retrainer")


def request_retrain(
    bootstrap: str,
    topics: Topics,
    model_id: str,
    seq: int,
    *,
    reason: RetrainReason = "operator",
    client_config: dict[str, Any] | None = None,
) -> RetrainRequested:
    """Publish a ``RetrainRequested`` for ``model_id`` and wait for the broker's ack."""
    event = RetrainRequested.new(model_id, reason, seq)
    producer = KafkaProducer(bootstrap_servers=bootstrap, acks="all", **(client_config or {}))
    try:
        producer.send(topics.retrain, key=model_id.encode(), value=encode_event(event)).get(
            timeout=30
        )
    finally:
        producer.close()
    return event


def retrain_once(
    retraining: Retraining,
    request: RetrainRequested,
    *,
    hold_seconds: float = 0.0,
    on_progress: Callable[[float, str], None] | None = None,
    defer: Callable[[RetrainRequested, float], bool] | None = None,
) -> HandBack | None:
    """Handle one request: claim, snapshot, refit, hand back. ``None`` if absorbed.

    ``defer(request, when)`` is called for a rate-limited request, with the Unix time the
    limit lifts; it returns False if a request of the same model is already deferred (the
    new one is then coalesced into it). Without ``defer`` a rate-limited request is
    dropped (still counted).
    """
    metrics = default_metrics()
    model_id = request.model_id
    absorbed = retraining.try_start(model_id, request.reason, request.event_id)
    if absorbed == "rate_limited" and defer is not None:
        when = retraining.rate_limit_lifts(model_id)
        if defer(request, when):
            log.info(
                "retrain of %r (%s) rate-limited: deferred %.1f s",
                model_id,
                request.reason,
                max(0.0, when - time.time()),
            )
            metrics.retrain_triggers.labels(request.reason, "rate_limited").inc()
            return None
        absorbed = "coalesced"
    if absorbed is not None:
        outcome = "rate_limited" if absorbed == "rate_limited" else "coalesced"
        log.info("retrain of %r (%s) absorbed: %s", model_id, request.reason, absorbed)
        metrics.retrain_triggers.labels(request.reason, outcome).inc()
        return None
    metrics.retrain_triggers.labels(request.reason, "started").inc()
    metrics.retrains.labels(request.reason).inc()
    try:
        snap = retraining.snapshot(model_id)
        engine = engine_from_state(snap.state, snap.records)
        log.info(
            "retraining %r (%s) on the snapshot of v%d (seq %d, %d records)",
            model_id,
            request.reason,
            snap.version,
            snap.seq,
            len(snap.records),
        )
        last = [0.0]

        def progress(fraction: float, message: str) -> None:
            metrics.retrain_progress.labels(model_id).set(fraction)
            if on_progress is not None:
                on_progress(fraction, message)
            now = time.monotonic()
            if now - last[0] > 0.5 or fraction >= 1.0:
                last[0] = now
                retraining.report_progress(model_id, fraction, message)

        seconds = refit(engine, progress)
        metrics.retrain_seconds.observe(seconds)
        if hold_seconds:
            retraining.report_progress(model_id, 1.0, f"holding the result {hold_seconds:g} s")
            time.sleep(hold_seconds)
        result = HandBack(
            model_id=model_id,
            snapshot_version=snap.version,
            snapshot_seq=snap.seq,
            reason=request.reason,
            request_id=request.event_id,
            duration_s=seconds,
            state=engine.state_dict(),
        )
        del snap, engine  # the snapshot's features leave this process's memory
        if not retraining.hand_back(result):
            log.warning("retrain of %r was abandoned (marker expired); dropping it", model_id)
            return None
        log.info("retrain of %r done in %.2f s; handed back to the worker", model_id, seconds)
        return result
    except Exception:
        retraining.release(model_id)
        raise
    finally:
        metrics.retrain_progress.labels(model_id).set(0.0)


def run_retrainer(
    settings: Settings,
    kafka_bootstrap: str,
    redis_url: str,
    *,
    stop: threading.Event | None = None,
    console: Console | None = None,
) -> None:
    """Consume retrain requests until ``stop`` is set (or forever)."""
    topics = Topics(settings.topic_prefix)
    store = Store.from_settings(settings, redis_url)
    store.client.ping()  # wrong credentials fail here, at start, not on the first request
    retraining = Retraining(
        store, timeout=settings.retrain_timeout, min_interval=settings.retrain_min_interval
    )
    consumer = KafkaConsumer(
        topics.retrain,
        bootstrap_servers=kafka_bootstrap,
        group_id=f"{settings.topic_prefix}unlearn-retrainer",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        **(
            {"session_timeout_ms": 6000, "heartbeat_interval_ms": 1000}
            if settings.broker_timeouts == "fast"
            else {}
        ),
        **settings.kafka_config(),
    )
    stop = stop or threading.Event()
    show_bar = console is not None and console.is_terminal
    bar_console = console if show_bar else None
    deferred: dict[str, tuple[float, RetrainRequested]] = {}  # model -> (when, request)

    def defer(request: RetrainRequested, when: float) -> bool:
        if request.model_id in deferred:
            return False
        deferred[request.model_id] = (when, request)
        return True

    log.info("retrainer consuming %s", topics.retrain)
    try:
        while not stop.is_set():
            due = min((when for when, _ in deferred.values()), default=None)
            wait = 0.5 if due is None else min(0.5, max(0.0, due - time.time()))
            batches = consumer.poll(timeout_ms=int(wait * 1000))
            for records in batches.values():
                for rec in records:
                    msg = Message(rec.topic, rec.partition, rec.offset, rec.key, rec.value)
                    event = decode_message(
                        msg, RetrainRequested, max_bytes=settings.max_event_bytes
                    )
                    if event is None or isinstance(event, Rejected):
                        continue  # RetrainCompleted notices and foreign events share the topic
                    _handle(retraining, event, settings, bar_console, defer)
            if batches:
                consumer.commit()
            now = time.time()
            for model_id, (when, request) in sorted(deferred.items(), key=lambda kv: kv[1][0]):
                if when <= now:
                    del deferred[model_id]
                    _handle(retraining, request, settings, bar_console, defer)
    finally:
        if deferred:
            log.warning(
                "stopping with %d deferred retrain request(s) (%s); the worker's policy asks "
                "again on the next batch",
                len(deferred),
                ", ".join(sorted(deferred)),
            )
        consumer.close()
        store.close()


def _handle(
    retraining: Retraining,
    request: RetrainRequested,
    settings: Settings,
    console: Console | None,
    defer: Callable[[RetrainRequested, float], bool] | None = None,
) -> None:
    try:
        if console is None:
            retrain_once(
                retraining, request, hold_seconds=settings.retrain_hold_seconds, defer=defer
            )
            return
        columns = (
            TextColumn("retrain {task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}% {task.fields[message]}"),
            TimeElapsedColumn(),
        )
        with Progress(*columns, console=console, transient=False) as bar:
            task = bar.add_task(request.model_id, total=1.0, message="")

            def show(fraction: float, message: str) -> None:
                bar.update(task, completed=fraction, message=message)

            retrain_once(
                retraining,
                request,
                hold_seconds=settings.retrain_hold_seconds,
                on_progress=show,
                defer=defer,
            )
    except PipelineError as exc:
        log.error("retrain of %r failed: %s", request.model_id, exc)

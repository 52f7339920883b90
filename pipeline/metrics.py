"""Prometheus series of the worker and the retrainer (prefix ``unlearn_``, base units).

One :class:`Metrics` per process, with its own registry, served on ``/metrics`` by
:meth:`Metrics.serve`. Several worker processes each serve their own endpoint (Prometheus
scrapes every one; the dashboards aggregate with ``sum``/``max by (model)``), so
prometheus-client's multiprocess mode is not needed.

Two kinds of series:

* **what this process did**: events consumed and dead-lettered, deletions applied, batch
  sizes, apply time, update latency, retrains, progress. Counters and histograms;
  aggregate across processes with ``sum``.
* **the state of each model**: version, certificate, budget, holdout accuracy, last
  publish time, pending deletions and the oldest one's age. Read from Redis (the source
  of truth, whoever wrote it) by :meth:`Metrics.refresh_models`, so every worker reports
  the same values; aggregate with ``max by (model)``.

Labels are bounded: model ids, topic names, agent names, methods and fixed reason codes;
never subject or record ids.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import TYPE_CHECKING, Any, get_args

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server
from prometheus_client.metrics_core import Metric

from pipeline.errors import PipelineError
from pipeline.policy import RetrainReason

if TYPE_CHECKING:
    from pipeline.audit import AuditReport
    from pipeline.store import Store

__all__ = ["Metrics", "default_metrics"]

log = logging.getLogger(__name__)

# Batch sizes are counts; latencies span a fast incremental update (ms) to a merged
# retrain (minutes).
_SIZE_BUCKETS = (1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000)
_SECONDS_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0,
)  # fmt: skip
_RETRAIN_BUCKETS = (0.1, 0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800, 3600)


class Metrics:
    """The project's series on a private registry.

    Parameters
    ----------
    registry : CollectorRegistry, optional
        Where the series live (default: a new one, so tests and processes are isolated).

    Examples
    --------
    >>> m = Metrics()
    >>> m.consumed("unlearn.deletions", 3)
    >>> m.registry.get_sample_value(
    ...     "unlearn_events_consumed_total", {"topic": "unlearn.deletions"})
    3.0
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self.events_consumed = Counter(
            "unlearn_events_consumed", "Events read from an input topic.", ["topic"], registry=r
        )
        self.events_dead_lettered = Counter(
            "unlearn_events_dead_lettered",
            "Input events sent to the dead-letter topic, by source topic and reason code.",
            ["topic", "reason"],
            registry=r,
        )
        self.deletions_applied = Counter(
            "unlearn_deletions_applied",
            "Records removed from a model, by update method (influence, fisher, retrain).",
            ["method"],
            registry=r,
        )
        self.records_learned = Counter(
            "unlearn_records_learned", "Records added to a model incrementally.", registry=r
        )
        self.batch_size = Histogram(
            "unlearn_batch_size_records",
            "Events per batch taken by an agent.",
            ["agent"],
            buckets=_SIZE_BUCKETS,
            registry=r,
        )
        self.apply_seconds = Histogram(
            "unlearn_apply_seconds",
            "Time to apply one batch (engine update and Redis transaction).",
            ["agent"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.update_latency = Histogram(
            "unlearn_update_latency_seconds",
            "From an event's timestamp to the publication of the version it took effect in.",
            ["agent"],
            buckets=_SECONDS_BUCKETS,
            registry=r,
        )
        self.retrains = Counter(
            "unlearn_retrains", "Full refits run by the retrainer, by trigger.", ["reason"],
            registry=r,
        )  # fmt: skip
        self.retrain_triggers = Counter(
            "unlearn_retrain_triggers",
            "Retrain decisions by reason and outcome: requested, started, merged, discarded; "
            "coalesced (absorbed by a retrain in flight, or by a request already waiting) and "
            "rate_limited (within UNLEARN_RETRAIN_MIN_INTERVAL of the last one: the worker "
            "asks again on a later batch, the retrainer defers the request).",
            ["reason", "outcome"],
            registry=r,
        )
        # every series exists from the start (at 0), so that increase() and rate() count
        # the first trigger too: a series born at 1 hides its first increment
        for reason in get_args(RetrainReason):
            self.retrains.labels(reason)
            for outcome in ("requested", "started", "coalesced", "rate_limited"):
                self.retrain_triggers.labels(reason, outcome)
        for outcome in ("merged", "discarded"):
            self.retrain_triggers.labels("merge", outcome)
        self.retrain_seconds = Histogram(
            "unlearn_retrain_seconds",
            "Duration of a full refit.",
            buckets=_RETRAIN_BUCKETS,
            registry=r,
        )
        self.retrain_progress = Gauge(
            "unlearn_retrain_progress_ratio",
            "Progress of the refit in flight (0 to 1).",
            ["model"],
            registry=r,
        )
        self.consumer_lag = Gauge(
            "unlearn_consumer_lag_records",
            "Records on the input topics not yet committed by this worker.",
            ["topic"],
            registry=r,
        )
        self.up = Gauge(
            "unlearn_up", "1 while the process is running, by role.", ["role"], registry=r
        )

        def model_gauge(name: str, doc: str) -> Gauge:
            return Gauge(name, doc, ["model"], registry=r)

        self.model_version = model_gauge("unlearn_model_version", "Current version of a model.")
        self.certificate = model_gauge(
            "unlearn_certificate", "Certificate (gradient residual) of the current version."
        )
        self.budget = model_gauge(
            "unlearn_budget", "Certified budget: the largest certificate that keeps the guarantee."
        )
        self.holdout_accuracy = model_gauge(
            "unlearn_holdout_accuracy", "Accuracy of the current version on the model's holdout."
        )
        self.holdout_class_accuracy = Gauge(
            "unlearn_holdout_class_accuracy",
            "Accuracy of the current version on the holdout rows of one class (bias watch).",
            ["model", "class"],
            registry=self.registry,
        )
        self.last_publish = model_gauge(
            "unlearn_last_publish_timestamp_seconds", "Unix time the current version was published."
        )
        self.pending_deletions = model_gauge(
            "unlearn_pending_deletions", "Deletion requests received and not yet completed."
        )
        self.oldest_pending_age = model_gauge(
            "unlearn_oldest_pending_deletion_age_seconds",
            "Age of the oldest open deletion request (0 when none).",
        )
        self.audit_verdict = Gauge(
            "unlearn_audit_verdict",
            "Verdict of the model's last stored audit (`unlearn audit`), per part and "
            "overall: 1 pass, 0 fail, -1 not checked.",
            ["model", "part"],
            registry=r,
        )
        self.audit_version = model_gauge(
            "unlearn_audit_version", "Version examined by the model's last stored audit."
        )
        self.audit_gap = Gauge(
            "unlearn_audit_gap",
            "Figures of the model's last stored audit against a retrained reference, each "
            "judged within its tolerance: acc_err, acc_dis, worst_class_gap (accuracy, a "
            "fraction) and loss_auc_gap, lira_auc_gap (membership-attack AUC, signed).",
            ["model", "measure"],
            registry=r,
        )
        self._audit_gaps: set[tuple[str, str]] = set()

    # -- what this process did ------------------------------------------------------

    def consumed(self, topic: str, n: int = 1) -> None:
        """``n`` events read from ``topic``."""
        self.events_consumed.labels(topic).inc(n)

    def dead_lettered(self, topic: str, reason: str) -> None:
        """One event from ``topic`` sent to the dead-letter topic for ``reason`` (a code)."""
        self.events_dead_lettered.labels(topic, reason).inc()

    def applied(self, method: str, n_removed: int, n_added: int) -> None:
        """An update removed ``n_removed`` and added ``n_added`` records."""
        if n_removed:
            self.deletions_applied.labels(method).inc(n_removed)
        if n_added:
            self.records_learned.inc(n_added)

    @contextmanager
    def batch(self, agent: str, size: int) -> Iterator[None]:
        """Count a batch of ``size`` events and time its application."""
        self.batch_size.labels(agent).observe(size)
        start = time.perf_counter()
        try:
            yield
        finally:
            self.apply_seconds.labels(agent).observe(time.perf_counter() - start)

    def latencies(
        self, agent: str, published_at: datetime, event_times: Iterable[datetime]
    ) -> None:
        """Observe event-to-publication latency for each event of a published version."""
        hist = self.update_latency.labels(agent)
        for ts in event_times:
            hist.observe(max(0.0, (published_at - ts).total_seconds()))

    def published(
        self,
        model: str,
        *,
        version: int,
        certificate: float | None,
        budget: float | None,
        accuracy: float | None,
        at: datetime,
    ) -> None:
        """Set a model's gauges to a version's metadata (``None``: not applicable)."""
        self.model_version.labels(model).set(version)
        if certificate is not None:  # None: exact removal (ridge), nothing to certify
            self.certificate.labels(model).set(certificate)
        if budget is not None:
            self.budget.labels(model).set(budget)
        if accuracy is not None:
            self.holdout_accuracy.labels(model).set(accuracy)
        self.last_publish.labels(model).set(at.timestamp())

    def class_accuracies(self, model: str, holdout_metrics: dict[str, float]) -> None:
        """Set a model's per-class holdout accuracies (``accuracy[<label>]`` metrics)."""
        from pipeline.training import class_scores

        for label, value in class_scores(holdout_metrics).items():
            self.holdout_class_accuracy.labels(model, label).set(value)

    def pending(self, model: str, count: int, oldest: datetime | None) -> None:
        """Set a model's open deletion requests and the age of the oldest."""
        self.pending_deletions.labels(model).set(count)
        age = 0.0 if oldest is None else max(0.0, time.time() - oldest.timestamp())
        self.oldest_pending_age.labels(model).set(age)

    def audited(self, report: AuditReport) -> None:
        """Set a model's audit gauges to a report's verdicts."""
        code = {"pass": 1.0, "fail": 0.0, "skipped": -1.0}
        model = report.model_id
        for part in report.parts:
            self.audit_verdict.labels(model, part.part).set(code[part.verdict])
        self.audit_verdict.labels(model, "overall").set(code[report.verdict])
        self.audit_version.labels(model).set(report.version)
        figures = {done.part: done.figures for done in report.parts}
        wanted = {
            "acc_err": ("disparity", "acc_err"),
            "acc_dis": ("disparity", "acc_dis"),
            "worst_class_gap": ("disparity", "worst_class_gap"),
            "loss_auc_gap": ("membership", "gap"),
            "lira_auc_gap": ("membership", "lira_gap"),
        }
        for measure, (where, name) in wanted.items():
            value = figures.get(where, {}).get(name)
            if isinstance(value, int | float):
                self.audit_gap.labels(model, measure).set(value)
                self._audit_gaps.add((model, measure))
            elif (model, measure) in self._audit_gaps:  # not measured this time: no stale value
                self.audit_gap.remove(model, measure)
                self._audit_gaps.discard((model, measure))

    def refresh_models(self, store: Store) -> None:
        """Read every model's current metadata, open deletions and last audit from Redis."""
        from pipeline.audit import latest_report

        for model in store.models.models():
            try:
                meta = store.models.metadata(model)
            except PipelineError:  # a model being created or deleted: next refresh
                log.debug("no current version of %r yet", model)
                continue
            self.published(
                model,
                version=meta.version,
                certificate=meta.certificate,
                budget=meta.budget,
                accuracy=meta.holdout_metrics.get("accuracy"),
                at=meta.created_at,
            )
            self.class_accuracies(model, meta.holdout_metrics)
            open_requests = store.receipts.pending(model)
            self.pending(model, len(open_requests), open_requests[0][1] if open_requests else None)
            try:
                report = latest_report(store, model)
            except (PipelineError, ValueError, KeyError):  # an unreadable report: not fatal
                log.warning("the stored audit report of %r cannot be read", model)
                report = None
            if report is not None:
                self.audited(report)

    def lag(self, end_offsets: dict[Any, int], committed: dict[Any, int]) -> None:
        """Set consumer lag per topic from faust's ``TP -> offset`` maps."""
        per_topic: dict[str, int] = {}
        for tp, end in end_offsets.items():
            done = committed.get(tp, 0)
            per_topic[tp.topic] = per_topic.get(tp.topic, 0) + max(0, end - done)
        for topic, lag in per_topic.items():
            self.consumer_lag.labels(topic).set(lag)

    # -- exposition -------------------------------------------------------------------

    def serve(self, port: int = 0, addr: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` on ``addr:port`` (0: a free port) in a thread; return the port."""
        server, _thread = start_http_server(port, addr=addr, registry=self.registry)
        return int(server.server_address[1])

    def collect(self) -> list[Metric]:
        """Every metric family in the registry (for checks of the dashboards)."""
        return list(self.registry.collect())


_DEFAULT: Metrics | None = None


def default_metrics() -> Metrics:
    """The process's :class:`Metrics` (created on first use)."""
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = Metrics()
    return _DEFAULT

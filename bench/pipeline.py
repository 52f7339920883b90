"""End-to-end figures: deletion events through the real broker, the worker and Redis.

One run, on the embedded Tansu broker and redis-server (or the services named by
``UNLEARN_KAFKA_BOOTSTRAP`` / ``UNLEARN_REDIS_URL``), with ``unlearn worker`` in a child
process exactly as a user runs it. The model is binary logistic regression on UCI Adult
(a9a encoding, train and test rows together: n = 48,842, d = 123, rows scaled to unit
norm), one model per phase so each phase starts from the same state, warmed up by 200
deletions so the worker has loaded it (a cold load reads every record from Redis):

* **throughput**: ``n_events`` deletion requests (one record each) published as fast as a
  kafka-python producer sends them; the rate is events over the time from the first send
  to the moment the worker's last version covering them is committed in Redis (its
  applied sequence number counts every request).
* **drain**: the same worker stopped, ``n_events`` further requests published while it
  is down, the worker started again: how fast it works through the backlog, from the
  commit of its first version after the restart (which includes loading the model) to the
  commit of its last, with the producer no longer competing for the two cores.
* **bulk**: requests naming 100 records each (as many records as the throughput phase),
  published as fast as they are sent; records erased per second, from the first send to
  the commit of the version covering the last request.
* **faust ceiling**: the same backlog drained by a faust agent that does nothing with its
  events (:mod:`bench.noop_agent`, built as the worker is): what faust's consumer and
  stream machinery alone sustain here, the bound of a worker that reads through faust.
* **raw ceiling**: the same backlog read by the worker's intake consumer
  (:class:`workers.consumer.BatchConsumer`, aiokafka record batches) with a handler that
  does nothing: the bound of the intake stage as it reads now.
* **latency**: requests sent at a fixed rate (1,000/s) for a few seconds; an event's
  latency is from its timestamp (set when it is sent) to the commit of the version it
  took effect in (the receipt's ``completed_at``, written in the same Redis transaction
  that moves ``current``).
* **watch**: during the latency phases, a ``ModelClient.watch`` consumer in a thread: the
  delay from each version's creation to the consumer holding its predictor.
* **baseline**: scikit-learn's ``LogisticRegression`` refitted on the remaining rows,
  which retraining after each batch would cost; its event rate is the mean batch size the
  worker took divided by that time.

``quick`` (``unlearn bench pipeline --quick``, a smoke run that the end-to-end tests call)
runs every phase the same way on the first 5,000 rows, with 1,000 events per phase and
one second of each latency rate: it proves that the bench works end to end, and its
figures are not the ones to quote.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from kafka import KafkaProducer
from kafka.admin import KafkaAdminClient, NewTopic
from sklearn.linear_model import LogisticRegression

from bench.rates import format_rate, per_second
from pipeline.config import Settings, resolve_services
from pipeline.datasets import load
from pipeline.events import DeletionRequested, encode_event
from pipeline.sdk import ModelClient
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics
from pipeline.training import Table, train_model
from workers.consumer import BatchConsumer
from workers.processes import child_env, spawn, stop

__all__ = ["ceiling_figures", "run_pipeline_bench"]

Log = Callable[[str], object]
PARAMS = {"lam": 1e-3, "sigma": 10.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}
PARTITIONS = 3
WARMUP = 200
QUICK_ROWS = 5_000  # --quick: enough for every phase's events, quick to train and load
LOW_RATE = 250.0  # a rate the worker sustains on this machine, for comparison
BULK_RECORDS = 100  # records named by each request of the bulk phase


def _adult() -> tuple[np.ndarray, np.ndarray]:
    ds = load("adult_a9a", preprocess=False)
    assert ds.X_test is not None and ds.y_test is not None
    X = np.vstack([ds.X, ds.X_test])
    X = X / np.maximum(np.linalg.norm(X, axis=1, keepdims=True), 1e-12)
    return X, np.concatenate([ds.y, ds.y_test])


@contextmanager
def _worker(
    bootstrap: str, redis_url: str, prefix: str, logs: Path, **settings: Any
) -> Iterator[None]:
    env = child_env(
        kafka_bootstrap=bootstrap,
        redis_url=redis_url,
        topic_prefix=prefix,
        key_namespace=prefix.rstrip("."),
        partitions=PARTITIONS,
        broker_timeouts="fast",
        retrain_min_interval=3600,
        **settings,
    )
    proc = spawn(["worker"], env, logs)
    try:
        yield
    finally:
        stop(proc)


def _wait(check: Callable[[], bool], timeout: float, what: str, poll: float = 0.01) -> float:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise TimeoutError(f"benchmark: {what} not reached within {timeout:g} s")
        time.sleep(poll)
    return time.perf_counter()


def _request(model: str, record_id: str) -> DeletionRequested:
    return DeletionRequested(
        request_id=uuid.uuid4().hex,
        record_ids=[record_id],
        model_ids=[model],
        reason="benchmark",
        ts=datetime.now(UTC),
    )


def _bulk(
    store: Store, producer: KafkaProducer, topics: Topics, ids: list[str], model: str
) -> dict[str, Any]:
    """Requests naming ``BULK_RECORDS`` records each, published as fast as they are sent."""
    seq0 = store.models.applied_seq(model) or 0
    chunks = [ids[i : i + BULK_RECORDS] for i in range(0, len(ids), BULK_RECORDS)]
    start = time.perf_counter()
    for chunk in chunks:
        event = DeletionRequested(
            request_id=uuid.uuid4().hex,
            record_ids=chunk,
            model_ids=[model],
            reason="benchmark",
            ts=datetime.now(UTC),
        )
        _send(producer, topics.deletions, event)
    producer.flush()
    done = _wait(
        lambda: (store.models.applied_seq(model) or 0) - seq0 >= len(chunks),
        600,
        f"{len(chunks)} requests of {BULK_RECORDS} records applied",
    )
    held = store.records.count(model)
    return {
        "requests": len(chunks),
        "records_per_request": BULK_RECORDS,
        "records": len(ids),
        "seconds": done - start,
        "records_per_second": per_second(len(ids), done - start),
        "records_left": held,
    }


def _send(producer: KafkaProducer, topic: str, event: DeletionRequested) -> None:
    key = (event.record_ids or [event.request_id])[0].encode()
    producer.send(topic, key=key, value=encode_event(event))


def _train(store: Store, model: str, X: np.ndarray, y: np.ndarray) -> list[str]:
    ids = [f"r{i}" for i in range(len(y))]
    subjects = [f"s{i}" for i in range(len(y))]
    train_model(store, model, Table(X=X, y=y, subjects=subjects, ids=ids), params=PARAMS, holdout=0)
    return ids


def _publish(producer: KafkaProducer, topic: str, model: str, ids: list[str]) -> None:
    for rid in ids:
        _send(producer, topic, _request(model, rid))
    producer.flush()


def _throughput(
    store: Store, producer: KafkaProducer, topics: Topics, ids: list[str], n: int, model: str
) -> dict[str, Any]:
    seq0 = store.models.applied_seq(model) or 0
    v0 = store.models.current_version(model)
    start = time.perf_counter()
    _publish(producer, topics.deletions, model, ids[:n])
    sent = time.perf_counter()
    done = _wait(
        lambda: (store.models.applied_seq(model) or 0) - seq0 >= n, 600, f"{n} deletions applied"
    )
    versions = store.models.current_version(model) - v0
    return {
        "events": n,
        "seconds": done - start,
        "events_per_second": per_second(n, done - start),
        "producer_events_per_second": per_second(n, sent - start),
        "versions_published": versions,
        "mean_batch": n / max(versions, 1),
    }


def _drain(store: Store, model: str, n: int) -> dict[str, Any]:
    """Rate of a restarted worker through a backlog of ``n`` requests (see module doc)."""
    seq0 = store.models.applied_seq(model) or 0
    v0 = store.models.current_version(model)
    _wait(lambda: (store.models.applied_seq(model) or 0) - seq0 >= n, 600, f"{n} backlog applied")
    # from the publication stream: each erasure retires the versions before it, so the
    # registry's history holds only the last one
    published = [
        (int(e["version"]), int(e["seq"]), datetime.fromisoformat(e["created_at"]))
        for e in store.models.notices(model, count=10_000)
        if int(e["version"]) > v0
    ]
    versions = sorted(published)
    first, last = versions[0], versions[-1]
    seconds = (last[2] - first[2]).total_seconds()
    counted = last[1] - first[1]  # the requests after the first batch
    return {
        "events": n,
        "first_batch": first[1] - seq0,
        "seconds": seconds,
        "events_per_second": per_second(counted, seconds),
        "versions_published": len(versions),
        "mean_batch": n / len(versions),
    }


def _create_topic(bootstrap: str, name: str) -> None:
    admin = KafkaAdminClient(bootstrap_servers=bootstrap)
    try:
        admin.create_topics([NewTopic(name, PARTITIONS, 1)])
    finally:
        admin.close()


def _faust_ceiling(
    bootstrap: str, producer: KafkaProducer, topic: str, ids: list[str], batching: dict[str, Any]
) -> dict[str, Any]:
    """A no-op faust agent through the same backlog (:mod:`bench.noop_agent`)."""
    _publish(producer, topic, "noop", ids)
    with tempfile.TemporaryDirectory(prefix="unlearn-noop-") as tmp:
        result = Path(tmp) / "result.json"
        env = dict(
            os.environ,
            NOOP_BOOTSTRAP=bootstrap,
            NOOP_TOPIC=topic,
            NOOP_EVENTS=str(len(ids)),
            NOOP_MAX_BATCH=str(batching["max_batch"]),
            NOOP_MAX_WAIT=str(batching["max_wait"]),
            NOOP_RESULT=str(result),
        )
        subprocess.run(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "bench.noop_agent", "worker", "-l", "warn"],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=600,
            check=True,
        )
        return ceiling_figures(json.loads(result.read_text()))


def _raw_ceiling(bootstrap: str, topic: str, n: int, batching: dict[str, Any]) -> dict[str, Any]:
    """The same backlog through the worker's own batch consumer with a no-op handler
    (:class:`workers.consumer.BatchConsumer`, as the intake stage reads
    ``unlearn.deletions``): what reading alone costs, without faust's stream."""
    seen = {"events": 0, "first_batch": 0, "first": 0.0, "last": 0.0}
    done = asyncio.Event()

    async def count(messages: list[Any]) -> None:
        now = time.perf_counter()
        if seen["events"] == 0:
            seen["first"], seen["first_batch"] = now, len(messages)
        seen["events"] += len(messages)
        seen["last"] = now
        if seen["events"] >= n:
            done.set()

    async def drain() -> None:
        consumer = BatchConsumer(
            topic,
            f"{topic}-raw-{uuid.uuid4().hex[:6]}",
            bootstrap,
            count,
            max_batch=batching["max_batch"],
            max_wait=batching["max_wait"],
            config={"fetch_max_wait_ms": 50, "max_partition_fetch_bytes": 4_194_304},
        )
        task = asyncio.ensure_future(consumer.run())
        try:
            await asyncio.wait_for(done.wait(), 600)
        finally:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)

    asyncio.run(drain())
    return ceiling_figures({**seen, "seconds": seen["last"] - seen["first"]})


def ceiling_figures(found: dict[str, Any]) -> dict[str, Any]:
    """The no-op agent's result (:mod:`bench.noop_agent`) as the report's figures.

    The rate counts the events after the first batch over the time from the first batch
    to the last; a backlog taken in one batch leaves no window, and the rate is ``None``.
    """
    return {
        "events": found["events"],
        "seconds": found["seconds"],
        "events_per_second": per_second(found["events"] - found["first_batch"], found["seconds"]),
    }


class _Watcher(threading.Thread):
    """A serving team's consumer: ``ModelClient.watch`` in a thread, as the README shows.

    For each version it is handed, the delay from the version's ``created_at`` (set by
    the publication just before its transaction) to the moment the watcher holds the
    predictor, coefficients loaded.
    """

    def __init__(self, redis_url: str, namespace: str, model: str) -> None:
        super().__init__(daemon=True)
        self.redis_url, self.namespace, self.model = redis_url, namespace, model
        self.delays: list[float] = []
        self.stop_event = threading.Event()
        self.error: BaseException | None = None

    def run(self) -> None:
        try:
            with ModelClient(self.redis_url, self.namespace) as models:
                for clf in models.watch(self.model, stop=self.stop_event, max_block=0.5):
                    held = datetime.now(UTC)
                    self.delays.append((held - clf.metadata.created_at).total_seconds())
        except BaseException as exc:  # noqa: BLE001 - reported in the figures
            self.error = exc

    def figures(self) -> dict[str, Any]:
        self.stop_event.set()
        self.join(10)
        if self.error is not None or not self.delays:
            return {"watch_versions": len(self.delays), "watch_error": repr(self.error)}
        q = np.percentile(np.array(self.delays), [50, 99])
        return {
            "watch_versions": len(self.delays),
            "watch_p50_s": float(q[0]),
            "watch_p99_s": float(q[1]),
        }


def _latency(
    store: Store,
    producer: KafkaProducer,
    topics: Topics,
    ids: list[str],
    rate: float,
    seconds: float,
    model: str,
    redis_url: str,
) -> dict[str, Any]:
    n = int(rate * seconds)
    seq0 = store.models.applied_seq(model) or 0
    watcher = _Watcher(redis_url, store.keys.namespace, model)
    watcher.start()
    sent: dict[str, datetime] = {}
    start = time.perf_counter()
    for i, rid in enumerate(ids[:n]):
        delay = start + i / rate - time.perf_counter()
        if delay > 0:
            time.sleep(delay)
        event = _request(model, rid)
        _send(producer, topics.deletions, event)
        sent[event.request_id] = event.ts
        if i % 50 == 0:
            producer.flush()  # keep the client from holding events back
    producer.flush()
    achieved = per_second(n, time.perf_counter() - start)
    _wait(lambda: (store.models.applied_seq(model) or 0) - seq0 >= n, 300, "latency run applied")
    receipts = store.receipts.get_many(list(sent), model)
    lat = np.array(
        [
            (r.completed_at - sent[r.request_id]).total_seconds()
            for r in receipts
            if r is not None and r.completed_at is not None
        ]
    )
    assert len(lat) == n, f"{n - len(lat)} receipts missing"
    q = np.percentile(lat, [50, 95, 99])
    return {
        "target_rate": rate,
        "achieved_rate": achieved,
        "events": n,
        "p50_s": float(q[0]),
        "p95_s": float(q[1]),
        "p99_s": float(q[2]),
        "max_s": float(lat.max()),
        **watcher.figures(),
    }


def _sklearn_refit(X: np.ndarray, y: np.ndarray) -> float:
    start = time.perf_counter()
    LogisticRegression(max_iter=1000).fit(X, y)
    return time.perf_counter() - start


def run_pipeline_bench(quick: bool = False, log: Log | None = None) -> dict[str, Any]:
    """Throughput and latency through the real broker, worker and Redis (see module doc)."""
    say: Log = log or (lambda _msg: None)
    n_events = 1_000 if quick else 20_000
    latency_seconds = 1.0 if quick else 15.0
    phases = {  # worker batching per phase: big batches for throughput, short waits for latency
        "throughput": {"max_batch": 5_000, "max_wait": 0.5},
        "bulk": {"max_batch": 5_000, "max_wait": 0.5},
        "latency": {"max_batch": 1_000, "max_wait": 0.04},
    }
    X, y = _adult()
    if quick:
        X, y = X[:QUICK_ROWS], y[:QUICK_ROWS]
    say(f"pipeline: Adult n={len(y)} d={X.shape[1]}; starting the services")
    settings = Settings()
    tag = f"bench{uuid.uuid4().hex[:6]}."
    topics = Topics(tag)
    with resolve_services(settings) as found:
        ensure_topics(found.kafka_bootstrap, topics, partitions=PARTITIONS)
        store = Store.from_url(found.redis_url, tag.rstrip("."))
        producer = KafkaProducer(
            bootstrap_servers=found.kafka_bootstrap, acks="all", linger_ms=5, batch_size=262_144
        )
        try:
            results: dict[str, Any] = {}
            for phase, worker_settings in phases.items():
                ids = _train(store, phase, X, y)
                logs = Path(tempfile.gettempdir()) / f"{tag}{phase}-worker.log"
                worker = partial(
                    _worker, found.kafka_bootstrap, found.redis_url, tag, logs, **worker_settings
                )
                with worker():
                    # the first batch loads the model (every record from Redis) and waits
                    # for the worker to join its group: not part of the figures
                    say(f"pipeline: {phase}: warming up ({WARMUP} deletions)")
                    _throughput(store, producer, topics, ids[:WARMUP], WARMUP, phase)
                    if phase == "bulk":
                        n_bulk = n_events  # records: as many as the throughput phase
                        say(f"pipeline: {n_bulk} records in requests of {BULK_RECORDS}")
                        results[phase] = _bulk(
                            store, producer, topics, ids[WARMUP : WARMUP + n_bulk], phase
                        )
                        rate = results[phase]["records_per_second"]
                        say(f"pipeline: {format_rate(rate, ' records erased/s')}")
                    elif phase == "throughput":
                        say(f"pipeline: {n_events} deletions as fast as they can be sent")
                        results[phase] = _throughput(
                            store, producer, topics, ids[WARMUP:], n_events, phase
                        )
                        rate = results[phase]["events_per_second"]
                        say(f"pipeline: {format_rate(rate, ' events/s')}")
                    else:
                        say(f"pipeline: latency at 1,000 events/s for {latency_seconds:g} s")
                        results[phase] = _latency(
                            store,
                            producer,
                            topics,
                            ids[WARMUP:],
                            1000.0,
                            latency_seconds,
                            phase,
                            found.redis_url,
                        )
                        say(f"pipeline: latency at {LOW_RATE:g} events/s for {latency_seconds:g} s")
                        used = WARMUP + int(1000.0 * latency_seconds)
                        results["latency_low_rate"] = _latency(
                            store,
                            producer,
                            topics,
                            ids[used:],
                            LOW_RATE,
                            latency_seconds,
                            phase,
                            found.redis_url,
                        )
                results[phase]["worker_settings"] = worker_settings
                if phase == "throughput":
                    backlog = ids[WARMUP + n_events : WARMUP + 2 * n_events]
                    say(f"pipeline: a backlog of {len(backlog)} deletions, the worker stopped")
                    _publish(producer, topics.deletions, phase, backlog)
                    with worker():
                        results["drain"] = _drain(store, phase, len(backlog))
                    drained = format_rate(results["drain"]["events_per_second"], "/s")
                    say(f"pipeline: drained at {drained}")
                    noop = f"{tag}noop"
                    _create_topic(found.kafka_bootstrap, noop)
                    results["faust_ceiling"] = _faust_ceiling(
                        found.kafka_bootstrap, producer, noop, backlog, worker_settings
                    )
                    ceiling = results["faust_ceiling"]["events_per_second"]
                    say(f"pipeline: a no-op faust agent drains it at {format_rate(ceiling, '/s')}")
                    results["raw_ceiling"] = _raw_ceiling(
                        found.kafka_bootstrap, noop, len(backlog), worker_settings
                    )
                    raw = results["raw_ceiling"]["events_per_second"]
                    say(f"pipeline: the batch consumer alone reads it at {format_rate(raw, '/s')}")
            remaining = WARMUP + n_events
            refit = _sklearn_refit(X[remaining:], y[remaining:])
        finally:
            producer.close()
            store.close()
    return {
        "dataset": {
            "name": f"adult_a9a (train + test{', first rows' if quick else ''})",
            "n": int(len(y)),
            "d": int(X.shape[1]),
        },
        "partitions": PARTITIONS,
        "embedded_services": found.embedded,
        "throughput": results["throughput"],
        "drain": results["drain"],
        "faust_ceiling": results["faust_ceiling"],
        "raw_ceiling": results["raw_ceiling"],
        "bulk": results["bulk"],
        "latency": results["latency"],
        "latency_low_rate": results["latency_low_rate"],
        "baseline": {
            "sklearn_refit_s": refit,
            "events_per_second_at_mean_batch": per_second(
                results["throughput"]["mean_batch"], refit
            ),
        },
    }

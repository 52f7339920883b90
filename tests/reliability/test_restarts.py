"""Redis and the broker stop and come back mid-stream: no deletion lost or applied twice.

Each test gets its own services, because it stops them: a real ``redis-server`` with an
append-only file (:class:`~pipeline.embedded.EmbeddedRedis` with ``persist=True``) and a
real Tansu broker, plus a worker in a child process (``unlearn worker``), as in
``test_worker_crash.py``. Models are logistic regressions on UCI Adult (a9a encoding);
each deletion request names one record of one model.

* Redis restart: ``redis-server`` is stopped (SIGTERM) while deletions stream in, stays
  away for seconds and starts again from its AOF on the same port. The worker retries the
  batch with capped exponential backoff (:mod:`pipeline.retry`) without committing its
  offsets, says so in one log line, does not dead-letter, does not die.
* Broker outage: the broker process is frozen (SIGSTOP) longer than the consumer's session
  timeout while deletions stream in, then resumed with its state: the producer and the
  worker reconnect and nothing is lost.
* Broker restart: the embedded Tansu keeps everything in memory (the only other storage
  its build takes is ``s3://``), so a restart is a new, empty broker: topics, messages
  and committed offsets are gone. What holds, and is tested: the worker process survives
  it; after the recovery (stop the worker, recreate the topics, start it again) a client
  that re-sends its requests without a final receipt (request ids make this safe) gets
  every deletion applied exactly once.

In each, the client's stream holds halfway until the service is stopped, then goes on into
the outage: the outage lands mid-stream, and events arrive during it, whatever the speed
of the machine.

After each: every request has exactly one final receipt (``applied``, one record) in
Redis, the receipts topic announces each request (one distinct receipt), the model holds
exactly the records not deleted and is within the certified distance of an exact refit
(:func:`support.coef_bound_check`).
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer
from kafka.errors import KafkaError

from pipeline.embedded import EmbeddedKafka, EmbeddedRedis
from pipeline.events import DeletionRequested, encode_event
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics
from pipeline.training import train_model
from workers.processes import child_env, spawn, stop

from .support import (
    PARAMS,
    adult,
    coef_bound_check,
    deletions,
    n_final,
    poll,
    read_topic,
    receipt_messages,
    receipts,
    worker_ready,
)

N_DELETIONS = 1_500
REDIS_DOWN = 2.5  # seconds without Redis (several retries of the batch, each backoff capped)
# seconds the broker answers nothing: well past the workers' consumer-group session timeout
# (2 s in the tests, see FAUST_TEST_TIMEOUTS in tests/conftest.py; 6 s without it)
BROKER_FROZEN = 2.5 * float(os.environ.get("BROKER_SESSION_TIMEOUT", "6"))


@dataclass
class Pipe:
    """A worker over services of its own, which the test may stop and start."""

    kafka: EmbeddedKafka
    redis: EmbeddedRedis
    prefix: str
    env: dict[str, str]
    logs: Path
    store: Store
    procs: dict[str, Any] = field(default_factory=dict)

    @property
    def bootstrap(self) -> str:
        return self.kafka.bootstrap

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(errors="replace") if path.exists() else ""

    @property
    def worker(self) -> Any:
        return self.procs["worker"]

    def wait_ready(self, timeout: float = 90.0) -> None:
        proc = self.worker

        def ready() -> bool:
            if proc.poll() is not None:
                raise AssertionError(f"worker exited with {proc.returncode}:\n{self.log('worker')}")
            return worker_ready(self, proc.pid)

        poll(ready, timeout, "the worker to be assigned its partitions")


@pytest.fixture
def pipe(tmp_path: Path) -> Iterator[Pipe]:
    with _pipeline(tmp_path) as p:
        yield p


@contextmanager
def _pipeline(tmp_path: Path) -> Iterator[Pipe]:
    tag = f"restart_{uuid.uuid4().hex[:6]}"
    kafka = EmbeddedKafka().start()
    redis_server = EmbeddedRedis(persist=True, directory=tmp_path / "redis")
    try:
        redis_server.start()
        prefix = f"{tag}."
        ensure_topics(kafka.bootstrap, Topics(prefix), partitions=3)
        env = child_env(
            kafka_bootstrap=kafka.bootstrap,
            redis_url=redis_server.url,
            topic_prefix=prefix,
            key_namespace=tag,
            partitions=3,
            broker_timeouts="fast",
            max_wait=0.2,
            max_batch=250,
        )
        logs = tmp_path / "logs"
        logs.mkdir()
        store = Store.from_url(redis_server.url, tag)
        p = Pipe(kafka, redis_server, prefix, env, logs, store)
        p.procs["worker"] = spawn(["worker", "-v"], env, logs / "worker.log")
        try:
            p.wait_ready()
            yield p
        finally:
            for proc in p.procs.values():
                stop(proc)
            store.close()
    finally:
        redis_server.stop()
        kafka.stop()


class Feeder(threading.Thread):
    """Sends deletion events in slices, each slice until the broker acknowledged it.

    ``acked`` counts the events the broker acknowledged so far (the test reads it to know
    where the stream was when it stopped a service). A slice that fails (the broker is
    away) is sent again after a pause: at-least-once, as a client with retries does.

    The feeder holds once ``hold_at`` events are acknowledged (``held`` is set) until the
    test sets ``go``: the test stops a service while the stream is held, then lets the rest
    of it arrive during the outage. Where the outage lands in the stream is so decided by
    the test, not by how fast this machine sends (the stream itself can then go quickly).
    """

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: Sequence[DeletionRequested],
        hold_at: int = N_DELETIONS // 2,
    ) -> None:
        super().__init__(daemon=True)
        self.bootstrap, self.topic, self.events = bootstrap, topic, list(events)
        self.chunk, self.every = 100, 0.1
        self.hold_at = hold_at
        self.acked = 0
        self.failures = 0
        self.error: BaseException | None = None
        self.go = threading.Event()  # cleared: hold before the next slice
        self.go.set()
        self.held = threading.Event()  # set once it holds at ``hold_at``

    def run(self) -> None:
        try:
            producer = self._producer()
            for i in range(0, len(self.events), self.chunk):
                if i >= self.hold_at and not self.held.is_set():
                    self.go.clear()
                    self.held.set()
                self.go.wait()
                while True:
                    try:
                        self._send(producer, self.events[i : i + self.chunk])
                        break
                    except KafkaError:
                        self.failures += 1
                        producer.close(timeout=1)
                        time.sleep(0.5)
                        producer = self._producer()
                self.acked = min(i + self.chunk, len(self.events))
                time.sleep(self.every)
            producer.close()
        except BaseException as exc:  # reported by the test
            self.error = exc

    def _producer(self) -> KafkaProducer:
        return KafkaProducer(
            bootstrap_servers=self.bootstrap,
            linger_ms=20,
            acks="all",
            max_block_ms=5_000,
            request_timeout_ms=5_000,
            reconnect_backoff_max_ms=500,
        )

    def _send(self, producer: KafkaProducer, events: Sequence[DeletionRequested]) -> None:
        futures = [
            producer.send(self.topic, key=ev.record_ids[0].encode(), value=encode_event(ev))
            for ev in events
        ]
        for fut in futures:
            fut.get(timeout=10)


def _model(pipe: Pipe, name: str, start: int) -> tuple[Any, ...]:
    table, X_test, y_test = adult(start, 4_000)
    train_model(pipe.store, name, table, params=PARAMS, holdout=0.0)
    rng = np.random.default_rng(start)
    doomed = [table.ids[i] for i in rng.choice(len(table), size=N_DELETIONS, replace=False)]
    return table, X_test, y_test, doomed


def _check_exactly_once(pipe: Pipe, model_id: str, request_ids: list[str]) -> None:
    got = receipts(pipe.store, model_id, request_ids)
    assert all(r is not None and r.status.value == "applied" for r in got)
    assert all(r is not None and r.n_records == 1 for r in got)  # one record, removed once
    on_topic = receipt_messages(pipe.bootstrap, pipe.topics.receipts, model_id, request_ids)
    missing = [q for q in request_ids if q not in on_topic]
    differing = {q: v for q, v in on_topic.items() if len(v) > 1}
    assert not missing, f"{len(missing)} receipts never reached the topic, e.g. {missing[:3]}"
    assert not differing, f"{len(differing)} requests got two different receipts"


def _no_dead_letters(pipe: Pipe) -> None:
    dead = read_topic(pipe.bootstrap, pipe.topics.dead_letter)
    reasons = [json.loads(m.value).get("reason") for m in dead]
    assert not dead, f"{len(dead)} dead letters: {reasons[:5]}"


def test_redis_restart_mid_stream(pipe: Pipe) -> None:
    model = "adult-redis-restart"
    table, X_test, y_test, doomed = _model(pipe, model, 0)
    events = deletions(model, doomed)
    request_ids = [ev.request_id for ev in events]
    worker_pid = pipe.worker.pid

    feeder = Feeder(pipe.bootstrap, pipe.topics.deletions, events)
    feeder.start()
    poll(feeder.held.is_set, 60, "the first part of the stream sent")
    poll(lambda: n_final(pipe.store, model, request_ids) >= 300, 120, "300 final receipts")
    port = pipe.redis.port
    done_at_stop = n_final(pipe.store, model, request_ids)
    pipe.redis.stop()  # SIGTERM: redis-server flushes its AOF and exits
    assert not pipe.redis.running
    sent_at_stop = feeder.acked
    feeder.go.set()  # the rest of the stream arrives while Redis is away
    time.sleep(REDIS_DOWN)  # deletions keep arriving; the worker cannot apply them
    sent_while_down = feeder.acked - sent_at_stop
    pipe.redis.start()
    assert pipe.redis.port == port
    done_at_restart = n_final(pipe.store, model, request_ids)  # what the AOF brought back

    assert 300 <= done_at_stop <= done_at_restart  # the AOF brought every receipt back
    assert done_at_restart < N_DELETIONS  # the restart landed mid-stream
    assert sent_while_down > 0 and sent_at_stop < N_DELETIONS
    feeder.join(120)
    assert feeder.error is None and not feeder.is_alive()
    poll(lambda: n_final(pipe.store, model, request_ids) == N_DELETIONS, 120, "all receipts")

    assert pipe.worker.poll() is None and pipe.worker.pid == worker_pid  # never died
    _check_exactly_once(pipe, model, request_ids)
    _no_dead_letters(pipe)
    coef_bound_check(pipe.store, model, table, set(doomed), X_test, y_test)

    # the outage is logged in a few clear lines, not a traceback flood
    log = pipe.log("worker")
    unreachable = [line for line in log.splitlines() if "Redis is unreachable" in line]
    batch = [line for line in unreachable if "retrying the deletion batch" in line]
    assert len(batch) == 1, log[-3000:]  # a batch arrived while Redis was down: retried
    assert len(unreachable) <= 2, unreachable  # the first to find it, and the batch
    assert sum("Redis is reachable again" in line for line in log.splitlines()) == 1
    assert "Traceback" not in log, log[-5000:]
    assert "dead-lettering" not in log


def test_broker_outage_mid_stream(pipe: Pipe) -> None:
    model = "adult-broker-outage"
    table, X_test, y_test, doomed = _model(pipe, model, 4_000)
    events = deletions(model, doomed)
    request_ids = [ev.request_id for ev in events]
    worker_pid = pipe.worker.pid

    feeder = Feeder(pipe.bootstrap, pipe.topics.deletions, events)
    feeder.start()
    poll(feeder.held.is_set, 60, "the first part of the stream sent")
    poll(lambda: n_final(pipe.store, model, request_ids) >= 300, 120, "300 final receipts")
    broker = pipe.kafka.pid
    assert broker is not None
    os.kill(broker, signal.SIGSTOP)  # the broker answers nothing: fetch, commit, produce
    try:
        done_at_freeze, acked_at_freeze = n_final(pipe.store, model, request_ids), feeder.acked
        feeder.go.set()  # the client sends on into the outage
        time.sleep(BROKER_FROZEN)
        acked_while_frozen = feeder.acked - acked_at_freeze
    finally:
        os.kill(broker, signal.SIGCONT)
    assert 300 <= done_at_freeze < N_DELETIONS
    assert acked_at_freeze < N_DELETIONS and acked_while_frozen == 0  # a real outage
    feeder.join(180)
    assert feeder.error is None and not feeder.is_alive()
    poll(lambda: n_final(pipe.store, model, request_ids) == N_DELETIONS, 180, "all receipts")

    assert pipe.worker.poll() is None and pipe.worker.pid == worker_pid
    _check_exactly_once(pipe, model, request_ids)
    _no_dead_letters(pipe)
    coef_bound_check(pipe.store, model, table, set(doomed), X_test, y_test)


def test_broker_restart_with_memory_storage(pipe: Pipe) -> None:
    """The embedded broker restarts empty: what survives, and the way back.

    Lost with the broker: topics, the deletions it held that no worker had applied yet,
    committed offsets. Kept: Redis (every deletion applied before is final there). The
    worker process survives the restart. The way back: stop the worker before the topics
    exist again (a running one commits the read positions it had on the old topics into
    the new ones, and would then skip the new topics' first messages), recreate the
    topics, start a worker, and re-send every request without a final receipt (request
    ids make that safe): each is then applied exactly once.
    """
    assert not pipe.kafka.persistent
    model = "adult-broker-restart"
    table, X_test, y_test, doomed = _model(pipe, model, 8_000)
    events = deletions(model, doomed)
    request_ids = [ev.request_id for ev in events]

    feeder = Feeder(pipe.bootstrap, pipe.topics.deletions, events)
    feeder.start()
    # the client holds while the broker is away (Tansu would auto-create the topics)
    poll(feeder.held.is_set, 60, "the first part of the stream sent")
    poll(lambda: n_final(pipe.store, model, request_ids) >= 300, 120, "300 final receipts")
    port = pipe.kafka.port
    pipe.kafka.restart()  # same port, nothing kept
    assert pipe.kafka.port == port
    done_at_restart = n_final(pipe.store, model, request_ids)
    assert 300 <= done_at_restart < N_DELETIONS and feeder.acked < N_DELETIONS
    # the worker meets the empty broker: it rejoins its group there, and lives on
    ready = f"unlearn-worker:{pipe.worker.pid} ready:"
    poll(
        lambda: pipe.worker.poll() is not None or pipe.log("worker").count(ready) >= 2,
        60,
        "the worker to rejoin its group on the restarted broker",
    )
    assert pipe.worker.poll() is None  # and survives it

    pipe.worker.send_signal(signal.SIGKILL)  # at-least-once makes a kill safe
    pipe.worker.wait(10)
    ensure_topics(pipe.bootstrap, pipe.topics, partitions=3)
    pipe.procs["worker"] = spawn(["worker", "-v"], pipe.env, pipe.logs / "worker.log")
    pipe.wait_ready()
    feeder.go.set()
    feeder.join(180)
    assert feeder.error is None and not feeder.is_alive()
    got = receipts(pipe.store, model, request_ids)
    pending = [ev for ev, r in zip(events, got, strict=True) if r is None or not r.status.final]
    _send_all(pipe.bootstrap, pipe.topics.deletions, pending)  # the client re-sends
    poll(lambda: n_final(pipe.store, model, request_ids) == N_DELETIONS, 120, "all receipts")

    got = receipts(pipe.store, model, request_ids)
    assert all(r is not None and r.status.value == "applied" and r.n_records == 1 for r in got)
    _no_dead_letters(pipe)
    coef_bound_check(pipe.store, model, table, set(doomed), X_test, y_test)


def _send_all(bootstrap: str, topic: str, events: Sequence[DeletionRequested]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    try:
        for ev in events:
            producer.send(topic, key=ev.record_ids[0].encode(), value=encode_event(ev))
        producer.flush(30)
    finally:
        producer.close()

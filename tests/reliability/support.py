"""Helpers of the reliability tests: restart a worker, stream events, read topics, check."""

from __future__ import annotations

import json
import signal
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from pipeline import LogisticUnlearner
from pipeline.datasets import load
from pipeline.events import DeletionRequested, Receipt, encode_event
from pipeline.store import Store
from pipeline.training import Table
from workers.processes import spawn

PARAMS: dict[str, Any] = {"lam": 1e-3, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "seed": 0}


def poll(check: Callable[[], Any], timeout: float, what: str) -> Any:
    """Poll ``check`` every 50 ms until it returns something truthy; fail after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:g} s waiting for {what}")
        time.sleep(0.05)


def adult(start: int, n: int) -> tuple[Table, np.ndarray, np.ndarray]:
    """``n`` rows of UCI Adult (a9a encoding) from ``start``, and the standard test split."""
    data = load("adult_a9a", preprocess=False)
    X, y = data.X[start : start + n], data.y[start : start + n]
    ids = [f"a{i}" for i in range(start, start + n)]
    table = Table(X=X, y=y, subjects=[f"u{i}" for i in range(start, start + n)], ids=ids)
    assert data.X_test is not None and data.y_test is not None
    return table, data.X_test, data.y_test


def worker_ready(pipe: Any, pid: int) -> bool:
    raw = pipe.store.client.get(pipe.store.keys.worker(f"{pipe.prefix}unlearn-worker:{pid}"))
    return bool(raw) and bool(json.loads(raw).get("assigned_partitions"))


def start_worker(pipe: Any, crash_at: str | None = None, timeout: float = 90.0) -> Any:
    """SIGKILL the pipeline's worker if it runs, start a new one, wait until it is assigned.

    ``crash_at`` sets ``UNLEARN_CRASH_AT`` (see :mod:`pipeline.faults`) in the new worker.
    """
    old = pipe.procs.get("worker")
    if old is not None and old.poll() is None:
        old.send_signal(signal.SIGKILL)
        old.wait(10)
    env = dict(pipe.env)
    if crash_at is not None:
        env["UNLEARN_CRASH_AT"] = crash_at
    proc = spawn(["worker", "-v"], env, pipe.logs / "worker.log")
    pipe.procs["worker"] = proc

    def ready() -> bool:
        if proc.poll() is not None:
            raise AssertionError(f"worker exited with {proc.returncode}:\n{pipe.log('worker')}")
        return worker_ready(pipe, proc.pid)

    poll(ready, timeout, "the restarted worker to be assigned its partitions")
    return proc


def deletions(model_id: str, record_ids: Sequence[str]) -> list[DeletionRequested]:
    return [
        DeletionRequested(request_id=f"del-{rid}", record_ids=[rid], model_ids=[model_id])
        for rid in record_ids
    ]


def send(bootstrap: str, topic: str, events: Sequence[DeletionRequested]) -> None:
    producer = KafkaProducer(bootstrap_servers=bootstrap, linger_ms=20, acks="all")
    for ev in events:
        producer.send(topic, key=ev.record_ids[0].encode(), value=encode_event(ev))
    producer.flush()
    producer.close()


class Streamer(threading.Thread):
    """Sends deletion events in slices of ``chunk`` every ``every`` seconds."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        events: Sequence[DeletionRequested],
        chunk: int,
        every: float,
    ) -> None:
        super().__init__(daemon=True)
        self.args = (bootstrap, topic, events, chunk, every)
        self.error: BaseException | None = None

    def run(self) -> None:
        bootstrap, topic, events, chunk, every = self.args
        try:
            for i in range(0, len(events), chunk):
                send(bootstrap, topic, events[i : i + chunk])
                time.sleep(every)
        except BaseException as exc:  # reported by the test
            self.error = exc


def receipts(store: Store, model_id: str, request_ids: Sequence[str]) -> list[Receipt | None]:
    out: list[Receipt | None] = []
    for i in range(0, len(request_ids), 2_000):
        out.extend(store.receipts.get_many(request_ids[i : i + 2_000], model_id))
    return out


def n_final(store: Store, model_id: str, request_ids: Sequence[str]) -> int:
    return sum(
        1 for r in receipts(store, model_id, request_ids) if r is not None and r.status.final
    )


def read_topic(
    bootstrap: str,
    topic: str,
    until: Callable[[list[Any]], bool] | None = None,
    timeout: float = 60.0,
) -> list[Any]:
    """Every message of ``topic``, from the beginning to its end offsets.

    The end offsets are taken when the read starts, so nothing already on the topic is
    missed however slow the broker answers. With ``until``, the read goes on to the new
    end offsets until ``until(messages)`` holds (for messages still being produced), or
    ``timeout`` seconds pass (the caller's assertions then say what is missing).
    """
    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap, enable_auto_commit=False, fetch_max_wait_ms=100
    )
    try:
        parts = sorted(consumer.partitions_for_topic(topic) or [])
        tps = [TopicPartition(topic, p) for p in parts]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        out: list[Any] = []
        deadline = time.monotonic() + timeout
        ends = consumer.end_offsets(tps)
        while True:
            for batch in consumer.poll(timeout_ms=200).values():
                out.extend(batch)
            if all(consumer.position(tp) >= ends[tp] for tp in tps):
                if until is None or until(out) or time.monotonic() > deadline:
                    return out
                ends = consumer.end_offsets(tps)  # not there yet: read what came since
            elif time.monotonic() > deadline:
                raise AssertionError(f"timed out after {timeout:g} s reading {topic}")
    finally:
        consumer.close()


def receipt_messages(
    bootstrap: str, topic: str, model_id: str, request_ids: Sequence[str] = ()
) -> dict[str, set[tuple]]:
    """The distinct receipts each request got for ``model_id`` on the receipts topic.

    The topic is at-least-once: a request replayed after a crash announces its receipt
    again, with the same ``event_id``, version and status. A receipt is identified by those.
    A receipt reaches the topic just after the Redis transaction that made it final, so the
    read goes on until every one of ``request_ids`` has announced one (or a minute passed).
    """
    seen: dict[str, set[tuple]] = {}
    counted = [0]  # how many of the messages read so far are in ``seen``

    def complete(messages: list[Any]) -> bool:
        for msg in messages[counted[0] :]:
            body = json.loads(msg.value)
            if body.get("model_id") == model_id and body.get("status") in (
                "applied",
                "already_absent",
            ):
                key = (body["event_id"], body["version"], body["status"], body["completed_at"])
                seen.setdefault(body["request_id"], set()).add(key)
        counted[0] = len(messages)
        return set(request_ids) <= seen.keys()

    complete(read_topic(bootstrap, topic, until=complete))
    return seen


def coef_bound_check(store: Store, model_id: str, table: Table, gone: set[str], X_test, y_test):
    """The published model against an exact refit on what remains, within the certificate.

    The perturbed objective ``L_b`` is ``lam * n``-strongly convex, so any ``w`` satisfies
    ``||w - w*|| <= ||grad L_b(w)|| / (lam * n)`` where ``w*`` is its minimiser. A version's
    certificate is an upper bound of that gradient norm (README: "What the certificate
    means"), so the published coefficients and an exact refit (whose own residual is its
    certificate) are at most ``(c_published + c_refit) / (lam * n)`` apart. The same holds
    for the engine applied directly to the same deletions in one batch. Returns the
    measured distances and bounds for the report.
    """
    keep = [i for i, rid in enumerate(table.ids) if rid not in gone]
    ids = [table.ids[i] for i in keep]
    assert store.records.ids(model_id) == set(ids)  # the remaining records, exactly
    published = store.models.get(model_id)
    meta = published.metadata
    assert meta.n_records == len(ids)
    X, y = table.X[keep], table.y[keep]
    exact = LogisticUnlearner(**PARAMS, certificate="exact").fit(X, y, ids=ids)
    scale = PARAMS["lam"] * len(ids)
    dist = float(np.linalg.norm(np.ravel(published.coef) - np.ravel(exact.coef_)))
    bound = (float(meta.certificate) + float(exact.certificate_)) / scale
    assert dist <= bound * (1 + 1e-6) + 1e-9, (dist, bound, meta.certificate)

    direct = LogisticUnlearner(**PARAMS).fit(table.X, table.y, ids=table.ids)
    direct.forget(sorted(gone))
    ddist = float(np.linalg.norm(np.ravel(published.coef) - np.ravel(direct.coef_)))
    dbound = (float(meta.certificate) + float(direct.certificate_)) / scale
    assert ddist <= dbound * (1 + 1e-6) + 1e-9, (ddist, dbound)

    # and on held-out data the two predict alike (accuracy within half a point)
    margin = X_test @ np.ravel(published.coef) + float(np.ravel(published.intercept)[0])
    acc_pub = float(np.mean((margin > 0).astype(int) == y_test))
    acc_exact = exact.score(X_test, y_test)
    assert abs(acc_pub - acc_exact) <= 0.005, (acc_pub, acc_exact)
    return {
        "dist": dist,
        "bound": bound,
        "direct_dist": ddist,
        "direct_bound": dbound,
        "rel": dist / float(np.linalg.norm(exact.coef_)),
        "acc": (acc_pub, acc_exact),
    }

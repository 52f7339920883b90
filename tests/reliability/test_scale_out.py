"""Scale-out: three workers, six partitions, two models, one owner per model.

Deletion requests (keyed by subject) go through the intake stage of whichever worker
consumes them and reach each model's owner on ``unlearn.model-ops``; new records reach
the same owner on ``unlearn.records`` (co-partitioned). While both flow, one worker is
SIGKILLed and a fourth joins. Proved: every request gets exactly one final receipt per
model, nothing is dead-lettered, each model holds exactly the records it should, and no
worker ever finds a model moved under it by another writer (the version check's
conflict reload never happens: one writer per model). Then, with the group settled, an
operator's retrain of one model runs while its deletions keep flowing: the refit is
merged by the model's owner, never discarded.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time
import uuid
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from kafka import KafkaProducer

from pipeline.events import DeletionRequested, RecordAdded, encode_event
from pipeline.sdk.deletions import partition_for
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics, record_key
from pipeline.training import Table, train_model
from workers.processes import child_env, spawn, stop

from .support import poll, read_topic

PARTITIONS = 6
D = 8
PARAMS = {"lam": 1e-2, "sigma": 1.0, "seed": 0}


@dataclass
class Cluster:
    """Workers over one topic prefix and key namespace."""

    bootstrap: str
    prefix: str
    env: dict[str, str]
    store: Store
    logs: Path
    procs: list[Any] = field(default_factory=list)

    @property
    def topics(self) -> Topics:
        return Topics(self.prefix)

    def start_worker(self) -> Any:
        n = len(self.procs)
        proc = spawn(["worker", "-v"], self.env, self.logs / f"worker{n}.log")
        self.procs.append(proc)
        return proc

    def cli(self, *args: str) -> Any:
        return subprocess.run(
            [str(Path(sys.executable).with_name("unlearn")), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def assigned(self) -> dict[int, int]:
        """Partitions assigned per live worker pid, from their status keys."""
        out = {}
        for key in self.store.client.scan_iter(match=self.store.keys.worker("*")):
            status = json.loads(self.store.client.get(key) or "{}")
            pid = status.get("pid")
            if any(p.pid == pid and p.poll() is None for p in self.procs):
                out[pid] = status.get("assigned_partitions", 0)
        return out

    def logs_text(self) -> str:
        return "\n".join(p.read_text(errors="replace") for p in sorted(self.logs.glob("*.log")))


@pytest.fixture(scope="module")
def cluster(services, tmp_path_factory) -> Iterator[Cluster]:
    tag = f"scale_{uuid.uuid4().hex[:6]}"
    prefix = f"{tag}."
    ensure_topics(services.kafka_bootstrap, Topics(prefix), partitions=PARTITIONS)
    env = child_env(
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
        topic_prefix=prefix,
        key_namespace=tag,
        partitions=PARTITIONS,
        broker_timeouts="fast",
        max_wait=0.2,
        max_batch=200,
        retrain_hold_seconds=1.5,  # the refit waits, so deletions land while it is in flight
        retrain_min_interval=0,
    )
    store = Store.from_url(services.redis_url, tag)
    found = Cluster(services.kafka_bootstrap, prefix, env, store, tmp_path_factory.mktemp("scale"))
    try:
        yield found
    finally:
        for proc in found.procs:
            if proc.poll() is None:
                stop(proc)
        store.close()


def _models() -> list[str]:
    """Two model ids on different partitions (so two owners can be at work)."""
    names = [f"scale-{i}" for i in range(20)]
    first = names[0]
    second = next(
        n
        for n in names[1:]
        if partition_for(n, range(PARTITIONS)) != partition_for(first, range(PARTITIONS))
    )
    return [first, second]


def _table(model: str, n: int = 400) -> Table:
    rng = np.random.default_rng(zlib.crc32(model.encode()))
    X = rng.normal(size=(n, D))
    X /= np.linalg.norm(X, axis=1, keepdims=True)
    y = (X @ np.arange(1, D + 1) > 0).astype(int)
    return Table(
        X=X, y=y, subjects=[f"{model}-s{i}" for i in range(n)], ids=[f"r{i}" for i in range(n)]
    )


class Traffic(threading.Thread):
    """Deletions (by subject, no model named) and new records for both models, in slices."""

    def __init__(self, cluster: Cluster, models: list[str], tables: dict[str, Table]) -> None:
        super().__init__(daemon=True)
        self.cluster, self.models, self.tables = cluster, models, tables
        self.requests: list[str] = []
        self.added: dict[str, list[str]] = {m: [] for m in models}
        self.deleted: dict[str, list[str]] = {m: [] for m in models}
        self.error: BaseException | None = None

    def run(self) -> None:
        producer = KafkaProducer(bootstrap_servers=self.cluster.bootstrap, acks="all", linger_ms=5)
        parts = sorted(producer.partitions_for(self.cluster.topics.records) or [])
        try:
            for step in range(30):
                for model in self.models:
                    table = self.tables[model]
                    for i in range(step * 5, step * 5 + 5):  # five subjects erased
                        req = DeletionRequested(
                            request_id=f"{model}-del-{i}", subject_id=table.subjects[i]
                        )
                        producer.send(
                            self.cluster.topics.deletions,
                            key=req.subject_id.encode(),
                            value=encode_event(req),
                        )
                        self.requests.append(req.request_id)
                        self.deleted[model].append(table.ids[i])
                    for i in range(2):  # two new records
                        rid = f"new-{step}-{i}"
                        ev = RecordAdded(
                            event_id=f"{model}-{rid}",
                            model_id=model,
                            record_id=rid,
                            subject_id=f"{model}-newcomer-{step}-{i}",
                            features=[0.2] * D,
                            label=i % 2,
                        )
                        producer.send(
                            self.cluster.topics.records,
                            key=record_key(model, rid),
                            value=encode_event(ev),
                            partition=partition_for(model, parts),
                        )
                        self.added[model].append(rid)
                producer.flush()
                time.sleep(0.2)
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            self.error = exc
        finally:
            producer.close()


def test_three_workers_one_killed_one_joining_keep_one_owner_per_model(cluster: Cluster) -> None:
    models = _models()
    tables = {m: _table(m) for m in models}
    for model in models:
        train_model(cluster.store, model, tables[model], holdout=0.0, params=PARAMS)
    for _ in range(3):
        cluster.start_worker()
    poll(
        lambda: len(cluster.assigned()) == 3 and all(cluster.assigned().values()), 120, "3 workers"
    )

    traffic = Traffic(cluster, models, tables)
    traffic.start()
    poll(lambda: len(traffic.requests) >= 100, 60, "traffic under way")
    victim = cluster.procs[0]
    victim.send_signal(signal.SIGKILL)
    victim.wait(10)
    cluster.start_worker()  # a fourth joins while the rebalance after the kill settles
    traffic.join(120)
    assert traffic.error is None and not traffic.is_alive()

    def all_final() -> bool:
        for model in models:
            got = cluster.store.receipts.get_many(
                [r for r in traffic.requests if r.startswith(model)], model
            )
            if not all(r is not None and r.status.final for r in got):
                return False
        return True

    poll(all_final, 180, "a final receipt for every request")
    poll(
        lambda: all(set(traffic.added[m]) <= cluster.store.records.ids(m) for m in models),
        120,
        "every new record learned",
    )
    for model in models:
        own = [r for r in traffic.requests if r.startswith(model)]
        receipts = cluster.store.receipts.get_many(own, model)
        assert all(r is not None and r.status.value == "applied" for r in receipts), model
        assert all(r is not None and r.n_records == 1 for r in receipts), model
        expected = (set(tables[model].ids) - set(traffic.deleted[model])) | set(
            traffic.added[model]
        )
        assert cluster.store.records.ids(model) == expected, model
        # the other model's subjects were never routed here
        others = cluster.store.receipts.get_many(
            [r for r in traffic.requests if not r.startswith(model)], model
        )
        assert all(r is None for r in others)

    letters = read_topic(cluster.bootstrap, cluster.topics.dead_letter)
    assert letters == [], [m.value[:300] for m in letters]
    logs = cluster.logs_text()
    assert "moved under this worker" not in logs  # no conflict reload: one writer per model
    assert "Traceback" not in logs


def test_a_retrain_in_flight_is_merged_by_the_owner(cluster: Cluster) -> None:
    model = _models()[0]  # trained and served by the test above
    live = [p for p in cluster.procs if p.poll() is None]
    assert len(live) == 3
    retrainer = spawn(["retrainer", "-v"], cluster.env, cluster.logs / "retrainer.log")
    cluster.procs.append(retrainer)
    try:
        done = cluster.cli("retrain", model)
        assert done.returncode == 0, done.stderr
        table = _table(model)
        producer = KafkaProducer(bootstrap_servers=cluster.bootstrap, acks="all")
        requests = []
        for i in range(200, 240):  # deletions while the refit is held and handed back
            req = DeletionRequested(request_id=f"late-{i}", subject_id=table.subjects[i])
            producer.send(
                cluster.topics.deletions, key=req.subject_id.encode(), value=encode_event(req)
            )
            requests.append(req.request_id)
            time.sleep(0.05)
        producer.flush()
        producer.close()
        merged = poll(
            lambda: next(
                (m for m in cluster.store.models.history(model) if m.method == "retrain"), None
            ),
            120,
            "the refit merged",
        )
        poll(
            lambda: all(
                r is not None and r.status.final
                for r in cluster.store.receipts.get_many(requests, model)
            ),
            60,
            "the late deletions applied",
        )
        gone = {table.ids[i] for i in range(200, 240)}
        assert not gone & cluster.store.records.ids(model)
        assert merged.certificate is not None and merged.certificate <= merged.budget
        logs = cluster.logs_text()
        assert "discarding it" not in logs  # merged by the owner, never thrown away
        assert "moved under this worker" not in logs
    finally:
        stop(retrainer)

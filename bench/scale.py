"""Scale-out figures: one model's backlog of subject deletions, one worker against three.

The setting of issue 15's "one model, 3 workers against 1" target: binary logistic
regression on MNIST 3 vs 8 (n = 11,982, d = 784, Guo et al.'s preprocessing and
objective), every two consecutive rows one subject, so a subject deletion erases two
records. For each case, fresh topics (``unlearn.deletions`` and the others with 6
partitions) and a fresh key namespace, the model trained as version 1, then a backlog of
``n`` subject deletion requests (keyed by subject, no model named: the intake stage
resolves them) published while no worker runs, so every case starts from the same state.
Then ``k`` ``unlearn worker -v`` processes are started together and the bench waits
until the model's applied sequence covers all ``n`` requests.

Figures per case (the moments are commits of versions, read from the model's publication
stream, and the bench's own clock, on one machine):

* **joined**: from spawning the workers to the moment every worker is in every consumer
  group the worker runs (the model owners' faust group and the intake's own group on
  ``unlearn.deletions``): the latest of the workers' first ``Successfully synced group``
  log lines, per group. A worker's first sync puts it in a generation with every member
  that joined before it, so the latest first sync is the generation with all of them.
* **joined to done** and its **events/s**, the comparison of record: from the join to
  the commit of the version covering the last request, and the requests not yet applied
  at the join over that window. It leaves out process start-up, which is not the
  topology's cost (three Python processes importing at once on a two-core machine start
  later than one), and keeps what scaling out costs once the group exists: the owner's
  load of the model, any rebalance, and the drain itself.
* **start to done**: from the spawn to the same commit, start-up included: what an
  operator who scales out waits.
* **drain**: from the first version committed after the join to the last, the requests
  after that first version over that window (as the pipeline bench's drain phase): the
  rate once the model is loaded.
* **loads** and **conflict reloads**: from the workers' logs, the applier's
  ``loaded model ...`` lines (every read of the model from Redis, the first load
  included) and its version check's retry (``... moved under this worker; reloading``:
  another process published the model first). A case without a single load line means
  the message changed: the bench raises rather than report 0.

Before reporting, the bench checks the outcome and raises if it is wrong: every request
has exactly one receipt, for this model, final and ``applied`` with its two records; no
request is left pending; nothing is dead-lettered.

``quick`` uses a backlog of 300 requests (the same model); its figures prove the bench
runs and are not the ones to quote. ``python -m bench.scale [--quick]`` runs this module
alone and prints its figures as JSON.
"""

from __future__ import annotations

import argparse
import json
import re
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from kafka import KafkaConsumer, KafkaProducer, TopicPartition

from bench.pipeline import PARAMS, _wait
from bench.rates import format_rate, per_second
from pipeline.config import Settings, resolve_services
from pipeline.datasets import load
from pipeline.events import DeletionRequested, encode_event
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics
from pipeline.training import Table, train_model
from workers.processes import child_env, spawn, stop

__all__ = ["markdown", "run"]

Log = Callable[[str], object]
MODEL = "mnist-3v8"
PARTITIONS = 6
ROWS_PER_SUBJECT = 2
WORKERS = (1, 3)
REPEATS = 3
"""Runs of each case, interleaved (1, 3, 1, 3, ...): one run's figures on a shared two-core
machine vary by more than the difference being measured, so the comparison is of medians."""
_LOADED = re.compile(rf"loaded model '{MODEL}' v")
_CONFLICT = re.compile(rf"model '{MODEL}' moved under this worker")
_SYNCED = re.compile(
    r"^\[(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3})\] .*Successfully synced group (\S+) ",
    re.MULTILINE,
)


def _table() -> Table:
    ds = load("mnist_3v8_train")
    n = len(ds.y)
    return Table(
        X=ds.X,
        y=ds.y,
        subjects=[f"s{i // ROWS_PER_SUBJECT}" for i in range(n)],
        ids=[f"r{i}" for i in range(n)],
    )


def _backlog(bootstrap: str, topic: str, subjects: list[str]) -> list[str]:
    """One deletion request per subject on ``topic``, keyed by subject; their ids."""
    producer = KafkaProducer(
        bootstrap_servers=bootstrap, acks="all", linger_ms=5, batch_size=262_144
    )
    try:
        requests = []
        for subject in subjects:
            event = DeletionRequested(
                request_id=uuid.uuid4().hex, subject_id=subject, reason="benchmark"
            )
            producer.send(topic, key=subject.encode(), value=encode_event(event))
            requests.append(event.request_id)
        producer.flush()
    finally:
        producer.close()
    return requests


def _messages(bootstrap: str, topic: str) -> int:
    """How many messages ``topic`` holds (its end offsets; the topics are fresh)."""
    consumer = KafkaConsumer(bootstrap_servers=bootstrap)
    try:
        tps = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or []]
        return sum(consumer.end_offsets(tps).values())
    finally:
        consumer.close()


def _joined(logs: list[Path], case: str) -> float:
    """When every worker was in every group (see the module docstring), as a Unix time."""
    first: list[dict[str, float]] = []
    for path in logs:
        synced: dict[str, float] = {}
        for stamp, group in _SYNCED.findall(path.read_text(errors="replace")):
            at = datetime.strptime(stamp, "%Y-%m-%d %H:%M:%S,%f").timestamp()  # local, as logged
            synced.setdefault(group, at)
        first.append(synced)
    groups = set().union(*first)
    if not groups or any(set(synced) != groups for synced in first):
        msg = (
            f"scale bench, {case}: not every worker logged a 'Successfully synced group' line "
            f"for each of {sorted(groups)} in {logs[0].parent}; update _SYNCED"
        )
        raise AssertionError(msg)
    return max(at for synced in first for at in synced.values())


def _check_receipts(store: Store, requests: list[str], case: str) -> None:
    """Raise unless every request has exactly one final receipt, applied to both records."""
    wrong = []
    for rid in requests:
        receipts = store.receipts.get(rid)
        if len(receipts) != 1 or receipts[0].model_id != MODEL:
            wrong.append(f"{rid}: {len(receipts)} receipts")
            continue
        r = receipts[0]
        if not r.status.final or r.status.value != "applied" or r.n_records != ROWS_PER_SUBJECT:
            wrong.append(f"{rid}: {r.status.value}, {r.n_records} records")
    pending = store.receipts.pending(MODEL)
    if wrong or pending:
        msg = (
            f"scale bench, {case}: {len(wrong)} of {len(requests)} requests without exactly "
            f"one final applied receipt (first: {wrong[:3]}), {len(pending)} still pending"
        )
        raise AssertionError(msg)


def _count(logs: list[Path], pattern: re.Pattern[str]) -> int:
    return sum(len(pattern.findall(p.read_text(errors="replace"))) for p in logs)


def _case(
    bootstrap: str, redis_url: str, table: Table, n: int, workers: int, say: Log
) -> dict[str, Any]:
    """Drain a fresh backlog of ``n`` subject deletions with ``workers`` processes."""
    tag = f"scale{uuid.uuid4().hex[:6]}"
    topics = Topics(f"{tag}.")
    case = f"{workers} worker{'s' if workers > 1 else ''}"
    ensure_topics(bootstrap, topics, partitions=PARTITIONS)
    store = Store.from_url(redis_url, tag)
    logdir = Path(tempfile.mkdtemp(prefix=f"unlearn-{tag}-"))
    try:
        say(f"scale: {case}: training {MODEL} (n={len(table.y)}) in namespace {tag}")
        train_model(store, MODEL, table, params=PARAMS, holdout=0)
        subjects = list(dict.fromkeys(table.subjects))[:n]
        requests = _backlog(bootstrap, topics.deletions, subjects)
        env = child_env(
            kafka_bootstrap=bootstrap,
            redis_url=redis_url,
            topic_prefix=topics.prefix,
            key_namespace=tag,
            partitions=PARTITIONS,
            broker_timeouts="fast",
            retrain_min_interval=3600,
        )
        seq0 = store.models.applied_seq(MODEL) or 0

        def covered() -> bool:
            return (store.models.applied_seq(MODEL) or 0) - seq0 >= n

        logs = [logdir / f"worker{i}.log" for i in range(workers)]
        say(f"scale: {case}: draining {n} subject deletions (logs in {logdir})")
        start = time.time()
        procs = [spawn(["worker", "-v"], env, path) for path in logs]
        try:
            _wait(covered, 300, f"{case}: {n} deletions applied (worker logs in {logdir})")
            versions = sorted(
                (int(e["version"]), int(e["seq"]), datetime.fromisoformat(e["created_at"]))
                for e in store.models.notices(MODEL, count=100_000)
                if int(e["version"]) > 1
            )
            _check_receipts(store, requests, case)
            dead = _messages(bootstrap, topics.dead_letter)
            if dead:
                msg = f"scale bench, {case}: {dead} dead letters on {topics.dead_letter}"
                raise AssertionError(msg)
        finally:
            for proc in procs:
                stop(proc)
        loads = _count(logs, _LOADED)
        if loads == 0:  # the model was loaded to be changed: the log line must have moved
            msg = f"scale bench, {case}: no {_LOADED.pattern!r} line in {logdir}; update _LOADED"
            raise AssertionError(msg)
        joined = _joined(logs, case)
        last = versions[-1]
        before = [v for v in versions if v[2].timestamp() < joined]
        after = [v for v in versions if v[2].timestamp() >= joined]
        early = before[-1][1] - seq0 if before else 0  # requests applied before the join
        drain = (last[2] - after[0][2]).total_seconds() if after else 0.0
        return {
            "workers": workers,
            "events": n,
            "start_to_done_s": last[2].timestamp() - start,
            "joined_s": joined - start,
            "first_version_s": versions[0][2].timestamp() - start,
            "applied_before_join": early,
            "joined_to_done_s": last[2].timestamp() - joined,
            "events_per_second": per_second(n - early, last[2].timestamp() - joined),
            "drain_s": drain,
            "drain_events_per_second": per_second(last[1] - after[0][1], drain) if after else None,
            "versions_published": len(versions),
            "loads": loads,
            "conflict_reloads": _count(logs, _CONFLICT),
            "receipts_checked": len(requests),
        }
    finally:
        store.close()


def run(quick: bool = False, log: Log | None = None) -> dict[str, Any]:
    """One worker, then three, through the same backlog, ``REPEATS`` times interleaved."""
    say: Log = log or (lambda _msg: None)
    n = 300 if quick else 3_000
    repeats = 1 if quick else REPEATS
    table = _table()
    settings = Settings()
    with resolve_services(settings) as found:
        cases = []
        for run_no in range(1, repeats + 1):
            for workers in WORKERS:
                row = _case(found.kafka_bootstrap, found.redis_url, table, n, workers, say)
                row["run"] = run_no
                say(
                    f"scale: run {run_no}, {workers} worker(s): {row['joined_to_done_s']:.2f} s "
                    f"joined to done ({format_rate(row['events_per_second'], ' events/s')}), "
                    f"{row['start_to_done_s']:.2f} s start to done, "
                    f"{row['loads']} loads, {row['conflict_reloads']} conflict reloads"
                )
                cases.append(row)
    return {
        "dataset": {"name": "mnist_3v8_train", "n": len(table.y), "d": table.X.shape[1]},
        "rows_per_subject": ROWS_PER_SUBJECT,
        "partitions": PARTITIONS,
        "embedded_services": found.embedded,
        "repeats": repeats,
        "cases": cases,
        "medians": medians(cases),
    }


def medians(cases: list[dict[str, Any]]) -> dict[int, dict[str, float]]:
    """Per worker count, the median of each case's joined-to-done and start-to-done times."""
    out: dict[int, dict[str, float]] = {}
    for workers in sorted({c["workers"] for c in cases}):
        rows = [c for c in cases if c["workers"] == workers]
        out[workers] = {
            "joined_to_done_s": statistics.median(c["joined_to_done_s"] for c in rows),
            "start_to_done_s": statistics.median(c["start_to_done_s"] for c in rows),
            "conflict_reloads": sum(c["conflict_reloads"] for c in rows),
        }
    return out


def markdown(result: dict[str, Any]) -> str:
    """The section of BENCHMARKS.md."""
    ds, cases = result["dataset"], result["cases"]
    n = cases[0]["events"]
    lines = [
        "## Scale-out: one model, one worker against three",
        "",
        f"A backlog of {n} subject deletion requests ({result['rows_per_subject']} records "
        f"each, no model named) on `unlearn.deletions` with {result['partitions']} "
        f"partitions, one binary logistic model on {ds['name']} (n = {ds['n']}, d = {ds['d']}); "
        "then `unlearn worker` processes started together, fresh topics and namespace per "
        "case. *Joined* is when every worker was in each of its consumer groups (the "
        "owners' and the intake's; from their logs), from the spawn; *joined to done* runs "
        "from there to the commit of the version covering the last request, and its "
        "events/s counts the requests not applied at the join: the comparison of record, "
        "which leaves out process start-up (three processes start slower than one on two "
        "cores) and keeps the model's load, any rebalance and the "
        "drain. *Start to done* runs from the spawn, start-up included; *drain* from the "
        "first version committed after the join to the last. *Loads* counts every read of "
        "the model from Redis, the first included; *conflict reloads* the reloads after "
        "another worker published the model first (target: 0). Every request was checked to "
        "have exactly one final receipt, applied to its records, and nothing was "
        f"dead-lettered. Each case ran {result.get('repeats', 1)} time(s), interleaved "
        "(1, 3, 1, 3, ...); the comparison is of the medians below the table.",
        "",
        "| run | workers | joined (s) | joined to done (s) | events/s (joined to done) | start to "
        "done (s) | drain (s) | drain events/s | versions | loads | conflict reloads |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cases:
        lines.append(
            f"| {c.get('run', 1)} | {c['workers']} | {c['joined_s']:.2f} | "
            f"{c['joined_to_done_s']:.2f} | "
            f"{format_rate(c['events_per_second'])} | {c['start_to_done_s']:.2f} | "
            f"{c['drain_s']:.2f} | {format_rate(c['drain_events_per_second'])} | "
            f"{c['versions_published']} | {c['loads']} | {c['conflict_reloads']} |"
        )
    lines.append("")
    for workers, m in sorted(result.get("medians", {}).items()):
        lines.append(
            f"- **{workers} worker{'s' if workers > 1 else ''}, median:** "
            f"{m['joined_to_done_s']:.2f} s joined to done, {m['start_to_done_s']:.2f} s "
            f"start to done, {m['conflict_reloads']} conflict reloads in all runs."
        )
    return "\n".join([*lines, ""])


def main() -> None:
    parser = argparse.ArgumentParser(description="One model, one worker against three.")
    parser.add_argument("--quick", action="store_true", help="a backlog of 300, for a smoke run")
    args = parser.parse_args()
    result = run(quick=args.quick, log=lambda msg: print(msg, flush=True))
    print(json.dumps(result, indent=2))
    print(markdown(result))


if __name__ == "__main__":
    main()

"""``unlearn demo``: the whole pipeline on scikit-learn's digits, end to end.

1. train a one-vs-rest logistic model (``fit_intercept=True``) on 75% of the digits, each
   image owned by one of 300 synthetic subjects, and publish version 1 to Redis;
2. start a worker and a retrainer as child processes (they die with this process);
3. publish deletion requests for several subjects, a stream of new records, and an
   operator's retrain request in the middle of it, through the real broker;
4. wait until every receipt is final, every record learned and the retrain merged;
5. compare the published model with a model retrained from scratch on the records the
   pipeline holds at the end (so without the deleted subjects), and stop everything
   (with ``keep``: once the user presses Ctrl-C).

The status page (:class:`~pipeline.dashboard.Dashboard`) of the demo's namespace is
served from step 2 on, reading the worker's and the retrainer's ``/metrics``.
"""

from __future__ import annotations

import json
import socket
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from pipeline.config import ResolvedServices, Settings, redact_url
from pipeline.dashboard import Dashboard
from pipeline.errors import PipelineError
from pipeline.retraining import engine_from_state
from pipeline.sdk import DeletionClient, LinearPredictor
from pipeline.store import Store
from pipeline.topics import Topics, ensure_topics
from pipeline.training import Table as Rows
from pipeline.training import train_model
from workers.processes import child_env, spawn, stop, stop_requested
from workers.retrainer import request_retrain

__all__ = ["run_demo"]

MODEL = "digits"
PARAMS = {"lam": 1e-3, "sigma": 1.0, "epsilon": 1.0, "delta": 1e-4, "fit_intercept": True}
N_OWNERS = 300


def _wait(what: str, check: Callable[[], bool], timeout: float, procs: list[Any]) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        for proc in procs:
            if proc.poll() is not None:
                msg = f"a pipeline process exited ({proc.returncode}) while waiting for {what}"
                raise PipelineError(msg)
        if time.monotonic() > deadline:
            msg = f"timed out after {timeout:g} s waiting for {what}"
            raise PipelineError(msg)
        time.sleep(0.1)


def run_demo(
    console: Console,
    settings: Settings,
    services: ResolvedServices,
    *,
    n_subjects: int = 12,
    n_records: int = 200,
    seed: int | None = None,
    keep: bool = False,
) -> dict[str, Any]:
    """Run the demo against ``services``; print progress and a summary, return the figures.

    ``seed`` fixes the model's perturbation b (reproducible figures; a fixed b voids the
    certified guarantee), and the data split and synthetic subjects; None (the default)
    draws b from the operating system's entropy and keeps the data of seed 0. ``keep``
    leaves the worker, the retrainer and the status page running after the summary until
    Ctrl-C (the caller keeps the services).
    """
    started = time.monotonic()
    run = uuid.uuid4().hex[:6]
    prefix, namespace = f"demo-{run}.", f"demo-{run}"
    topics = Topics(prefix)
    ensure_topics(
        services.kafka_bootstrap, topics, partitions=3, client_config=settings.kafka_config()
    )
    store = Store.from_settings(
        settings.model_copy(update={"key_namespace": namespace}), services.redis_url
    )

    # 1. the data and version 1
    X, y = load_digits(return_X_y=True)
    X = X / 16.0
    data_seed = 0 if seed is None else seed
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=0.25, random_state=data_seed
    )
    rng = np.random.default_rng(data_seed)
    owners = [f"subject-{k}" for k in rng.integers(0, N_OWNERS, size=len(y_train))]
    ids = [f"d{i}" for i in range(len(y_train))]
    n_stream = min(n_records, len(y_train) // 4)
    first = len(y_train) - n_stream
    for r in range(first, len(y_train)):  # the streamed records belong to new subjects
        owners[r] = f"newcomer-{r % 50}"
    table = Rows(X=X_train[:first], y=y_train[:first], subjects=owners[:first], ids=ids[:first])
    _engine, v1 = train_model(
        store, MODEL, table, params={**PARAMS, "seed": seed}, holdout=0.1, seed=data_seed
    )
    console.print(
        f"trained [bold]{MODEL}[/] v1 on {v1.metadata.n_records} digits (10 classes, "
        f"{N_OWNERS} subjects): holdout accuracy "
        f"{v1.metadata.holdout_metrics.get('accuracy', float('nan')):.4f}, "
        f"certificate {v1.metadata.certificate:.2e} / budget {v1.metadata.budget:.3f}"
    )

    # 2. worker and retrainer
    env = child_env(
        kafka_bootstrap=services.kafka_bootstrap,
        redis_url=services.redis_url,
        topic_prefix=prefix,
        key_namespace=namespace,
        partitions=3,
        broker_timeouts="fast",
        max_wait=0.3,
        max_batch=100,
        retrain_hold_seconds=2,
        retrain_min_interval=0,
    )
    logs = Path(tempfile.mkdtemp(prefix="unlearn-demo-"))
    retrainer_port = _free_port()
    procs = [
        spawn(["worker"], env, logs / "worker.log"),
        spawn(["retrainer", "--metrics-port", str(retrainer_port)], env, logs / "retrainer.log"),
    ]
    page = Dashboard(
        store,
        settings,
        metrics_urls=[f"http://127.0.0.1:{retrainer_port}/metrics"],
        title="unlearn demo",
    )
    try:
        page.start()
        console.print(f"status page: {page.url} (live while the demo runs)")
        summary = _drive(
            console,
            store,
            services,
            topics,
            procs,
            owners,
            ids,
            first,
            X_train,
            y_train,
            X_test,
            y_test,
            n_subjects,
            rng,
        )
        summary["dashboard_url"] = page.url
        if keep:
            _keep_running(console, page.url, procs, env)
    except PipelineError as exc:
        for name in ("worker", "retrainer"):
            tail = (logs / f"{name}.log").read_text(errors="replace").splitlines()[-15:]
            console.print(f"[dim]--- {name} log (last lines) ---[/]\n" + "\n".join(tail))
        raise exc
    finally:
        page.stop()
        codes = [stop(p) for p in procs]
        store.close()
    summary["seconds"] = time.monotonic() - started
    summary["exit_codes"] = codes
    console.print(f"done in {summary['seconds']:.1f} s; worker and retrainer stopped")
    return summary


def _free_port() -> int:
    """A port free on loopback now (for the retrainer's /metrics, which the page reads)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _keep_running(console: Console, url: str, procs: list[Any], env: dict[str, str]) -> None:
    """Leave the pipeline and its page up until Ctrl-C (or until a process exits)."""
    names = ("KAFKA_BOOTSTRAP", "REDIS_URL", "TOPIC_PREFIX", "KEY_NAMESPACE")
    exports = " ".join(f"UNLEARN_{n}={redact_url(env[f'UNLEARN_{n}'])}" for n in names)
    console.print(
        f"the services, the worker, the retrainer and the status page stay up: {url}\n"
        f"in another shell: export {exports}\n"
        "then e.g. `unlearn delete --subject subject-7 --wait 30` and look it up on the "
        "page; press Ctrl-C here to stop everything",
        soft_wrap=True,
        highlight=False,
    )

    with stop_requested() as stop:  # Ctrl-C or SIGTERM
        while not stop.wait(0.5):
            if any(proc.poll() is not None for proc in procs):
                console.print("a pipeline process exited; stopping the demo")
                return
    console.print("stopping the demo")


def _drive(
    console: Console,
    store: Store,
    services: ResolvedServices,
    topics: Topics,
    procs: list[Any],
    owners: list[str],
    ids: list[str],
    first: int,
    X_train: np.ndarray,
    y_train: np.ndarray,
    X_test: np.ndarray,
    y_test: np.ndarray,
    n_subjects: int,
    rng: np.random.Generator,
) -> dict[str, Any]:
    status_key = store.keys.worker  # the worker announces itself (pid, metrics port)

    def worker_status() -> dict[str, Any] | None:
        for key in store.client.scan_iter(match=status_key("*")):
            status = json.loads(store.client.get(key) or b"{}")
            if status.get("assigned_partitions"):
                return dict(status)
        return None

    t0 = time.monotonic()
    with console.status("starting the worker and the retrainer (joining the consumer group)"):
        _wait(
            "the worker to join its consumer group", lambda: worker_status() is not None, 90, procs
        )
    status = worker_status() or {}
    metrics_url = f"http://127.0.0.1:{status.get('metrics_port')}/metrics"
    console.print(f"worker ready in {time.monotonic() - t0:.1f} s; metrics at {metrics_url}")

    # 3. deletions, new records, and a retrain in the middle
    held_subjects = sorted(set(owners[:first]))
    forgotten = [str(s) for s in rng.choice(held_subjects, size=n_subjects, replace=False)]
    stream_rows = list(range(first, len(ids)))
    chunks = np.array_split(np.array(stream_rows, dtype=int), max(n_subjects, 1))
    request_ids: list[str] = []
    with DeletionClient(services.kafka_bootstrap, topics.prefix) as client:
        for i, subject in enumerate(forgotten):
            rows = chunks[i] if i < len(chunks) else np.array([], dtype=int)
            if rows.size:
                client.add_records(
                    MODEL,
                    [
                        {
                            "record_id": ids[r],
                            "subject_id": owners[r],
                            "features": X_train[r],
                            "label": int(y_train[r]),
                        }
                        for r in rows
                    ],
                )
            request_ids.append(client.request(subject_id=subject, reason="demo: GDPR Art. 17"))
            if i == len(forgotten) // 2:
                request_retrain(
                    services.kafka_bootstrap, topics, MODEL, store.models.applied_seq(MODEL) or 0
                )
    console.print(
        f"published {len(request_ids)} deletion requests, {len(stream_rows)} new records "
        "and an operator's retrain request"
    )

    # 4. wait for the pipeline
    new_ids = [ids[r] for r in stream_rows]
    erased_subjects = set(forgotten)
    expected_new = {
        rid for rid, r in zip(new_ids, stream_rows, strict=True) if owners[r] not in erased_subjects
    }

    def final_receipts() -> int:
        return sum(
            1
            for rid in request_ids
            if (rs := store.receipts.get(rid)) and all(r.status.final for r in rs)
        )

    def merged() -> bool:
        # from the publication stream, not the history: a deletion applied after the merge
        # retires every earlier version, the merged one too
        published = store.models.notices(MODEL, count=10_000)
        return any(notice.get("method") == "retrain" for notice in published)

    columns = (
        TextColumn("{task.description:<22}"),
        BarColumn(),
        TextColumn("{task.completed:>5.0f}/{task.total:.0f}"),
        TimeElapsedColumn(),
    )
    with Progress(*columns, console=console) as bar:
        t_rcpt = bar.add_task("deletion receipts", total=len(request_ids))
        t_recs = bar.add_task("new records learned", total=len(expected_new))
        t_retr = bar.add_task("retrain merged", total=1)
        deadline = time.monotonic() + 90
        while True:
            done_r = final_receipts()
            held = store.records.ids(MODEL)
            done_n = len(expected_new & held)
            is_merged = merged()
            bar.update(t_rcpt, completed=done_r)
            bar.update(t_recs, completed=done_n)
            bar.update(t_retr, completed=int(is_merged))
            if done_r == len(request_ids) and done_n == len(expected_new) and is_merged:
                break
            for proc in procs:
                if proc.poll() is not None:
                    msg = f"a pipeline process exited with code {proc.returncode}"
                    raise PipelineError(msg)
            if time.monotonic() > deadline:
                msg = "timed out waiting for the pipeline to apply the demo's events"
                raise PipelineError(msg)
            time.sleep(0.2)
    # let a batch that is being applied right now finish: the version must stay put
    stable = store.models.current_version(MODEL)
    time.sleep(1.0)
    while store.models.current_version(MODEL) != stable:
        stable = store.models.current_version(MODEL)
        time.sleep(1.0)
    return _summary(console, store, request_ids, X_test, y_test, metrics_url, erased_subjects)


def _summary(
    console: Console,
    store: Store,
    request_ids: list[str],
    X_test: np.ndarray,
    y_test: np.ndarray,
    metrics_url: str,
    erased_subjects: set[str],
) -> dict[str, Any]:
    history = store.models.history(MODEL)
    current = history[0]
    receipts = [r for rid in request_ids for r in store.receipts.get(rid)]
    by_status: dict[str, int] = {}
    for r in receipts:
        by_status[r.status.value] = by_status.get(r.status.value, 0) + 1
    # every version published, from the stream: the history keeps only those no erasure
    # has retired since
    published_versions = store.models.notices(MODEL, count=10_000)
    methods: dict[str, int] = {}
    for notice in published_versions:
        methods[notice["method"]] = methods.get(notice["method"], 0) + 1

    # the comparison: a model fitted from scratch on what the pipeline holds now
    held = list(store.records.scan(MODEL))
    if any(r.subject_id in erased_subjects for r in held):
        msg = "a deleted subject's record is still held: the pipeline lost a deletion"
        raise PipelineError(msg)
    # from w = 0 with the published model's perturbation b, which only its checkpoint holds
    checkpoint = store.checkpoints.load(MODEL, current.version)
    if checkpoint is None:
        msg = f"version {current.version} has no engine checkpoint to compare with"
        raise PipelineError(msg)
    scratch = engine_from_state(checkpoint.state, held)
    scratch.refit(warm_start=False)
    published = LinearPredictor(store.models.get(MODEL))
    acc_pub = published.score(X_test, y_test)
    acc_scratch = scratch.score(X_test, y_test)
    distance = float(
        np.linalg.norm(published.coef_ - scratch.coef_) / np.linalg.norm(scratch.coef_)
    )
    table = Table(title="summary", show_header=False)
    table.add_row(
        "versions published",
        f"{len(published_versions)} ("
        + ", ".join(f"{k} {v}" for k, v in sorted(methods.items()))
        + ")",
    )
    table.add_row(
        "deletion receipts",
        f"{len(receipts)} (" + ", ".join(f"{k} {v}" for k, v in sorted(by_status.items())) + ")",
    )
    table.add_row("records held", str(current.n_records))
    table.add_row(
        "certificate / budget",
        f"{current.certificate:.3e} / {current.budget:.3f}"
        if current.certificate is not None and current.budget is not None
        else "-",
    )
    table.add_row("test accuracy, published v" + str(current.version), f"{acc_pub:.4f}")
    table.add_row("test accuracy, retrained from scratch", f"{acc_scratch:.4f}")
    table.add_row("relative parameter distance", f"{distance:.2e}")
    table.add_row("metrics endpoint (worker)", metrics_url)
    console.print(table)
    return {
        "versions": len(published_versions),
        "receipts": len(receipts),
        "receipt_statuses": by_status,
        "accuracy_published": acc_pub,
        "accuracy_scratch": acc_scratch,
        "relative_parameter_distance": distance,
        "certificate": current.certificate,
        "budget": current.budget,
        "metrics_url": metrics_url,
    }

"""The ``unlearn`` command line.

User mistakes (a bad file, an unknown model, a missing setting) end with one line that says
what was wrong and how to fix it, and exit status 2; never a traceback.

Commands that need Kafka or Redis read ``UNLEARN_KAFKA_BOOTSTRAP`` and ``UNLEARN_REDIS_URL``;
when neither is set they start the embedded broker and redis-server for the command's
duration and say so in one line (``unlearn services`` keeps them running for others).
"""

from __future__ import annotations

import json
import logging
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from pipeline.config import ResolvedServices, Settings, load_settings, resolve_services
from pipeline.errors import PipelineError, UnknownModel
from workers.processes import stop_requested

app = typer.Typer(
    help="A streaming machine-unlearning pipeline: forget records, keep models certified.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
bench_app = typer.Typer(help="Benchmarks (the figures `make bench` writes to BENCHMARKS.md).")
app.add_typer(bench_app, name="bench")
model_app = typer.Typer(help="Inspect a model: its current version, history, coefficients.")
app.add_typer(model_app, name="model")
access_app = typer.Typer(
    help="Redis ACL users: a reader (published models, receipts) and a writer (the pipeline)."
)
app.add_typer(access_app, name="access")

console = Console()
errors = Console(stderr=True)


@contextmanager
def _services(settings: Settings) -> Iterator[ResolvedServices]:
    """The services to use; announce the embedded ones in one line."""
    with resolve_services(settings) as found:
        if found.embedded:
            errors.print(
                f"dev mode: started embedded Kafka at {found.kafka_bootstrap} and redis-server "
                f"at {found.redis_url} (set UNLEARN_KAFKA_BOOTSTRAP and UNLEARN_REDIS_URL to "
                "use yours)"
            )
        yield found


def _store(settings: Settings, found: ResolvedServices) -> Any:
    from pipeline.store import Store

    return Store.from_settings(settings, found.redis_url)


def _logging(verbose: bool) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )


# ---- the demo ---------------------------------------------------------------------------
@app.command()
def demo(
    engine_only: Annotated[
        bool, typer.Option("--engine-only", help="Only the engine, no broker or Redis.")
    ] = False,
    subjects: Annotated[int, typer.Option(help="Subjects whose records are forgotten.")] = 12,
    records: Annotated[int, typer.Option(help="New records streamed in.")] = 200,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the objective perturbation b and the demo's data. Default: b from "
            "the OS's entropy, the data of seed 0. A fixed seed makes b reproducible and "
            "voids the certified guarantee: for tests only."
        ),
    ] = None,
    keep: Annotated[
        bool,
        typer.Option(
            "--keep",
            help="Afterwards, leave the services, the worker, the retrainer and the status "
            "page running to explore; Ctrl-C stops them.",
        ),
    ] = False,
) -> None:
    """Train on scikit-learn's digits, stream deletions and records through the pipeline.

    Serves the live status page while it runs (its address is printed first).
    """
    if engine_only:
        from workers.engine_demo import run_engine_demo

        run_engine_demo(console, n_subjects=subjects, seed=seed)
        return
    from workers.demo import run_demo

    settings = load_settings()
    with _services(settings) as found:
        run_demo(
            console,
            settings,
            found,
            n_subjects=subjects,
            n_records=records,
            seed=seed,
            keep=keep,
        )


# ---- long-running processes -------------------------------------------------------------
@app.command()
def worker(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log every batch.")] = False,
) -> None:
    """Run a streaming worker (faust): apply deletions and new records, publish models."""
    from faust.worker import Worker
    from threadpoolctl import threadpool_limits

    from pipeline.topics import Topics, ensure_topics
    from workers.app import build_app

    settings = load_settings()
    threadpool_limits(settings.blas_threads)  # for the whole process (see Settings)
    with _services(settings) as found:
        ensure_topics(
            found.kafka_bootstrap,
            Topics(settings.topic_prefix),
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            client_config=settings.kafka_config(),
        )
        faust_app, runtime = build_app(settings, found.kafka_bootstrap, found.redis_url)
        runtime.store.client.ping()  # wrong credentials: one line and exit now, not in faust
        runtime.metrics_port = runtime.metrics.serve(settings.metrics_port, settings.metrics_addr)
        errors.print(f"metrics: http://127.0.0.1:{runtime.metrics_port}/metrics")
        runner = Worker(
            faust_app,
            loglevel="INFO" if verbose else "WARNING",
            quiet=True,
            redirect_stdouts=False,
        )
        # faust's start-up spinner sets the root logger to DEBUG, so every library's debug
        # record (aiokafka logs each send) was built and filtered: 4 % of a busy worker
        runner.spinner = None
        runner.execute_from_commandline()


@app.command()
def retrainer(
    verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log each retrain.")] = False,
    metrics_port: Annotated[
        int | None,
        typer.Option(help="Serve /metrics on this port (default: UNLEARN_METRICS_PORT)."),
    ] = None,
) -> None:
    """Run the retrainer: full refits on consistent snapshots, handed back to the worker."""
    from pipeline.metrics import default_metrics
    from pipeline.topics import Topics, ensure_topics
    from workers.retrainer import run_retrainer

    _logging(True)
    logging.getLogger("kafka").setLevel(logging.INFO if verbose else logging.WARNING)
    settings = load_settings()
    with _services(settings) as found:
        ensure_topics(
            found.kafka_bootstrap,
            Topics(settings.topic_prefix),
            partitions=settings.partitions,
            replication_factor=settings.replication_factor,
            client_config=settings.kafka_config(),
        )
        metrics = default_metrics()
        metrics.up.labels("retrainer").set(1)
        port = metrics.serve(
            settings.metrics_port if metrics_port is None else metrics_port, settings.metrics_addr
        )
        errors.print(f"metrics: http://127.0.0.1:{port}/metrics")
        try:
            run_retrainer(settings, found.kafka_bootstrap, found.redis_url, console=errors)
        except KeyboardInterrupt:
            pass


@app.command()
def services(
    dashboard: Annotated[
        bool,
        typer.Option(help="Also serve the status page of the default namespace (read-only)."),
    ] = True,
) -> None:
    """Start the embedded broker and redis-server and print where they are; Ctrl-C stops them."""
    from pipeline.embedded import EmbeddedServices

    try:
        with EmbeddedServices() as found, ExitStack() as stack:
            stopping = stack.enter_context(stop_requested())  # before the address is out
            sys.stdout.write(f"UNLEARN_KAFKA_BOOTSTRAP={found.kafka_bootstrap}\n")
            sys.stdout.write(f"UNLEARN_REDIS_URL={found.redis_url}\n")
            sys.stdout.flush()
            if dashboard and not stopping.is_set():
                resolved = ResolvedServices(found.kafka_bootstrap, found.redis_url, embedded=True)
                page = stack.enter_context(_dashboard(load_settings(), resolved))
                errors.print(f"status page: {page.url}")
            errors.print("embedded services running; press Ctrl-C to stop them")
            while not stopping.wait(0.5):
                if not (found.kafka.running and found.redis.running):
                    msg = "an embedded service exited unexpectedly"
                    raise PipelineError(msg)
    except KeyboardInterrupt:  # before the handler was in place
        pass
    errors.print("stopped the embedded services")


@contextmanager
def _dashboard(
    settings: Settings,
    found: ResolvedServices,
    metrics_urls: list[str] | None = None,
    title: str = "unlearn",
) -> Iterator[Any]:
    """The status page over ``found``'s Redis, served until the block ends."""
    from pipeline.dashboard import Dashboard

    with _store(settings, found) as store:
        with Dashboard(store, settings, metrics_urls=metrics_urls or (), title=title) as page:
            yield page


@app.command()
def dashboard(
    port: Annotated[
        int | None, typer.Option(help="Port (default: UNLEARN_DASHBOARD_PORT; 0: a free one).")
    ] = None,
    addr: Annotated[
        str | None,
        typer.Option(help="Address to listen on (default: UNLEARN_DASHBOARD_ADDR, loopback)."),
    ] = None,
    metrics: Annotated[
        list[str] | None,
        typer.Option(
            help="Another /metrics URL to read (repeatable): a retrainer's, or a worker on "
            "another machine. Workers on this machine are found through their status keys."
        ),
    ] = None,
) -> None:
    """Serve the live status page: models, the stream, receipts, audits. Ctrl-C stops it.

    Reads the Redis of UNLEARN_REDIS_URL (`unlearn services` prints the embedded one's)
    and the workers' /metrics; changes nothing.
    """
    overrides: dict[str, Any] = {}
    if port is not None:
        overrides["dashboard_port"] = port
    if addr is not None:
        overrides["dashboard_addr"] = addr
    settings = load_settings(**overrides)
    if not settings.redis_url:
        msg = (
            "UNLEARN_REDIS_URL is not set: point it at the pipeline's Redis (`unlearn "
            "services` prints the embedded one's; `unlearn demo --keep` serves its own page)"
        )
        raise PipelineError(msg)
    found = ResolvedServices(settings.kafka_bootstrap or "", settings.redis_url, embedded=False)
    with stop_requested() as stopping, _dashboard(settings, found, metrics) as page:
        errors.print(f"status page: {page.url} (read-only; Ctrl-C stops it)")
        stopping.wait()
    errors.print("stopped the status page")


# ---- models -----------------------------------------------------------------------------
@app.command()
def train(
    model_id: Annotated[str, typer.Argument(metavar="MODEL", help="Id of the new model.")],
    data: Annotated[Path, typer.Option(help="Training rows: a .csv with a header or a .npz.")],
    kind: Annotated[str, typer.Option(help="logistic or ridge.")] = "logistic",
    label_column: Annotated[str, typer.Option(help="Label column of a CSV.")] = "label",
    subject_column: Annotated[
        str | None, typer.Option(help="Subject column (CSV) or array (npz).")
    ] = None,
    id_column: Annotated[str | None, typer.Option(help="Record id column of a CSV.")] = None,
    holdout: Annotated[float, typer.Option(help="Fraction kept for the accuracy check.")] = 0.2,
    lam: Annotated[
        str,
        typer.Option(
            help="Logistic: L2 penalty per record, or 'auto': choose it on the training rows "
            "by validation, showing each candidate's accuracy and the removals its "
            "certificate supports."
        ),
    ] = "1e-3",
    min_removals: Annotated[
        int, typer.Option(help="With --lam auto: removals the chosen lambda must support.")
    ] = 10,
    alpha: Annotated[float, typer.Option(help="Ridge: L2 penalty.")] = 1.0,
    sigma: Annotated[float, typer.Option(help="Objective perturbation (0: no certificate).")] = 1.0,
    epsilon: Annotated[float, typer.Option(help="Removal guarantee epsilon.")] = 1.0,
    delta: Annotated[float, typer.Option(help="Removal guarantee delta.")] = 1e-4,
    fit_intercept: Annotated[bool, typer.Option(help="Fit an intercept.")] = True,
    seed: Annotated[
        int | None,
        typer.Option(
            help="Seed of the objective perturbation b and the holdout split. Default: b "
            "from the OS's entropy (secret, not recorded) and a random split. A fixed seed "
            "makes b reproducible and voids the certified guarantee: for tests only."
        ),
    ] = None,
) -> None:
    """Load records into Redis, fit, and publish version 1 with its engine checkpoint.

    Prints the model next to scikit-learn's uncertified default and the majority class on
    the same holdout, and warns when the certified model is no better than the latter.
    """
    import secrets

    from pipeline.training import load_table, split_rows, train_model

    table = load_table(
        data, label_column=label_column, subject_column=subject_column, id_column=id_column
    )
    split_seed = seed if seed is not None else secrets.randbits(62)
    hold, rows = split_rows(len(table), holdout, split_seed)
    from pipeline.unlearning.kinds import kind_named

    entry = kind_named(kind)
    options = {
        "lam": _lam(lam) if "lam" in entry.params() else None,
        "alpha": alpha,
        "sigma": sigma,
        "epsilon": epsilon,
        "delta": delta,
        "seed": seed,
        "fit_intercept": fit_intercept,
    }
    params: dict[str, Any] = entry.select(options)
    if "lam" in params and params["lam"] is None:
        params["lam"] = _choose_lam(kind, table.X[rows], table.y[rows], params, min_removals)
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        engine, result = train_model(
            store,
            model_id,
            table,
            kind=kind,
            holdout=holdout,
            seed=seed,
            params=params,
            split_seed=split_seed,
        )
        meta = result.metadata
        overall = {k: v for k, v in meta.holdout_metrics.items() if "[" not in k}
        metrics = ", ".join(f"{k} {v:.4f}" for k, v in overall.items())
        console.print(
            f"model [bold]{model_id}[/] v{meta.version}: {meta.n_records} records, "
            f"{meta.n_features} features, certificate {meta.certificate:.3g} / budget "
            f"{meta.budget:.3g}" + (f", holdout {metrics}" if metrics else "")
        )
    if len(hold):
        _compare_with_baselines(kind, table, rows, hold, next(iter(overall.values()), None))


def _lam(text: str) -> float | None:
    """``--lam``: a positive number, or ``auto`` (None: choose it)."""
    if text.strip().lower() == "auto":
        return None
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not value > 0:
        msg = f"--lam {text!r}: give a positive number (e.g. 1e-4) or 'auto'"
        raise PipelineError(msg)
    return value


def _choose_lam(kind: str, X: Any, y: Any, params: dict[str, Any], min_removals: int) -> float:
    from pipeline.tuning import choose_lam, lam_frontier

    others = {k: v for k, v in params.items() if k != "lam"}
    frontier = lam_frontier(X, y, params=others, kind=kind)
    table = Table(title="--lam auto: the price of certification (validation rows)")
    for col in ("lambda", "accuracy", "budget", "removals supported"):
        table.add_column(col)
    for c in frontier:
        more = "+" if c.capped else ""
        table.add_row(
            f"{c.lam:g}", f"{c.accuracy:.4f}", f"{c.budget:.3g}", f"{c.removals_supported}{more}"
        )
    console.print(table)
    chosen = choose_lam(frontier, min_removals)
    console.print(
        f"chosen lambda {chosen.lam:g}: the most accurate that supports at least "
        f"{min_removals} removals before a retrain (counted under Guo's accumulated bound; "
        "the default certificate supports at least as many)"
    )
    return chosen.lam


def _compare_with_baselines(
    kind: str, table: Any, rows: Any, hold: Any, score: float | None
) -> None:
    """The published model next to scikit-learn's default and the majority class."""
    from pipeline.tuning import baselines
    from pipeline.unlearning.kinds import kind_named

    ref = baselines(kind, table.X[rows], table.y[rows], table.X[hold], table.y[hold])
    name = kind_named(kind).score
    line = f"uncertified scikit-learn default on the same split: {name} {ref.sklearn:.4f}"
    if ref.majority is not None:
        line += f"; majority class {ref.majority:.4f}"
    console.print(line)
    if ref.majority is not None and score is not None and score <= ref.majority + 0.005:
        errors.print(
            f"warning: the model is no better than predicting the majority class "
            f"({score:.4f} vs {ref.majority:.4f}): the penalty lambda is probably too large "
            "for these rows; try `--lam auto` or a smaller --lam"
        )


@app.command()
def delete(
    subject: Annotated[
        str | None, typer.Option(help="Forget every record of this subject.")
    ] = None,
    record: Annotated[
        list[str] | None, typer.Option(help="Forget this record (repeatable).")
    ] = None,
    model: Annotated[
        list[str] | None, typer.Option(help="Only this model (repeatable); default: all.")
    ] = None,
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "erasure request",
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    objection: Annotated[
        bool,
        typer.Option(
            help="GDPR Art. 21: also keep the subject's later records out, until "
            "`unlearn objection lift`."
        ),
    ] = False,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the receipts (0: do not wait).")
    ] = 0.0,
) -> None:
    """Publish a deletion request; print its id (and, with --wait, its receipts)."""
    if subject is None and not record:
        msg = "give --subject or --record: the request names nothing to delete"
        raise PipelineError(msg)
    _send_request(
        lambda client: client.request(
            subject_id=subject,
            record_ids=record or None,
            model_ids=model or None,
            reason=reason,
            request_id=request_id,
            objection=objection,
        ),
        wait,
    )


@app.command("forget-feature")
def forget_feature(
    model_id: Annotated[str, typer.Argument(metavar="MODEL")],
    columns: Annotated[
        list[str],
        typer.Argument(
            metavar="COLUMN...",
            help="0-based column indices, or feature names when the model was trained from "
            "a CSV with a header.",
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "feature removal",
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the receipt (0: do not wait).")
    ] = 0.0,
) -> None:
    """Make a model stop using feature columns, now and for records it learns later."""
    named: list[int | str] = [int(c) if c.isdigit() else c for c in columns]
    _send_request(
        lambda client: client.forget_features(
            model_id, named, reason=reason, request_id=request_id
        ),
        wait,
    )


@app.command()
def relabel(
    model_id: Annotated[str, typer.Argument(metavar="MODEL")],
    record: Annotated[
        list[str], typer.Option(help="A record to relabel (repeatable, each with a --label).")
    ],
    label: Annotated[
        list[str],
        typer.Option(
            help="Its corrected label (repeatable: the n-th --label goes with the n-th --record)."
        ),
    ],
    reason: Annotated[str, typer.Option(help="Why, for the audit trail.")] = "label correction",
    request_id: Annotated[str | None, typer.Option(help="Idempotency key.")] = None,
    wait: Annotated[
        float, typer.Option(help="Seconds to wait for the receipt (0: do not wait).")
    ] = 0.0,
) -> None:
    """Correct the labels of records a model holds (e.g. a label-flip poisoning)."""
    if len(record) != len(label):
        msg = (
            f"{len(record)} --record and {len(label)} --label: give one --label after each --record"
        )
        raise PipelineError(msg)
    if len(set(record)) != len(record):
        msg = "a record is named twice: give each --record one --label"
        raise PipelineError(msg)
    labels = dict(zip(record, (_parse_label(v) for v in label), strict=True))
    _send_request(
        lambda client: client.relabel(model_id, labels, reason=reason, request_id=request_id),
        wait,
    )


def _parse_label(text: str) -> int | float | str:
    """A label as typed: an integer, else a number, else the text (as ``unlearn train``
    reads labels from a CSV)."""
    for kind in (int, float):
        try:
            return kind(text)
        except ValueError:
            continue
    return text


def _send_request(send: Callable[[Any], str], wait: float) -> None:
    """Produce a request with ``send(DeletionClient)``; print its id and, with ``wait``,
    its receipts, failing (exit 1, no traceback) when one is missing or ``rejected``."""
    from pipeline.sdk import DeletionClient

    settings = load_settings()
    with _services(settings) as found:
        with DeletionClient(
            found.kafka_bootstrap, settings.topic_prefix, **settings.kafka_config()
        ) as client:
            rid = send(client)
        console.print(f"request {rid} published")
        if wait > 0:
            with _store(settings, found) as store:
                receipts = _wait_receipts(store, rid, wait)
            _print_receipts(rid, receipts)
            if not receipts or not all(r.status.final for r in receipts):
                msg = f"request {rid}: no final receipt from every model within {wait:g} s"
                raise PipelineError(msg)
            rejected = [r for r in receipts if r.status.value == "rejected"]
            if rejected:
                msg = f"request {rid} rejected by {rejected[0].model_id!r}: {rejected[0].reason}"
                raise PipelineError(msg)


objection_app = typer.Typer(help="Objections (GDPR Art. 21) to a subject's data being learned.")
app.add_typer(objection_app, name="objection")


@objection_app.command("lift")
def objection_lift(
    subject: Annotated[str, typer.Option(help="The subject whose objection ends.")],
    model: Annotated[
        list[str] | None,
        typer.Option(help="The model the objection named (repeatable); default: all models."),
    ] = None,
) -> None:
    """End an objection: the subject's records produced from now on may be learned again.

    Records produced before now stay out (they were sent while the objection held).
    """
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        lifted = store.suppressions.lift(subject, model or None)
    if not lifted:
        scope = ", ".join(model) if model else "all models"
        msg = (
            f"no objection of that subject is held for {scope}: check --subject, and --model "
            "if the objection named models"
        )
        raise PipelineError(msg)
    console.print(f"objection lifted ({lifted} scope(s)); later records will be learned")


def _wait_receipts(store: Any, request_id: str, timeout: float) -> list[Any]:
    deadline = time.monotonic() + timeout
    receipts: list[Any] = []
    while time.monotonic() < deadline:
        receipts = store.receipts.get(request_id)
        if receipts and all(r.status.final for r in receipts):
            break
        time.sleep(0.2)
    return receipts


def _print_receipts(request_id: str, receipts: list[Any]) -> None:
    table = Table(title=f"receipts of {request_id}")
    for col in (
        "model",
        "status",
        "version",
        "method",
        "records",
        "changed",
        "certificate",
        "budget",
        "completed",
        "due",
    ):
        table.add_column(col)
    for r in receipts:
        table.add_row(
            r.model_id,
            r.status.value,
            "" if r.version is None else str(r.version),
            r.method or "",
            str(r.n_records),
            _changed(r),
            "" if r.certificate is None else f"{r.certificate:.3g}",
            "" if r.budget is None else f"{r.budget:.3g}",
            "" if r.completed_at is None else r.completed_at.isoformat(timespec="seconds"),
            r.due_at.date().isoformat(),
        )
    console.print(table)


def _changed(receipt: Any) -> str:
    """What a feature removal or relabel changed (or why it was rejected), for the table."""
    if receipt.reason and receipt.status.value == "rejected":
        return f"rejected: {receipt.reason}"
    if receipt.columns is not None:
        return "columns " + (", ".join(map(str, receipt.columns)) or "none (already forgotten)")
    if receipt.relabelled is not None:
        shown = ", ".join(receipt.relabelled[:5])
        more = f", ... ({len(receipt.relabelled)})" if len(receipt.relabelled) > 5 else ""
        return f"labels of {shown}{more}"
    return ""


@app.command()
def receipt(
    request_id: Annotated[str, typer.Argument(metavar="REQUEST_ID")],
    as_json: Annotated[bool, typer.Option("--json", help="One JSON object per line.")] = False,
) -> None:
    """Where a request (deletion, feature removal, relabel) took effect: one receipt per model."""
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        receipts = store.receipts.get(request_id)
    if not receipts:
        msg = f"no receipt for request {request_id!r}: unknown id, or not processed yet"
        raise PipelineError(msg)
    if as_json:
        for r in receipts:
            sys.stdout.write(r.model_dump_json(by_alias=True) + "\n")
        return
    _print_receipts(request_id, receipts)


@model_app.command("show")
def model_show(model_id: Annotated[str, typer.Argument(metavar="MODEL")]) -> None:
    """The current version of a model: method, records, certificate, holdout metrics."""
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        meta = store.models.metadata(model_id)
    table = Table(title=f"model {model_id}", show_header=False)
    for name, value in meta.model_dump(exclude={"coef_spec", "intercept_spec"}).items():
        table.add_row(
            name, json.dumps(value, default=str) if isinstance(value, dict | list) else str(value)
        )
    console.print(table)


@model_app.command("history")
def model_history(
    model_id: Annotated[str, typer.Argument(metavar="MODEL")],
    limit: Annotated[int, typer.Option(help="Newest versions to show.")] = 20,
) -> None:
    """The kept versions of a model, newest first."""
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        if not store.models.current_version(model_id):
            raise UnknownModel(model_id)
        history = store.models.history(model_id, limit)
    table = Table(title=f"history of {model_id}")
    for col in ("version", "parent", "method", "records", "seq", "certificate", "created"):
        table.add_column(col)
    for m in history:
        table.add_row(
            str(m.version),
            str(m.parent or ""),
            m.method,
            str(m.n_records),
            str(m.seq),
            "" if m.certificate is None else f"{m.certificate:.3g}",
            m.created_at.isoformat(timespec="seconds"),
        )
    console.print(table)


@model_app.command("export")
def model_export(
    model_id: Annotated[str, typer.Argument(metavar="MODEL")],
    version: Annotated[int | None, typer.Option(help="Version (default: current).")] = None,
    fmt: Annotated[
        str, typer.Option("--format", help="json, or npz (NumPy arrays, no pickle).")
    ] = "json",
    output: Annotated[
        Path | None, typer.Option(help="Write here (JSON: stdout by default; npz: required).")
    ] = None,
) -> None:
    """A version's coefficients and metadata in a portable file (docs/model-format.md)."""
    from pipeline.sdk.export import check_export_target, export_bytes

    check_export_target(fmt, output)
    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        ver = store.models.get(model_id, version)
    data = export_bytes(ver, fmt)
    if output is None:
        sys.stdout.flush()
        sys.stdout.buffer.write(data)
        sys.stdout.buffer.flush()
        return
    try:
        output.write_bytes(data)
    except OSError as exc:
        msg = f"cannot write {output}: {exc.strerror or exc}; choose another --output"
        raise PipelineError(msg) from None
    console.print(f"wrote {model_id} v{ver.version} ({fmt}) to {output}")


@app.command()
def status() -> None:
    """Every model: version, records, certificate vs budget, pending deletions, retrains."""
    from pipeline.retraining import Retraining

    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        retraining = Retraining(store)
        table = Table(title="models")
        for col in (
            "model",
            "version",
            "method",
            "records",
            "certificate / budget",
            "pending deletions",
            "oldest pending",
            "last retrain",
            "retrain now",
        ):
            table.add_column(col)
        for model_id in store.models.models():
            meta = store.models.metadata(model_id)
            pending = store.receipts.pending(model_id)
            fits = [m for m in store.models.history(model_id) if m.method in ("fit", "retrain")]
            last = fits[0] if fits else None
            flight = retraining.in_flight(model_id)
            cert = (
                "-"
                if meta.certificate is None or meta.budget is None
                else f"{meta.certificate:.3g} / {meta.budget:.3g}"
            )
            table.add_row(
                model_id,
                str(meta.version),
                meta.method,
                str(meta.n_records),
                cert,
                str(len(pending)),
                _age(pending[0][1]) if pending else "-",
                "-"
                if last is None
                else f"v{last.version} ({last.method}, {_age(last.created_at)})",
                "-"
                if flight is None
                else f"{flight.get('reason')} {100 * float(flight.get('progress', 0)):.0f}%",
            )
    console.print(table)


@app.command("audit")
def audit_command(
    model_id: Annotated[str, typer.Argument(metavar="MODEL")],
    request: Annotated[
        str | None,
        typer.Option("--request", help="Also audit this deletion request, in every model."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
    reference: Annotated[
        bool,
        typer.Option(
            "--reference",
            help="Also refit a reference model from the stored records and compare accuracy "
            "overall and per class (disparity; a full refit, the slow part).",
        ),
    ] = False,
    broker: Annotated[
        bool,
        typer.Option(
            help="With --request: read the request and the tombstones from the topics "
            "(--no-broker: Redis only, the request's ids then go unchecked)."
        ),
    ] = True,
) -> None:
    """Check MODEL's current version from stored state: certificate, integrity, erasure.

    Recomputes the certificate from the stored records, compares the published coefficients
    with the checkpoint, with --request checks that the request's data is gone, and with
    --reference compares per-class accuracy with a model refitted from the stored records.
    Stores the report with the version. Exit status 0: passed; 1: a check failed.
    """
    from pipeline.audit import audit

    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        report = audit(
            store,
            model_id,
            request,
            bootstrap=found.kafka_bootstrap if request is not None and broker else None,
            topic_prefix=settings.topic_prefix,
            kafka_config=settings.kafka_config(),
            reference=reference,
        )
    if as_json:
        sys.stdout.write(report.to_json() + "\n")
    else:
        table = Table(
            title=f"audit of {model_id} v{report.version}: {report.verdict.upper()}"
            + (f" (request {request})" if request else "")
        )
        for col in ("part", "verdict", "check", "result", "detail"):
            table.add_column(col)
        marks = {True: "ok", False: "FAILED", None: "-"}
        for part in report.parts:
            for i, f in enumerate(part.findings):
                where = f"[{f.model_id}] " if f.model_id and f.model_id != model_id else ""
                table.add_row(
                    part.part if i == 0 else "",
                    part.verdict if i == 0 else "",
                    f.check,
                    marks[f.ok],
                    where + f.detail,
                )
        console.print(table)
    if report.verdict == "fail":
        raise typer.Exit(1)


def _age(moment: datetime) -> str:
    seconds = (datetime.now(UTC) - moment).total_seconds()
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f}{unit} ago"
    return f"{seconds:.0f}s ago"


@app.command()
def retrain(model_id: Annotated[str, typer.Argument(metavar="MODEL")]) -> None:
    """Ask for a full refit of MODEL now (an operator's request)."""
    from pipeline.topics import Topics
    from workers.retrainer import request_retrain

    settings = load_settings()
    with _services(settings) as found, _store(settings, found) as store:
        if not store.models.current_version(model_id):
            raise UnknownModel(model_id)
        seq = store.models.applied_seq(model_id) or 0
        request_retrain(
            found.kafka_bootstrap,
            Topics(settings.topic_prefix),
            model_id,
            seq,
            client_config=settings.kafka_config(),
        )
    console.print(f"retrain of {model_id} requested (seq {seq}); follow it with `unlearn status`")


# ---- access: the Redis ACL users (pipeline/store/access.py) ------------------------------
_PW_HELP = "File holding the {}'s password (never give a password on the command line)."
ReaderUser = Annotated[
    str | None, typer.Option(help="Reader's Redis user name (default: NAMESPACE-reader).")
]
WriterUser = Annotated[
    str | None, typer.Option(help="Writer's Redis user name (default: NAMESPACE-writer).")
]
ReaderPasswordFile = Annotated[Path | None, typer.Option(help=_PW_HELP.format("reader"))]
WriterPasswordFile = Annotated[Path | None, typer.Option(help=_PW_HELP.format("writer"))]


def _access_users(
    settings: Settings,
    roles: list[Any],
    names: dict[str, str | None],
    files: dict[str, Path | None],
    require_passwords: bool,
) -> list[tuple[Any, str | None]]:
    """The users of ``roles`` with their passwords read from their files."""
    from pipeline.store.access import AclUser, read_password_file
    from pipeline.store.keys import KeySpace

    keys = KeySpace(settings.key_namespace)
    users: list[tuple[Any, str | None]] = []
    for role in roles:
        file = files[role.value]
        if file is None and require_passwords:
            msg = f"--{role.value}-password-file is required: the file holding its password"
            raise PipelineError(msg)
        password = None if file is None else read_password_file(file, role.value)
        users.append((AclUser.for_role(role, keys, names[role.value]), password))
    return users


@access_app.command("rules")
def access_rules(
    role: Annotated[
        str | None, typer.Option(help="Only this role: reader or writer (default: both).")
    ] = None,
    reader_user: ReaderUser = None,
    writer_user: WriterUser = None,
    reader_password_file: ReaderPasswordFile = None,
    writer_password_file: WriterPasswordFile = None,
    acl_file: Annotated[
        bool,
        typer.Option(
            "--acl-file", help="Lines of a Redis aclfile, with the default user, instead."
        ),
    ] = False,
    admin_password_file: Annotated[
        Path | None,
        typer.Option(help="With --acl-file: the default user's (admin's) password; else off."),
    ] = None,
    output: Annotated[Path | None, typer.Option(help="Write here instead of stdout.")] = None,
) -> None:
    """Print the ACL SETUSER line of each role, for UNLEARN_KEY_NAMESPACE (no Redis needed)."""
    from pipeline.store.access import AccessRole, read_password_file, write_acl_file
    from pipeline.store.access import acl_file as acl_file_text

    settings = load_settings()
    roles = list(AccessRole) if role is None else [AccessRole(_role(role))]
    users = _access_users(
        settings,
        roles,
        {"reader": reader_user, "writer": writer_user},
        {"reader": reader_password_file, "writer": writer_password_file},
        require_passwords=False,
    )
    if acl_file:
        admin = None
        if admin_password_file is not None:
            admin = read_password_file(admin_password_file, "admin")
        text = acl_file_text(users, admin)
    else:
        if admin_password_file is not None:
            msg = "--admin-password-file goes with --acl-file (the default user's line)"
            raise PipelineError(msg)
        text = "".join(u.command(p) + "\n" for u, p in users)
    if output is None:
        sys.stdout.write(text)
    else:
        write_acl_file(output, text)
        errors.print(f"wrote {len(users)} user(s) to {output}", highlight=False)
    for user, password in users:
        if password is None:
            errors.print(
                f"note: no --{user.role.value}-password-file: user {user.name} has no "
                "password and cannot log in until it gets one (or use `unlearn access setup`)",
                soft_wrap=True,
                highlight=False,
            )


def _role(value: str) -> str:
    from pipeline.store.access import AccessRole

    if value not in {r.value for r in AccessRole}:
        msg = f"--role {value!r}: use reader or writer, or leave it out for both"
        raise PipelineError(msg)
    return value


@access_app.command("setup")
def access_setup(
    reader_password_file: ReaderPasswordFile = None,
    writer_password_file: WriterPasswordFile = None,
    reader_user: ReaderUser = None,
    writer_user: WriterUser = None,
) -> None:
    """Create (or redefine) the reader and writer users on UNLEARN_REDIS_URL, as an admin.

    Connects with UNLEARN_REDIS_USERNAME / UNLEARN_REDIS_PASSWORD, which must be an admin
    (a user with +acl), then checks that each new user can log in. Saves them with
    ACL SAVE when Redis has an aclfile; otherwise says they last until Redis restarts.
    """
    import redis

    from pipeline.config import redact_url
    from pipeline.store.access import AccessRole, setup_users

    settings = load_settings()
    if not settings.redis_url:
        msg = (
            "UNLEARN_REDIS_URL is not set: point it at the Redis where the users go, with "
            "an admin's UNLEARN_REDIS_USERNAME / UNLEARN_REDIS_PASSWORD (the embedded "
            "redis-server of dev mode needs no users)"
        )
        raise PipelineError(msg)
    users = _access_users(
        settings,
        list(AccessRole),
        {"reader": reader_user, "writer": writer_user},
        {"reader": reader_password_file, "writer": writer_password_file},
        require_passwords=True,
    )
    where = redact_url(settings.redis_url)
    with redis.Redis.from_url(settings.redis_url, **settings.redis_kwargs()) as admin:
        result = setup_users(admin, users)
    kwargs = {k: v for k, v in settings.redis_kwargs().items() if k not in ("username", "password")}
    for user, password in users:
        try:
            with redis.Redis.from_url(
                settings.redis_url, username=user.name, password=password, **kwargs
            ) as client:
                client.ping()  # the new user logs in
        except redis.exceptions.AuthenticationError:
            msg = (
                f"user {user.name} was defined but cannot log in on {where}: another admin "
                "may have changed it meanwhile; run setup again"
            )
            raise PipelineError(msg) from None
        console.print(
            f"user {user.name} ({user.role.value}) defined on {where}: keys "
            f"{' '.join(user.key_patterns)}; channels {' '.join(user.channel_patterns)}",
            soft_wrap=True,
            highlight=False,
        )
    if result.saved:
        console.print("saved with ACL SAVE to the server's aclfile: they survive a restart")
    elif result.saved is False:
        errors.print(
            "warning: this Redis has no aclfile, so the users live in memory and are lost "
            "when it restarts: configure an aclfile (`unlearn access rules --acl-file`) or "
            "run this again after each restart",
            soft_wrap=True,
            highlight=False,
        )
    else:
        errors.print(
            "warning: the admin may not run CONFIG GET, so whether Redis keeps the users "
            "across a restart is unknown: check that yours does (aclfile, ACL SAVE)",
            soft_wrap=True,
            highlight=False,
        )


def _print_results(results: dict[str, Any], as_json: bool) -> None:
    """One JSON object on stdout for machines, or pretty JSON for people."""
    if as_json:
        sys.stdout.write(json.dumps(results) + "\n")
    else:
        console.print_json(json.dumps(results))


@bench_app.command("engine")
def bench_engine(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option(help="Smaller sizes, for a smoke run.")] = False,
) -> None:
    """Engine figures: Guo's MNIST 3-vs-8 setting and batch costs against scikit-learn."""
    from bench.engine import run_engine_bench

    results = run_engine_bench(quick=quick, log=None if as_json else console.print)
    _print_results(results, as_json)


@bench_app.command("pipeline")
def bench_pipeline(
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    quick: Annotated[bool, typer.Option(help="Fewer events, for a smoke run.")] = False,
) -> None:
    """End-to-end figures: deletion events/s through broker, worker and Redis; latency."""
    from bench.pipeline import run_pipeline_bench

    results = run_pipeline_bench(quick=quick, log=None if as_json else errors.print)
    _print_results(results, as_json)


def _redis_problem(exc: Exception) -> str | None:
    """One line for a Redis access error (never the password), or None if it is not one."""
    import redis

    from pipeline.config import redact_url

    try:
        url = load_settings().redis_url
    except PipelineError:
        url = None
    where = f"Redis at {redact_url(url)}" if url else "Redis"
    if isinstance(exc, redis.exceptions.AuthenticationError):
        return (
            f"{where}: authentication failed ({exc}); set UNLEARN_REDIS_USERNAME and "
            "UNLEARN_REDIS_PASSWORD (or user:password in UNLEARN_REDIS_URL) to an enabled "
            "Redis user"
        )
    if isinstance(exc, redis.exceptions.NoPermissionError):
        return (
            f"{where}: permission denied ({exc}); the Redis user needs the pipeline's "
            "commands on keys and channels ~UNLEARN_KEY_NAMESPACE:* (docs/reliability.md)"
        )
    if isinstance(exc, redis.exceptions.ConnectionError):
        return f"cannot reach {where}: {exc}; check UNLEARN_REDIS_URL"
    return None


def main() -> None:
    """Console entry point: run the app, turning project errors into one clear line."""
    try:
        app()
    except PipelineError as exc:
        errors.print(f"[bold red]error:[/] {exc}", soft_wrap=True, highlight=False)
        raise SystemExit(2) from None
    except Exception as exc:
        problem = _redis_problem(exc)
        if problem is None:
            raise
        errors.print(f"[bold red]error:[/] {problem}", soft_wrap=True, highlight=False)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()

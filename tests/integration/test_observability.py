"""A real Prometheus scrapes a running worker and retrainer while events flow.

promtool checks the configuration and the rules; then every PromQL expression of the
Grafana dashboard and of the alert rules is evaluated by the server against live data:
none may fail, every dashboard query must return series,
and the rule groups must evaluate cleanly. The counters must also say what happened
(deletions applied, dead letters by reason, the published version).
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
import yaml
from kafka import KafkaProducer
from sklearn.datasets import load_digits

from pipeline.audit import audit
from pipeline.sdk import DeletionClient
from pipeline.training import Table, train_model

from .prometheus import Prometheus, running_prometheus

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
MODEL = "digits-observed"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.broker  # Prometheus scrapes a worker; promtool is in this tier too


def _promtool(*args: str) -> subprocess.CompletedProcess:
    assert PROMTOOL, "promtool is missing: `make tools` installs Debian's prometheus package"
    return subprocess.run([PROMTOOL, *args], capture_output=True, text=True, timeout=60)


def test_promtool_accepts_config_and_rules():
    config = _promtool("check", "config", str(DEPLOY / "prometheus" / "prometheus.yml"))
    assert config.returncode == 0, config.stdout + config.stderr
    rules = _promtool("check", "rules", str(DEPLOY / "prometheus" / "alerts.yml"))
    assert rules.returncode == 0, rules.stdout + rules.stderr
    assert f"{len(alert_exprs())} rules found" in rules.stdout


def test_the_failed_audit_alert_fires_on_a_failed_audit_only(tmp_path) -> None:
    """promtool's rule unit test: a model whose last audit failed (overall 0) fires
    ``UnlearnAuditFailed`` after a minute; one that passed (1) or was not checked (-1) never
    does."""
    tests = tmp_path / "audit_rules_test.yml"
    tests.write_text(
        yaml.safe_dump(
            {
                "rule_files": [str(DEPLOY / "prometheus" / "alerts.yml")],
                "evaluation_interval": "1m",
                "tests": [
                    {
                        "interval": "1m",
                        "input_series": [
                            {
                                "series": 'unlearn_audit_verdict{model="bad", part="overall"}',
                                "values": "1 0 0 0",
                            },
                            {
                                "series": 'unlearn_audit_verdict{model="good", part="overall"}',
                                "values": "1 1 1 1",
                            },
                            {
                                "series": 'unlearn_audit_verdict{model="new", part="overall"}',
                                "values": "-1 -1 -1 -1",
                            },
                            {  # only the overall verdict is alerted on, not each part
                                "series": 'unlearn_audit_verdict{model="good", part="disparity"}',
                                "values": "-1 -1 -1 -1",
                            },
                        ],
                        "alert_rule_test": [
                            {
                                "eval_time": "1m",
                                "alertname": "UnlearnAuditFailed",
                                "exp_alerts": [],
                            },
                            {
                                "eval_time": "3m",
                                "alertname": "UnlearnAuditFailed",
                                "exp_alerts": [
                                    {
                                        "exp_labels": {"model": "bad", "severity": "critical"},
                                        "exp_annotations": {
                                            "summary": "The last stored audit of model bad failed",
                                            "description": _description(
                                                "UnlearnAuditFailed", "bad"
                                            ),
                                        },
                                    }
                                ],
                            },
                        ],
                    }
                ],
            }
        )
    )
    result = _promtool("test", "rules", str(tests))
    assert result.returncode == 0, result.stdout + result.stderr


def _description(alert: str, model: str) -> str:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    rule = next(r for g in doc["groups"] for r in g["rules"] if r.get("alert") == alert)
    return rule["annotations"]["description"].replace("{{ $labels.model }}", model)


def dashboard_exprs() -> list[tuple[str, str]]:
    board = json.loads((DEPLOY / "grafana" / "dashboards" / "unlearn.json").read_text())
    return [(p["title"], t["expr"]) for p in board["panels"] for t in p.get("targets", [])]


def alert_exprs() -> list[tuple[str, str]]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [(r["alert"], r["expr"]) for g in doc["groups"] for r in g["rules"]]


def records_topic(pipe) -> dict:
    """Per partition: RecordAdded events, tombstones, and the worker group's position."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=pipe.bootstrap,
        enable_auto_commit=False,
        group_id=f"{pipe.prefix}unlearn-worker",
    )
    try:
        tps = [TopicPartition(pipe.topics.records, p) for p in range(3)]
        committed = {tp.partition: consumer.committed(tp) for tp in tps}
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        seen: dict = {}
        for _ in range(10):
            for tp, batch in consumer.poll(timeout_ms=300).items():
                row = seen.setdefault(tp.partition, {"added": 0, "tombstones": 0})
                for rec in batch:
                    row["tombstones" if rec.value is None else "added"] += 1
        return {"seen": seen, "committed": committed}
    finally:
        consumer.close()


def value(prom: Prometheus, expr: str) -> float | None:
    reply = prom.query(expr)
    assert reply["status"] == "success", (expr, reply)
    result = reply["data"]["result"]
    return float(result[0]["value"][1]) if result else None


@pytest.fixture(scope="module")
def observed(pipeline_factory):
    """A pipeline with a retrainer, a trained model, Prometheus scraping both processes."""
    # only the operator's retrain: this test is about the series, and a policy retrain
    # racing it would make the counts it checks depend on timing
    settings = {"metrics_interval": 0.5, "retrain_deleted_fraction": 0.9}
    with pipeline_factory("observe", retrainer=True, **settings) as pipe:
        X, y = load_digits(return_X_y=True)
        subjects = [f"p{i % 120}" for i in range(len(y))]
        train_model(
            pipe.store,
            MODEL,
            Table(X=X / 16.0, y=y, subjects=subjects, ids=[f"r{i}" for i in range(len(y))]),
            params={"lam": 1e-3, "sigma": 1.0, "fit_intercept": True},
            holdout=0.2,
        )
        statuses = [
            json.loads(pipe.store.client.get(key) or "{}")
            for key in pipe.store.client.scan_iter(match=pipe.store.keys.worker("*"))
        ]
        (worker_port,) = [s["metrics_port"] for s in statuses if s.get("metrics_port")]
        found = pipe.wait_for(
            lambda: re.search(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", pipe.log("retrainer")),
            60,
            "the retrainer's metrics endpoint",
        )
        targets = [f"127.0.0.1:{worker_port}", f"127.0.0.1:{found.group(1)}"]
        with running_prometheus(targets) as prom:
            prom.wait(prom.targets_up, 60, "both targets up")
            yield pipe, prom


def test_dashboard_and_alerts_evaluate_on_live_data(observed) -> None:
    pipe, prom = observed
    rng = np.random.default_rng(0)

    # events flow: deletions by subject (in waves), new records, bad events, a retrain
    with DeletionClient(pipe.bootstrap, pipe.prefix) as client:
        erased = 0
        for wave in range(3):
            for subject in (f"p{wave * 10 + k}" for k in range(10)):
                erased += len(pipe.store.records.subject_record_ids(MODEL, subject))
                client.request(subject_id=subject, model_ids=[MODEL])
            pipe.wait_for(
                lambda wave=wave: (
                    (value(prom, f'unlearn_model_version{{model="{MODEL}"}}') or 0) >= wave + 2
                ),
                60,
                f"version {wave + 2} scraped",
            )
        client.add_records(
            MODEL,
            [
                {
                    "record_id": f"new{i}",
                    "subject_id": f"q{i}",
                    "features": rng.random(64).tolist(),
                    "label": i % 10,
                }
                for i in range(20)
            ],
        )
    producer = KafkaProducer(bootstrap_servers=pipe.bootstrap, acks="all")
    for i in range(5):
        producer.send(pipe.topics.deletions, key=b"bad", value=b"{not json %d" % i)
    producer.flush()
    producer.close()
    retrain = pipe.cli("retrain", MODEL)
    assert retrain.returncode == 0, retrain.stderr

    # the numbers say what happened
    pipe.wait_for(
        lambda: value(prom, "sum(unlearn_deletions_applied_total)") == erased,
        60,
        f"{erased} deletions counted",
    )
    pipe.wait_for(
        lambda: (
            value(prom, 'sum(unlearn_events_dead_lettered_total{reason="malformed_json"})') == 5
        ),
        60,
        "5 dead letters counted",
    )
    try:
        pipe.wait_for(
            lambda: (
                (value(prom, "sum(unlearn_retrains_total)") or 0) >= 1
                and (value(prom, 'sum(unlearn_retrain_triggers_total{outcome="merged"})') or 0) >= 1
            ),
            120,
            "a retrain run and merged",
        )
    except AssertionError as exc:
        triggers = prom.query("unlearn_retrain_triggers_total")["data"]["result"]
        raise AssertionError(
            f"{exc}\ntriggers: {[(t['metric'], t['value'][1]) for t in triggers]}\n"
            f"retrainer log:\n{pipe.log('retrainer')[-3000:]}\n"
            f"worker log:\n{pipe.log('worker')[-3000:]}"
        ) from None
    current = pipe.store.models.current_version(MODEL)
    pipe.wait_for(
        lambda: value(prom, f'max(unlearn_model_version{{model="{MODEL}"}})') == current,
        30,
        "the current version scraped",
    )

    # the records agent runs independently of the deletions: its batch may come after
    def held() -> set[str]:
        return {r for r in pipe.store.records.ids(MODEL) if r.startswith("new")}

    try:
        pipe.wait_for(lambda: len(held()) == 20, 60, "the 20 new records stored in Redis")
    except AssertionError as exc:
        dead = prom.query("unlearn_events_dead_lettered_total")["data"]["result"]
        raise AssertionError(
            f"{exc}: {sorted(held())}; on the records topic: {records_topic(pipe)}; "
            f"dead letters {[(d['metric'], d['value'][1]) for d in dead]}; "
            f"learned {value(prom, 'sum(unlearn_records_learned_total)')}\n"
            f"worker log:\n{pipe.log('worker')[-6000:]}"
        ) from None
    try:
        pipe.wait_for(
            lambda: value(prom, "sum(unlearn_records_learned_total)") == 20,
            30,
            "the 20 learned records counted",
        )
    except AssertionError as exc:
        raise AssertionError(
            f"{exc}: {value(prom, 'sum(unlearn_records_learned_total)')} counted\n"
            f"worker log:\n{pipe.log('worker')[-4000:]}"
        ) from None
    assert value(prom, f'max(unlearn_pending_deletions{{model="{MODEL}"}})') == 0
    certificate = value(prom, f'max(unlearn_certificate{{model="{MODEL}"}})')
    budget = value(prom, f'max(unlearn_budget{{model="{MODEL}"}})')
    assert certificate is not None and budget is not None and 0 <= certificate <= budget
    assert 0.8 < (value(prom, f'max(unlearn_holdout_accuracy{{model="{MODEL}"}})') or 0) <= 1

    # an audit with a reference stored with the current version: the audit panel's series
    report = audit(pipe.store, MODEL, reference=True)
    assert report.verdict == "pass", report.to_json()
    pipe.wait_for(
        lambda: value(prom, f'min(unlearn_audit_verdict{{model="{MODEL}", part="overall"}})') == 1,
        60,
        "the stored audit's verdict scraped",
    )

    # every dashboard query returns series; every alert expression evaluates
    def empty_panels() -> list[str]:
        return [
            f"{title}: {expr}"
            for title, expr in dashboard_exprs()
            if not prom.query(expr)["data"]["result"]
        ]

    try:
        pipe.wait_for(lambda: not empty_panels(), 60, "every dashboard query to return data")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; empty: {empty_panels()}") from None
    for name, expr in alert_exprs():
        reply = prom.query(expr)
        assert reply["status"] == "success", (name, reply)

    def rule_health() -> dict[str, str]:
        groups = prom.get("/api/v1/rules")["data"]["groups"]
        return {r["name"]: r["health"] for g in groups for r in g["rules"]}

    pipe.wait_for(
        lambda: set(rule_health().values()) == {"ok"} and len(rule_health()) == len(alert_exprs()),
        30,
        "every alert rule evaluated with health ok",
    )
    # faust's own sensor is served next to the project's series (with one worker its
    # agents receive nothing: the deletions and records topics are read in record
    # batches, and the intake applies the models it owns without the model-ops hop)
    assert value(prom, "sum(faust_messages_received_total)") is not None
    assert (value(prom, "sum(unlearn_events_consumed_total)") or 0) > 0

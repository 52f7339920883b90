"""Static checks of the deployment files: Prometheus, alerts, Grafana, compose, Kubernetes.

There is no Docker engine or Grafana server here, so these check what can be checked
without them (promtool runs on the Prometheus files in
``tests/integration/test_observability.py``): the compose file's structure against the
repository and the settings the app reads, and the dashboard against the fields Grafana
requires and the series the code exports.
"""

import json
import re
from pathlib import Path

import pytest
import yaml

from pipeline.config import Settings
from pipeline.metrics import Metrics

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"


def _exported_series() -> set[str]:
    """Every sample name the project exports (counters end in _total, histograms in _bucket...)."""
    names = set()
    for metric in Metrics().collect():
        names.add(metric.name)
        if metric.type == "counter":
            names.add(metric.name + "_total")
        if metric.type == "histogram":
            names.update(metric.name + suffix for suffix in ("_bucket", "_sum", "_count"))
    return names


def _series_in(expr: str) -> set[str]:
    return set(re.findall(r"\bunlearn_[a-z_]+\b", expr))


def _dashboard() -> dict:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "unlearn.json").read_text())


def _alert_rules() -> list[dict]:
    doc = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def test_required_alerts_exist_and_use_exported_series():
    rules = {rule["alert"]: rule for rule in _alert_rules()}
    for name in (
        "UnlearnBudgetNearlyExhausted",
        "UnlearnDeadLetterRate",
        "UnlearnDeletionNearDeadline",
        "UnlearnNoPublishWhileDeletionsPending",
        "UnlearnWorkerDown",
    ):
        assert name in rules
    exported = _exported_series()
    for rule in rules.values():
        assert _series_in(rule["expr"]) <= exported, rule["alert"]
        assert rule["annotations"]["summary"]


def test_dashboard_has_what_grafana_requires():
    dash = _dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [panel["id"] for panel in dash["panels"]]
    assert len(ids) == len(set(ids))
    exported = _exported_series()
    for panel in dash["panels"]:
        assert panel["datasource"]["type"] == "prometheus", panel["title"]
        assert panel["targets"], panel["title"]
        assert {"x", "y", "w", "h"} <= set(panel["gridPos"])
        for target in panel["targets"]:
            assert target["refId"] and target["expr"].strip()
            assert _series_in(target["expr"]) <= exported, target["expr"]
    wanted = [
        "deletions_applied",
        "update_latency",
        "certificate",
        "budget",
        "holdout_accuracy",
        "retrains",
        "dead_lettered",
        "pending_deletions",
        "oldest_pending",
        "consumer_lag",
    ]
    exprs = " ".join(t["expr"] for p in dash["panels"] for t in p["targets"])
    for word in wanted:
        assert word in exprs, word
    provisioning = yaml.safe_load(
        (DEPLOY / "grafana" / "provisioning" / "datasources" / "prometheus.yml").read_text()
    )
    uids = {source["uid"] for source in provisioning["datasources"]}
    assert {panel["datasource"]["uid"] for panel in dash["panels"]} <= uids


def _settings_env_names() -> set[str]:
    return {f"UNLEARN_{name.upper()}" for name in Settings.model_fields}


def test_compose_services_build_mounts_and_environment():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "topic-init", "redis", "prometheus", "grafana", "worker", "retrainer"} <= set(
        services
    )
    for name, service in services.items():
        assert "image" in service or "build" in service, name
        if "build" in service:
            dockerfile = ROOT / service["build"]["context"] / service["build"]["dockerfile"]
            assert dockerfile.is_file(), dockerfile
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"
        for dep, cond in service.get("depends_on", {}).items():
            assert dep in services, f"{name} depends on unknown {dep}"
            assert cond["condition"] in {
                "service_started",
                "service_healthy",
                "service_completed_successfully",
            }
            if cond["condition"] == "service_healthy":
                assert "healthcheck" in services[dep], f"{dep} has no healthcheck"
        for var in service.get("environment", {}):
            if var.startswith("UNLEARN_"):
                assert var in _settings_env_names() | {"UNLEARN_TOPIC_PREFIX"}, f"{name}: {var}"
    assert "--appendonly" in services["redis"]["command"]
    assert "KRaft" in (ROOT / "docker-compose.yml").read_text() or "controller" in str(
        services["kafka"]["environment"]
    )
    for name in ("worker", "retrainer", "kafka", "redis", "prometheus", "grafana"):
        assert "healthcheck" in services[name], name


def test_topic_init_creates_every_topic_with_its_policy():
    from pipeline.topics import Topics

    script = (DEPLOY / "kafka" / "create-topics.sh").read_text().replace("\\\n", "")
    day = 86_400_000
    shell = {
        "$DAY_MS": str(day),
        "$((7 * DAY_MS))": str(7 * day),
        "$((400 * DAY_MS))": str(400 * day),
    }
    for name, config in Topics().configs().items():
        line = next(line for line in script.splitlines() if f"create {name} " in line)
        for expr, number in shell.items():
            line = line.replace(expr, number)
        for key, value in config.items():
            assert f"--config {key}={value}" in line, (name, key)


@pytest.mark.parametrize("path", sorted((DEPLOY / "k8s").glob("*.yaml")), ids=lambda p: p.name)
def test_kubernetes_manifests_parse_and_use_known_settings(path):
    docs = [doc for doc in yaml.safe_load_all(path.read_text()) if doc]
    assert docs
    known = _settings_env_names()
    for doc in docs:
        assert {"apiVersion", "kind"} <= set(doc)
        for key in {**doc.get("data", {}), **doc.get("stringData", {})}:
            assert key in known, f"{path.name}: {key} is not a setting"
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                assert container["resources"]["requests"], container["name"]

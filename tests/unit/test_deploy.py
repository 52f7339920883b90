"""Static checks of the deployment files: Prometheus, alerts, Grafana, compose, Kubernetes.

There is no Docker engine or Grafana server here, so these check what can be checked
without them (promtool runs on the Prometheus files in
``tests/integration/test_observability.py``): the compose file's structure against the
repository and the settings the app reads, and the dashboard against the fields Grafana
requires and the series the code exports.
"""

import json
import re
import secrets
from pathlib import Path
from typing import Any

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
        "UnlearnAuditFailed",
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
        "audit_verdict",
        "audit_gap",
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


def _writer_and_reader() -> tuple[str, str]:
    from pipeline.store import AclUser, KeySpace

    keys = KeySpace()  # the deploy files use the default namespace
    return AclUser.for_role("writer", keys).name, AclUser.for_role("reader", keys).name


def _cli_options(*path: str) -> set[str]:
    import typer.main

    from workers.cli import app

    command: Any = typer.main.get_command(app)
    for name in path:
        command = command.commands[name]
    return {opt for param in command.params for opt in param.opts}


def _volume_of(service: dict, path: str) -> str:
    """The named volume mounted at the directory holding ``path`` in ``service``."""
    mounts = {v.split(":")[1]: v.split(":")[0] for v in service.get("volumes", [])}
    return mounts[str(Path(path).parent)]


def test_compose_runs_the_pipeline_as_the_writer_and_redis_loads_both_roles(tmp_path, monkeypatch):
    from typer.testing import CliRunner

    from workers.cli import app

    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services, declared = compose["services"], compose["secrets"]
    writer, reader = _writer_and_reader()
    for name in ("worker", "retrainer"):
        env = services[name]["environment"]
        assert env["UNLEARN_REDIS_USERNAME"] == writer, name
        assert "${REDIS_WRITER_PASSWORD:?" in env["UNLEARN_REDIS_PASSWORD"], name
    assert declared["redis_writer_password"] == {"environment": "REDIS_WRITER_PASSWORD"}

    # redis loads the ACL file that the one-shot redis-users writes, once it has written it
    redis_svc, users = services["redis"], services["redis-users"]
    aclfile = redis_svc["command"][redis_svc["command"].index("--aclfile") + 1]
    command = users["command"]
    output = command[command.index("--output") + 1]
    assert _volume_of(redis_svc, aclfile) == _volume_of(users, output)
    assert Path(aclfile).name == Path(output).name
    assert redis_svc["depends_on"]["redis-users"]["condition"] == "service_completed_successfully"
    assert "redis_admin_password" in redis_svc["secrets"]  # its healthcheck logs in

    # the one-shot's command runs as written and writes the three users, hashes only
    passwords = {name: f"{name}-{secrets.token_hex(16)}" for name in users["secrets"]}
    args = []
    for arg in command:
        if arg.startswith("/run/secrets/"):
            name = arg.removeprefix("/run/secrets/")
            assert name in passwords and name in declared, arg
            file = tmp_path / name
            file.write_text(passwords[name] + "\n")
            arg = str(file)
        args.append(str(tmp_path / "users.acl") if arg == output else arg)
    monkeypatch.delenv("UNLEARN_KEY_NAMESPACE", raising=False)
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, (result.output, result.exception)
    text = (tmp_path / "users.acl").read_text()
    names = [line.split()[1] for line in text.splitlines()]
    assert names == ["default", reader, writer]
    assert not [pw for pw in passwords.values() if pw in text]


def test_kubernetes_runs_the_pipeline_as_the_writer_and_defines_both_roles():
    docs = [
        doc
        for path in sorted((DEPLOY / "k8s").glob("*.yaml"))
        for doc in yaml.safe_load_all(path.read_text())
        if doc
    ]
    stored = {d["metadata"]["name"]: d["stringData"] for d in docs if d["kind"] == "Secret"}
    writer, reader = _writer_and_reader()
    deployments = {d["metadata"]["name"]: d for d in docs if d["kind"] == "Deployment"}
    for name in ("unlearn-worker", "unlearn-retrainer"):
        (container,) = deployments[name]["spec"]["template"]["spec"]["containers"]
        refs = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
        assert [stored[ref]["UNLEARN_REDIS_USERNAME"] for ref in refs] == [writer], name

    (job,) = [d for d in docs if d["kind"] == "Job"]
    pod = job["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    args = container["args"]
    assert args[:2] == ["access", "setup"]
    assert {a for a in args if a.startswith("--")} <= _cli_options("access", "setup")
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    volumes = {v["name"]: v["secret"] for v in pod["volumes"]}
    for role, user in (("reader", reader), ("writer", writer)):
        assert args[args.index(f"--{role}-user") + 1] == user
        path = Path(args[args.index(f"--{role}-password-file") + 1])
        source = volumes[mounts[str(path.parent)]]
        (item,) = [i for i in source["items"] if i["path"] == path.name]
        assert item["key"] == "UNLEARN_REDIS_PASSWORD"
        # the password file is the password of the Secret whose user is that role's
        assert stored[source["secretName"]]["UNLEARN_REDIS_USERNAME"] == user, role
    admin = [e["secretRef"]["name"] for e in container["envFrom"] if "secretRef" in e]
    assert [stored[a]["UNLEARN_REDIS_USERNAME"] for a in admin] not in ([reader], [writer])
    kustomization = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert "redis-users.yaml" in kustomization["resources"]

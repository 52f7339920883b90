"""Access: the pipeline runs as a password-protected Redis ACL user limited to its keys.

A real ``redis-server`` 6.2 (:class:`pipeline.embedded.EmbeddedRedis`) with
``requirepass`` for the admin and an ACL user that may only touch keys and pub/sub
channels under the pipeline's namespace (``~NS:*``, ``&NS:*``) and may not run
``@dangerous`` commands (``KEYS``, ``FLUSHALL``, ``CONFIG``...). The worker, the retrainer and
the CLI connect as that user through ``UNLEARN_REDIS_URL`` (no credentials in it),
``UNLEARN_REDIS_USERNAME`` and ``UNLEARN_REDIS_PASSWORD``; the broker is the session's
Tansu.

Proved: training, a subject's deletion with its receipt, and a retrain hand-over work as
that user; the same user cannot read or write a key outside the namespace; a wrong
password fails in seconds with one line that names the settings to fix, no traceback;
and neither password appears in the processes' logs, the CLI's output, the reprs of the
settings, store and client, or the ``/metrics`` of the worker and the retrainer.
"""

from __future__ import annotations

import json
import re
import secrets
import subprocess
import sys
import urllib.request
import uuid
from pathlib import Path

import pytest
import redis
from sklearn.datasets import load_digits

from pipeline.config import Settings, load_settings
from pipeline.embedded import EmbeddedRedis
from pipeline.store import Store
from pipeline.store.keys import subject_token
from pipeline.topics import Topics, ensure_topics
from pipeline.training import Table, load_holdout, train_model
from workers.processes import child_env, spawn, stop

from .support import poll

UNLEARN = str(Path(sys.executable).with_name("unlearn"))
USER = "unlearn-app"
MODEL = "digits-acl"


@pytest.fixture(scope="module")
def secured(services, tmp_path_factory):
    """redis-server with an admin password and an ACL user; a worker and a retrainer as it."""
    admin_pw, user_pw = f"adm-{secrets.token_hex(12)}", f"usr-{secrets.token_hex(12)}"
    tag = f"acl_{uuid.uuid4().hex[:6]}"
    namespace, prefix = tag, f"{tag}."
    server = EmbeddedRedis(password=admin_pw).start()
    admin = store = None
    procs: dict = {}
    try:
        admin = redis.Redis.from_url(server.url)
        admin.execute_command(
            "ACL", "SETUSER", USER, "reset", "on", f">{user_pw}",
            f"~{namespace}:*", "resetchannels", f"&{namespace}:*", "+@all", "-@dangerous",
        )  # fmt: skip
        ensure_topics(services.kafka_bootstrap, Topics(prefix), partitions=3)
        env = child_env(
            kafka_bootstrap=services.kafka_bootstrap,
            redis_url=f"redis://{server.host}:{server.port}/0",
            redis_username=USER,
            redis_password=user_pw,
            topic_prefix=prefix,
            key_namespace=namespace,
            partitions=3,
            broker_timeouts="fast",
            max_wait=0.2,
            metrics_interval=0.5,
            retrain_min_interval=0,
        )
        logs = tmp_path_factory.mktemp("logs-acl")
        settings = Settings(
            **{k[len("UNLEARN_") :].lower(): v for k, v in env.items() if k.startswith("UNLEARN_")}
        )
        store = Store.from_settings(settings)
        procs = {
            "worker": spawn(["worker", "-v"], env, logs / "worker.log"),
            "retrainer": spawn(["retrainer", "-v"], env, logs / "retrainer.log"),
        }
        state = {
            "admin": admin,
            "admin_pw": admin_pw,
            "user_pw": user_pw,
            "env": env,
            "logs": logs,
            "store": store,
            "settings": settings,
            "procs": procs,
            "namespace": namespace,
            "server": server,
            "outputs": [],
        }

        def ready() -> bool:
            for name, proc in procs.items():
                if proc.poll() is not None:
                    text = (logs / f"{name}.log").read_text(errors="replace")
                    raise AssertionError(f"{name} exited with {proc.returncode}:\n{text[-3000:]}")
            for key in store.client.scan_iter(match=store.keys.worker("*")):
                if json.loads(store.client.get(key) or "{}").get("assigned_partitions"):
                    return True
            return False

        poll(ready, 90, "the worker (as the ACL user) to join its group")
        yield state
    finally:
        for proc in procs.values():
            stop(proc)
        if store is not None:
            store.close()
        if admin is not None:
            admin.close()
        server.stop()


def cli(state, *args: str, timeout: float = 120.0, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [UNLEARN, *args],
        env={**state["env"], "COLUMNS": "200", **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    state["outputs"].append(result.stdout + result.stderr)
    return result


def log(state, name: str) -> str:
    return (state["logs"] / f"{name}.log").read_text(errors="replace")


def test_the_pipeline_runs_as_a_restricted_acl_user(secured) -> None:
    store: Store = secured["store"]
    ns = secured["namespace"]
    users = {c.get("user") for c in secured["admin"].client_list()}
    assert USER in users  # the worker, the retrainer and this test connect as the user

    # train as the user, delete a subject through the CLI, get the receipt
    X, y = load_digits(return_X_y=True)
    subjects = [f"p{i % 120}" for i in range(len(y))]
    table = Table(X=X / 16.0, y=y, subjects=subjects, ids=[f"r{i}" for i in range(len(y))])
    train_model(store, MODEL, table, params={"lam": 1e-3, "sigma": 1.0}, holdout=0.2)
    held = store.records.subject_record_ids(MODEL, "p7")
    assert held
    in_holdout = sum(t == subject_token("p7") for t in load_holdout(store, MODEL).tokens)
    done = cli(secured, "delete", "--subject", "p7", "--model", MODEL, "--wait", "60")
    assert done.returncode == 0, done.stdout + done.stderr
    request_id = re.search(r"request (\S+) published", done.stdout).group(1)
    got = cli(secured, "receipt", request_id, "--json")
    assert got.returncode == 0, got.stderr
    (receipt,) = [json.loads(line) for line in got.stdout.splitlines()]
    # the receipt counts the subject's training records and holdout rows it erased
    assert receipt["status"] == "applied" and receipt["n_records"] == len(held) + in_holdout
    assert receipt["version"] >= 2 and receipt["certificate"] <= receipt["budget"]
    assert not store.records.subject_record_ids(MODEL, "p7")

    # a retrain hand-over (retrainer and worker merge) as the user
    assert cli(secured, "retrain", MODEL).returncode == 0
    poll(
        lambda: [m for m in store.models.history(MODEL) if m.method == "retrain"],
        90,
        "the retrain merged",
    )
    status = cli(secured, "status")
    assert status.returncode == 0 and MODEL in status.stdout, status.stderr

    # every key the pipeline wrote is under the namespace (the admin sees them all)
    keys = [k.decode() for k in secured["admin"].scan_iter(match="*")]
    assert keys and all(k.startswith(f"{ns}:") for k in keys), keys[:5]

    # the ACL restricts: nothing outside the namespace, no dangerous commands
    secured["admin"].set("other:secret", "not yours")
    for attempt in (
        lambda: store.client.get("other:secret"),
        lambda: store.client.set("other:mine", "x"),
        lambda: store.client.publish("other-channel", "x"),
        lambda: store.client.keys("*"),
        lambda: store.client.flushall(),
        lambda: store.client.config_get("requirepass"),
    ):
        with pytest.raises(redis.exceptions.NoPermissionError):
            attempt()
    assert secured["admin"].get("other:secret") == b"not yours"
    with pytest.raises(redis.exceptions.AuthenticationError):
        redis.Redis(host=secured["server"].host, port=secured["server"].port).get(f"{ns}:models")

    # no secret in reprs, logs, CLI output or metrics
    settings = secured["settings"]
    url_settings = Settings(
        redis_url=f"redis://{USER}:{secured['user_pw']}@127.0.0.1:1/0", kafka_bootstrap="k:1"
    )
    shown = [
        repr(settings),
        str(settings),
        repr(url_settings),
        str(url_settings),
        repr(load_settings(redis_password=secured["user_pw"])),
        repr(store),
        repr(store.client),
        repr(store.client.connection_pool),
        log(secured, "worker"),
        log(secured, "retrainer"),
        *secured["outputs"],
    ]
    statuses = [
        json.loads(store.client.get(k) or "{}")
        for k in store.client.scan_iter(match=store.keys.worker("*"))
    ]
    ports = [s["metrics_port"] for s in statuses if s.get("metrics_port")]
    ports += re.findall(r"metrics: http://127\.0\.0\.1:(\d+)/metrics", log(secured, "retrainer"))
    assert len(ports) == 2
    for port in ports:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as reply:  # noqa: S310
            shown.append(reply.read().decode())
    assert "unlearn_deletions_applied_total" in shown[-2] + shown[-1]
    for secret in (secured["user_pw"], secured["admin_pw"]):
        leaks = [text[:200] for text in shown if secret in text]
        assert not leaks, leaks
    assert all(p.poll() is None for p in secured["procs"].values())


@pytest.mark.parametrize("command", [["status"], ["worker"], ["retrainer"]])
def test_a_wrong_password_fails_fast_with_one_clear_line(secured, command: list[str]) -> None:
    wrong = f"wrong-{secrets.token_hex(8)}"
    # it gives up instead of retrying: the subprocess timeout catches one that would not
    result = cli(secured, *command, timeout=120, UNLEARN_REDIS_PASSWORD=wrong)
    assert result.returncode == 2, result.stdout + result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1, result.stderr
    assert "authentication failed" in lines[0]
    assert "UNLEARN_REDIS_PASSWORD" in lines[0] and "UNLEARN_REDIS_USERNAME" in lines[0]
    assert "Traceback" not in result.stderr + result.stdout
    for secret in (wrong, secured["user_pw"], secured["admin_pw"]):
        assert secret not in result.stderr + result.stdout


def test_no_credentials_fail_fast_too(secured) -> None:
    env = {k: v for k, v in secured["env"].items() if not k.startswith("UNLEARN_REDIS_USER")}
    env.pop("UNLEARN_REDIS_PASSWORD", None)
    result = subprocess.run(
        [UNLEARN, "status"], env=env, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 2
    assert "authentication failed" in result.stderr and "Traceback" not in result.stderr

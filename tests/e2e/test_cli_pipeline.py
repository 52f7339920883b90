"""The `unlearn` commands a user types, against a running worker over the real services."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import redis
from sklearn.datasets import load_digits

UNLEARN = str(Path(sys.executable).with_name("unlearn"))


@pytest.fixture(scope="module")
def pipe(pipeline_factory):
    with pipeline_factory("cli", retrainer=True, retrain_min_interval=0) as pipeline:
        yield pipeline


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory) -> Path:
    X, y = load_digits(return_X_y=True)
    path = tmp_path_factory.mktemp("data") / "digits.csv"
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([f"px{j}" for j in range(64)] + ["label", "user", "id"])
        for i in range(600):
            writer.writerow(
                [f"{v / 16:.4f}" for v in X[i]] + [int(y[i]), f"user{i % 40}", f"row{i}"]
            )
    return path


def ok(done: subprocess.CompletedProcess) -> str:
    assert done.returncode == 0, done.stdout + done.stderr
    assert "Traceback" not in done.stdout + done.stderr
    return done.stdout


def user_error(done: subprocess.CompletedProcess, text: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert text in done.stderr and "Traceback" not in done.stdout + done.stderr
    assert done.stderr.strip().count("\n") <= 2  # one line (rich may wrap it)


def test_train_delete_receipt_inspect(pipe, csv_file) -> None:
    out = ok(
        pipe.cli(
            "train",
            "churn",
            "--data",
            str(csv_file),
            "--subject-column",
            "user",
            "--id-column",
            "id",
            "--holdout",
            "0",
        )
    )
    assert "churn v1" in out and "600 records" in out
    out = ok(pipe.cli("delete", "--subject", "user3", "--wait", "30"))
    request_id = out.split()[1]
    assert "applied" in out and "churn" in out
    receipts = [
        json.loads(line) for line in ok(pipe.cli("receipt", request_id, "--json")).splitlines()
    ]
    assert [(r["model_id"], r["status"], r["version"]) for r in receipts] == [
        ("churn", "applied", 2)
    ]
    assert receipts[0]["n_records"] == 15
    assert "churn" in ok(pipe.cli("receipt", request_id))
    show = ok(pipe.cli("model", "show", "churn"))
    assert ("fisher" in show or "influence" in show) and "585" in show
    history = ok(pipe.cli("model", "history", "churn"))
    # the fitted version learned from the erased records: the erasure retired it
    assert "fisher" in history or "influence" in history
    assert "│ fit " not in history
    exported = json.loads(ok(pipe.cli("model", "export", "churn")))
    assert np.asarray(exported["coef"]).shape == (10, 64)
    assert exported["metadata"]["version"] == 2
    status = ok(pipe.cli("status"))
    assert "churn" in status and "/ 0.228" in status

    ok(pipe.cli("retrain", "churn"))
    pipe.wait_for(
        lambda: any(m.method == "retrain" for m in pipe.store.models.history("churn")),
        60,
        "the operator's retrain",
    )
    assert "retrain" in ok(pipe.cli("status"))


def test_user_mistakes_are_one_line_errors(pipe, csv_file, tmp_path) -> None:
    user_error(pipe.cli("model", "show", "nope"), "model 'nope' does not exist")
    user_error(pipe.cli("retrain", "nope"), "does not exist")
    user_error(pipe.cli("train", "x", "--data", str(tmp_path / "missing.csv")), "does not exist")
    bad = pipe.cli("train", "x", "--data", str(csv_file), "--label-column", "digit")
    user_error(bad, "no column 'digit'")
    user_error(pipe.cli("delete"), "give --subject or --record")
    user_error(pipe.cli("receipt", "never-sent"), "no receipt for request")
    env = {k: v for k, v in pipe.env.items() if k != "UNLEARN_REDIS_URL"}
    done = subprocess.run([UNLEARN, "status"], env=env, capture_output=True, text=True, timeout=60)
    user_error(done, "UNLEARN_KAFKA_BOOTSTRAP is set but UNLEARN_REDIS_URL is not")


def _interrupt(proc: subprocess.Popen) -> str:
    """Ctrl-C; the process must stop cleanly (its stderr, read to the end, is returned)."""
    proc.send_signal(signal.SIGINT)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
        raise AssertionError(f"still running 30 s after Ctrl-C:\n{err[-3000:]}") from None
    assert proc.returncode == 0, err[-3000:]
    return err


@pytest.mark.parametrize("after", [0.0, 0.1, 0.3, 1.0])
def test_services_prints_addresses_and_stops_on_ctrl_c(after: float) -> None:
    """Whenever Ctrl-C comes once the addresses are out, even while the status page is
    still starting (once, in CI, a Ctrl-C at that moment was lost), it stops everything."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    proc = subprocess.Popen(
        [UNLEARN, "services"], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    try:
        lines = [proc.stdout.readline().strip() for _ in range(2)]
        assert lines[0].startswith("UNLEARN_KAFKA_BOOTSTRAP=127.0.0.1:")
        assert lines[1].startswith("UNLEARN_REDIS_URL=redis://127.0.0.1:")
        client = redis.Redis.from_url(lines[1].split("=", 1)[1])
        assert client.ping()
        client.close()
        time.sleep(after)  # where in the start-up the signal lands, not a speed check
    finally:
        err = _interrupt(proc)
    assert "stopped the embedded services" in err


def test_train_shows_the_price_of_certification(pipe, tmp_path) -> None:
    """`unlearn train` compares with scikit-learn and the majority class, warns when the
    penalty leaves a model that predicts the base rate, and `--lam auto` shows the frontier."""
    from sklearn.datasets import load_breast_cancer

    X, y = load_breast_cancer(return_X_y=True)
    X = (X - X.mean(axis=0)) / X.std(axis=0)
    X = X / np.linalg.norm(X, axis=1).max()  # rows within the unit ball, as the bound needs
    data = tmp_path / "cancer.npz"
    np.savez(data, X=X, y=y, subjects=np.array([f"p{i}" for i in range(len(y))]))

    def train(model: str, lam: str) -> subprocess.CompletedProcess:
        args = ["--data", str(data), "--subject-column", "subjects", "--seed", "1"]
        return pipe.cli("train", model, *args, "--lam", lam)

    heavy = train("cancer-heavy", "10")
    assert "uncertified scikit-learn default on the same split: accuracy" in ok(heavy)
    assert "no better than predicting the majority class" in heavy.stderr

    auto = ok(train("cancer-auto", "auto"))
    assert "--lam auto: the price of certification" in auto and "chosen lambda" in auto
    assert "no better than predicting the majority class" not in auto
    chosen = pipe.store.models.metadata("cancer-auto").holdout_metrics["accuracy"]
    assert chosen > 0.85

    user_error(pipe.cli("train", "cancer-bad", "--data", str(data), "--lam", "-3"), "--lam")


def test_forget_a_feature_and_relabel_from_the_command_line(pipe, csv_file) -> None:
    train = ("train", "feats", "--data", str(csv_file), "--subject-column", "user", "--id-column")
    ok(pipe.cli(*train, "id", "--holdout", "0"))
    out = ok(pipe.cli("forget-feature", "feats", "px3", "40", "--wait", "30"))
    request_id = out.split()[1]
    assert "applied" in out and "columns 3, 40" in out
    [receipt] = [
        json.loads(line) for line in ok(pipe.cli("receipt", request_id, "--json")).splitlines()
    ]
    assert receipt["operation"] == "feature_removal" and receipt["columns"] == [3, 40]
    coef = np.asarray(json.loads(ok(pipe.cli("model", "export", "feats")))["coef"])
    assert not coef[:, [3, 40]].any()

    out = ok(pipe.cli("relabel", "feats", "--record", "row1", "--label", "7", "--wait", "30"))
    assert "applied" in out and "labels of row1" in out
    assert pipe.store.records.get("feats", "row1").label == 7

    # mistakes: one-line errors, the rejection's reason from the receipt
    user_error(
        pipe.cli("relabel", "feats", "--record", "row1", "--record", "row2", "--label", "1"),
        "give one --label after each --record",
    )
    user_error(pipe.cli("forget-feature", "feats", "zip", "--wait", "30"), "no feature named 'zip'")
    user_error(
        pipe.cli("relabel", "feats", "--record", "ghost", "--label", "1", "--wait", "30"),
        "holds no record 'ghost'",
    )
    user_error(
        pipe.cli("relabel", "feats", "--record", "row2", "--label", "11", "--wait", "30"),
        "label 11",
    )

"""`make demo` as a user runs it: one command, embedded services, exits 0, leaves nothing."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
import uuid
from pathlib import Path

UNLEARN = str(Path(sys.executable).with_name("unlearn"))


def _processes_tagged(tag: str) -> list[int]:
    """Processes whose environment holds ``PYTEST_DEMO_TAG=tag``: the demo and its children.

    Every process the demo starts (broker, redis-server, worker, retrainer) inherits its
    environment. Matching on that, not on command lines, leaves out the pipelines other
    test runs on the same machine have running meanwhile.
    """
    marker = f"PYTEST_DEMO_TAG={tag}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if marker in environ:
            found.append(int(entry.name))
    return found


def test_demo_end_to_end_on_embedded_services() -> None:
    """`make demo` as a new user runs it: the defaults (12 subjects, 200 new records) and
    faust's own timeouts, not the suite's shorter ones (with those, the demo's retrain
    was merged before its deletions were applied, which hid a wrong check of the merge)."""
    # BROKER_*: faust's settings, which the suite shortens (conftest's FAUST_TEST_TIMEOUTS)
    env = {k: v for k, v in os.environ.items() if not k.startswith(("UNLEARN_", "BROKER_"))}
    env["COLUMNS"] = "160"
    tag = uuid.uuid4().hex
    env["PYTEST_DEMO_TAG"] = tag  # marks the demo's processes
    done = subprocess.run(
        [UNLEARN, "demo"],
        env=env,
        capture_output=True,
        text=True,
        timeout=170,
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    assert "dev mode: started embedded Kafka" in done.stderr
    out = done.stdout
    for line in (
        "deletion receipts",
        "12 (applied 12)",
        "certificate / budget",
        "retrained from scratch",
        "metrics endpoint",
        "/metrics",
    ):
        assert line in out, out
    assert "Traceback" not in out + done.stderr
    # the broker, redis-server, worker and retrainer are gone (the demo stops and reaps
    # them; any left die with it, PR_SET_PDEATHSIG: a loaded machine may take a moment)
    deadline = time.monotonic() + 30
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_tagged(tag)


def test_engine_only_demo_still_works() -> None:
    done = subprocess.run(
        [UNLEARN, "demo", "--engine-only", "--subjects", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "relative parameter distance" in done.stdout


def test_demo_keep_serves_the_page_until_ctrl_c() -> None:
    """``unlearn demo --keep``: after the summary the status page still answers, with the
    demo's model and live metrics; Ctrl-C (SIGINT) then stops everything, exit status 0."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    env["COLUMNS"] = "160"
    tag = uuid.uuid4().hex
    env["PYTEST_DEMO_TAG"] = tag
    demo = subprocess.Popen(
        [UNLEARN, "demo", "--keep", "--subjects", "4", "--records", "40"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        lines = []
        for line in demo.stdout:  # until the demo says what stays up
            lines.append(line)
            if "stay up" in line:
                break
        text = "".join(lines)
        found = re.search(r"stay up: (http://127\.0\.0\.1:\d+/)", text)
        assert found, text[-3000:]
        with urllib.request.urlopen(found.group(1) + "api/snapshot", timeout=10) as reply:
            snapshot = json.load(reply)
        assert [m["model_id"] for m in snapshot["models"]] == ["digits"]
        assert snapshot["sources"]["redis"]["ok"]
        assert snapshot["sources"]["metrics"] and all(
            m["ok"] for m in snapshot["sources"]["metrics"]
        ), snapshot["sources"]
        demo.send_signal(signal.SIGINT)
        out, err = demo.communicate(timeout=90)
    finally:
        if demo.poll() is None:
            demo.kill()
            demo.wait()
    assert demo.returncode == 0, out[-2000:] + err[-3000:]
    assert "stopping the demo" in out
    assert "Traceback" not in out + err
    deadline = time.monotonic() + 30
    while _processes_tagged(tag) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _processes_tagged(tag)

"""`make demo` as a user runs it: one command, embedded services, exits 0, leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
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
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    env["COLUMNS"] = "160"
    tag = uuid.uuid4().hex
    env["PYTEST_DEMO_TAG"] = tag  # marks the demo's processes
    done = subprocess.run(
        [UNLEARN, "demo", "--subjects", "6", "--records", "80"],
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
        "6 (applied 6)",
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

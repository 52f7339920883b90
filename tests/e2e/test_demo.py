"""`make demo` as a user runs it: one command, embedded services, exits 0, leaves nothing."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

UNLEARN = str(Path(sys.executable).with_name("unlearn"))


def _pipeline_processes() -> list[int]:
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmd = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
        except OSError:
            continue
        if b"workers.cli" in cmd or b"tansu" in cmd and b"broker" in cmd and b"demo" in cmd:
            found.append(int(entry.name))
    return found


def test_demo_end_to_end_on_embedded_services() -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("UNLEARN_")}
    env["COLUMNS"] = "160"
    before = set(_pipeline_processes())
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
    # the worker and the retrainer are gone (reaped; a loaded machine may take a moment)
    deadline = time.monotonic() + 30
    while not set(_pipeline_processes()) <= before and time.monotonic() < deadline:
        time.sleep(0.1)
    assert set(_pipeline_processes()) <= before


def test_engine_only_demo_still_works() -> None:
    done = subprocess.run(
        [UNLEARN, "demo", "--engine-only", "--subjects", "1"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert "relative parameter distance" in done.stdout

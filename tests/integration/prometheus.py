"""A real Prometheus server for tests: Debian's ``prometheus`` binary on a free port.

It scrapes the given targets every second and loads the project's alert rules, so a test
can evaluate every dashboard and alert expression against live data through the HTTP API.
A missing binary is a failure that says how to install it (``make tools``), never a skip.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

ALERTS = Path(__file__).resolve().parents[2] / "deploy" / "prometheus" / "alerts.yml"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class Prometheus:
    """Query helpers over a running server's HTTP API."""

    def __init__(self, url: str) -> None:
        self.url = url

    def get(self, path: str, **params: str) -> dict[str, Any]:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}{path}?{query}", timeout=10) as reply:  # noqa: S310
            return json.loads(reply.read())

    def query(self, expr: str) -> dict[str, Any]:
        """``/api/v1/query``; returns the whole reply (``status``, ``data``, ``error``)."""
        try:
            return self.get("/api/v1/query", query=expr)
        except urllib.error.HTTPError as exc:  # 400 carries the parse error as JSON
            return json.loads(exc.read())

    def targets_up(self) -> bool:
        active = self.get("/api/v1/targets")["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait(self, condition, timeout: float = 60.0, what: str = "condition") -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except OSError:
                pass
            time.sleep(0.25)
        raise TimeoutError(f"Prometheus: {what} not met within {timeout} s")


@contextmanager
def running_prometheus(targets: Sequence[str]) -> Iterator[Prometheus]:
    """Start Prometheus scraping ``targets`` (``host:port``) every second; stop it after."""
    binary = shutil.which("prometheus")
    if binary is None:
        raise RuntimeError(
            "prometheus is not installed: run `make tools` (Debian's prometheus package)"
        )
    port = _free_port()
    with tempfile.TemporaryDirectory(prefix="prom-") as tmp:
        rules = Path(tmp) / "alerts.yml"
        rules.write_text(ALERTS.read_text())
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global: {scrape_interval: 1s, evaluation_interval: 1s}\n"
            "rule_files: [alerts.yml]\n"
            "scrape_configs:\n"
            "  - job_name: unlearn-worker\n"
            f"    static_configs: [{{targets: {json.dumps(list(targets))}}}]\n"
        )
        proc = subprocess.Popen(  # noqa: S603 - our own binary and arguments
            [
                binary,
                f"--config.file={config}",
                f"--storage.tsdb.path={tmp}/data",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        server = Prometheus(f"http://127.0.0.1:{port}")
        try:
            server.wait(
                lambda: urllib.request.urlopen(f"{server.url}/-/ready", timeout=2).status == 200,  # noqa: S310
                what="ready",
            )
            yield server
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()

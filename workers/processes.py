"""Child processes of the demo (and the tests): a worker and a retrainer, never orphaned.

:func:`spawn` runs ``python -m workers.cli <command>`` with the given environment; on
Linux the child gets ``PR_SET_PDEATHSIG`` so it dies with its parent even if the parent is
killed. :func:`stop` sends SIGTERM, waits, then SIGKILL, and always reaps.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

__all__ = ["child_env", "spawn", "stop", "stop_requested"]


def _die_with_parent() -> None:  # runs in the child between fork and exec
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG


def child_env(**settings: str | int | float) -> dict[str, str]:
    """This process's environment plus ``UNLEARN_<NAME>`` for each keyword."""
    env = dict(os.environ)
    env.update({f"UNLEARN_{name.upper()}": str(value) for name, value in settings.items()})
    env["PYTHONUNBUFFERED"] = "1"
    return env


def spawn(
    command: list[str], env: Mapping[str, str], log_path: Path | None = None
) -> subprocess.Popen[bytes]:
    """Start ``unlearn <command...>`` as a child process (output to ``log_path``)."""
    out: IO[bytes] | int = subprocess.DEVNULL
    if log_path is not None:
        out = open(log_path, "ab")  # noqa: SIM115 - handed to the child, closed below
    try:
        return subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "workers.cli", *command],
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
            close_fds=True,
        )
    finally:
        if not isinstance(out, int):
            out.close()


def stop(proc: subprocess.Popen[bytes], timeout: float = 15.0) -> int:
    """SIGTERM, wait ``timeout`` seconds, then SIGKILL; return the exit code."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout)
    return int(proc.returncode)


@contextmanager
def stop_requested() -> Iterator[threading.Event]:
    """An event that Ctrl-C (SIGINT) or SIGTERM sets, for a command that runs until asked.

    A handler that only sets a flag cannot be lost. Python's default SIGINT handler raises
    KeyboardInterrupt in whatever the main thread is running, and an exception raised in a
    finaliser or a callback is printed and dropped: once, in CI, ``unlearn services`` kept
    running after its Ctrl-C, its main thread back in its wait loop (the py-spy dump of the
    leftover process). The previous handlers are restored on exit.
    """
    stop = threading.Event()

    def request(signum: int, frame: Any) -> None:
        stop.set()

    previous = {sig: signal.signal(sig, request) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield stop
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)

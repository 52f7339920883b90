"""Fault injection for the reliability tests: a process that dies at a named point.

Set ``UNLEARN_CRASH_AT=NAME`` in a process's environment and it kills itself with
``SIGKILL`` when it reaches ``crash_point(NAME)``; ``NAME:SCOPE`` only where the point is
reached for that scope (a model id), ``...@N`` only the N-th time. No ``finally``, no
``atexit``, no flush, as if the machine lost power. The variable is read once, at
import; without it :func:`crash_point` is one string comparison. Used by
``tests/reliability/test_worker_crash.py``.

Points:

``publication.exec`` (scope: the model id)
    :meth:`pipeline.store.Publication.commit`, after ``MULTI`` has queued every write of
    the version and before ``EXEC``: Redis discards the transaction.
``publication.committed`` (scope: the model id)
    Right after ``EXEC``: the version is in Redis, nothing is on Kafka yet (no receipts,
    no tombstones, no offset commit).
``merge.commit`` / ``merge.committed`` (scope: the model id)
    :meth:`pipeline.applier.Applier.merge_retrain`, before and after the transaction that
    publishes a retrained model (the retrain hand-over).
"""

from __future__ import annotations

import os
import signal

__all__ = ["crash_point"]

_SPEC, _, _NTH = os.environ.get("UNLEARN_CRASH_AT", "").partition("@")
_NAME, _, _SCOPE = _SPEC.partition(":")
_hits = [0, int(_NTH or 1)]


def crash_point(name: str, scope: str = "") -> None:
    """Kill this process with SIGKILL if ``UNLEARN_CRASH_AT`` names this point (and scope)."""
    if name != _NAME or (_SCOPE and scope != _SCOPE):
        return
    _hits[0] += 1
    if _hits[0] >= _hits[1]:
        os.kill(os.getpid(), signal.SIGKILL)

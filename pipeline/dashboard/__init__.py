"""The live status page of the pipeline (``unlearn dashboard``; see ``docs/dashboard.md``).

* :class:`Dashboard`: reads Redis and the processes' ``/metrics`` on a thread and serves
  a read-only page with its charts (uPlot, vendored: nothing is fetched from elsewhere).
"""

from pipeline.dashboard.server import Dashboard

__all__ = ["Dashboard"]

"""A faust agent that does nothing with its events: the consumption ceiling of faust here.

``python -m bench.noop_agent worker -l warn`` with ``NOOP_BOOTSTRAP``, ``NOOP_TOPIC``,
``NOOP_EVENTS`` (how many to wait for), ``NOOP_MAX_BATCH``, ``NOOP_MAX_WAIT`` and
``NOOP_RESULT`` (a file) in the environment. The app is built as the worker's is (the
same faust ``App`` subclass, consumer fetch settings and Prometheus sensor) and its agent
takes events in batches with ``stream.take_events`` exactly as the deletion agent does,
then only counts them. Once it has seen ``NOOP_EVENTS`` it writes ``{"events": n,
"first_batch": k, "seconds": s}`` to ``NOOP_RESULT`` and exits; ``s`` runs from the first
batch to the last, so the rate is ``(n - k) / s``: the group join and the first fetch are
left out.

The figure bounds what any faust worker can do on this machine: the deletion worker
takes its events through the same machinery, then decodes, applies and publishes them.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

import faust
from faust.sensors.prometheus import FaustMetrics, PrometheusMonitor
from prometheus_client import CollectorRegistry

from workers.app import FAST_TIMEOUTS
from workers.transport import App

EVENTS = int(os.environ.get("NOOP_EVENTS", "0"))
MAX_BATCH = int(os.environ.get("NOOP_MAX_BATCH", "5000"))
MAX_WAIT = float(os.environ.get("NOOP_MAX_WAIT", "0.5"))

app = App(
    f"noop-{os.getpid()}",
    fetch_max_wait=0.05,  # the worker's default (Settings.fetch_max_wait)
    broker=f"kafka://{os.environ.get('NOOP_BOOTSTRAP', 'localhost:9092')}",
    value_serializer="raw",
    key_serializer="raw",
    web_enabled=False,
    store="memory://",
    datadir=tempfile.mkdtemp(prefix="unlearn-noop-"),
    consumer_auto_offset_reset="earliest",
    consumer_max_fetch_size=4_194_304,
    **FAST_TIMEOUTS,  # as the bench's worker (broker_timeouts "fast"): a quick group join
)
app.monitor = PrometheusMonitor(metrics=FaustMetrics.create(CollectorRegistry(), "faust"))
topic = app.topic(os.environ.get("NOOP_TOPIC", "noop"))
_seen = {"events": 0, "first_batch": 0, "first": 0.0}


@app.agent(topic)
async def count(stream: faust.StreamT) -> None:
    async for events in stream.take_events(MAX_BATCH, within=MAX_WAIT):
        now = time.perf_counter()
        if _seen["events"] == 0:
            _seen["first"], _seen["first_batch"] = now, len(events)
        _seen["events"] += len(events)
        if _seen["events"] >= EVENTS:
            _finish({**_seen, "seconds": now - _seen["first"]})


def _finish(result: dict[str, Any]) -> None:
    Path(os.environ["NOOP_RESULT"]).write_text(json.dumps(result))
    os._exit(0)  # the parent only needs the figure: no orderly faust shutdown to wait for


if __name__ == "__main__":
    app.main()

"""The worker's two threads: the applier's queue is for the models alone.

The gauges and the status key only read or write Redis; queued behind a batch on the
applier's one thread they delayed it, and a slow refresh (the first one imports the audit
reader) held every deletion behind it: one such stall set the benchmark's p99 latency
(0.83 s against 0.2 s). These tests block the applier's thread and check that the side
work still gets done, and that a batch never waits for the side work.
"""

from __future__ import annotations

import asyncio
import threading

from pipeline.applier import Applier
from pipeline.config import Settings
from pipeline.routing import Router
from pipeline.store import Store
from pipeline.topics import Topics
from workers.app import Runtime


def _runtime(store: Store) -> Runtime:
    return Runtime(
        settings=Settings(),
        store=store,
        applier=Applier(store),
        router=Router(store),
        topics=Topics("t."),
        record_partitions=1,
        name="runtime-test",
    )


def test_side_work_is_done_while_the_applier_thread_is_busy(store: Store) -> None:
    runtime = _runtime(store)
    release = threading.Event()

    async def scenario() -> tuple[bool, bool]:
        batch = asyncio.ensure_future(runtime.run(release.wait, 30))
        await asyncio.sleep(0)  # the applier's thread is now held by the "batch"
        await runtime.aside(runtime.write_status)
        await runtime.aside(runtime.metrics.refresh_models, store)
        done_while_held = not batch.done()
        release.set()
        return done_while_held, await batch

    held, batch_result = asyncio.run(scenario())
    assert held, "the side work waited for the batch to finish"
    assert batch_result is True
    assert store.client.get(store.keys.worker("runtime-test")) is not None


def test_a_batch_does_not_wait_for_slow_side_work(store: Store) -> None:
    runtime = _runtime(store)
    release = threading.Event()

    async def scenario() -> bool:
        side = asyncio.ensure_future(runtime.aside(release.wait, 30))
        await asyncio.sleep(0)
        await runtime.run(runtime.write_status)
        applied_while_side_held = not side.done()
        release.set()
        await side
        return applied_while_side_held

    assert asyncio.run(scenario()), "the applier's thread waited for the side work"

"""The ``federated`` agent: ``unlearn.federated`` in, model versions and receipts out.

Decodes ``ClientStats`` / ``ClientRemoved`` / ``ClassRemoved`` events, hands each batch
to :class:`pipeline.federated.FederatedCoordinator` on the worker's one executor thread,
and publishes what it returns with :meth:`~workers.runtime.Runtime.publish`
(``ModelPublished``, receipts, dead letters, metrics), as the owner agent does. Registered
by :func:`workers.app.build_app`.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime

import faust

from pipeline.federated import FederatedCoordinator, decode_federated
from workers.runtime import Runtime

__all__ = ["register_federated"]


def register_federated(
    app: faust.App, runtime: Runtime, topic: Callable[[str], faust.TopicT]
) -> FederatedCoordinator:
    """Add the ``federated`` agent to ``app``; returns the coordinator it drives."""
    coordinator = FederatedCoordinator(runtime.store, keep_versions=runtime.settings.keep_versions)
    federated_t = topic(runtime.topics.federated)
    metrics, settings = runtime.metrics, runtime.settings

    @app.agent(federated_t)
    async def federated(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait):
            good, bad = runtime.decode(events, decode_federated)
            with metrics.batch("federated", len(events)):
                # Redis unreachable: retried; any other error: the failing message alone
                # is dead-lettered (the batch is bisected)
                outcomes = await runtime.guarded(
                    "federated",
                    good,
                    lambda part: runtime.run(coordinator.handle, list(part)),
                    lambda pair: pair[1],
                )
            sent: dict[str, datetime] = {ev.event_id: ev.ts for ev, _ in good}
            await runtime.publish(
                outcomes,
                bad,
                "federated",
                lambda o, sent=sent: [
                    sent[r.request_id] for r in o.receipts if r.request_id in sent
                ],
            )

    return coordinator

"""The ``federated`` agent: ``unlearn.federated`` in, model versions and receipts out.

Decodes ``ClientStats`` / ``ClientRemoved`` / ``ClassRemoved`` events, hands each batch
to :class:`pipeline.federated.FederatedCoordinator` on the worker's one executor thread,
and publishes what it returns with the worker's ``publish`` (``ModelPublished``, receipts,
dead letters, metrics), as the deletions agent does. Registered by
:func:`workers.app.build_app`.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import TYPE_CHECKING, Any

import faust

from pipeline.applier import Outcome
from pipeline.federated import FederatedCoordinator, decode_federated

if TYPE_CHECKING:
    from workers.app import Runtime

__all__ = ["register_federated"]

Publish = Callable[..., Awaitable[None]]
Work = Callable[[Sequence[Any]], Awaitable[list[Outcome]]]
Guarded = Callable[[str, Sequence[Any], Work, Callable[[Any], Any]], Awaitable[list[Outcome]]]
"""``guarded(what, items, work, message_of)`` of :func:`workers.app.build_app`."""
Decode = Callable[..., tuple[list[Any], list[Any]]]
"""``decode(events, parse)`` of :func:`workers.app.build_app`: (event, message) pairs and
rejections, events counted as consumed."""


def register_federated(
    app: faust.App,
    runtime: Runtime,
    publish: Publish,
    topic: Callable[[str], faust.TopicT],
    guarded: Guarded,
    decode: Decode,
) -> FederatedCoordinator:
    """Add the ``federated`` agent to ``app``; returns the coordinator it drives."""
    coordinator = FederatedCoordinator(runtime.store, keep_versions=runtime.settings.keep_versions)
    federated_t = topic(runtime.topics.federated)
    metrics, settings = runtime.metrics, runtime.settings

    @app.agent(federated_t)
    async def federated(stream: faust.StreamT) -> None:
        async for events in stream.take_events(settings.max_batch, within=settings.max_wait):
            good, bad = decode(events, decode_federated)
            with metrics.batch("federated", len(events)):
                # Redis unreachable: retried; any other error: the failing message alone
                # is dead-lettered (the batch is bisected)
                outcomes = await guarded(
                    "federated",
                    good,
                    lambda part: runtime.run(coordinator.handle, list(part)),
                    lambda pair: pair[1],
                )
            sent: dict[str, datetime] = {ev.event_id: ev.ts for ev, _ in good}
            await publish(
                outcomes,
                bad,
                "federated",
                lambda o, sent=sent: [
                    sent[r.request_id] for r in o.receipts if r.request_id in sent
                ],
            )

    return coordinator

"""What each stage does on the writer's thread: calls into :mod:`pipeline`, no faust.

The agents of :mod:`workers.app` decode a batch, hand one of these functions to
:meth:`workers.runtime.Runtime.run` (the one executor thread that writes models), and
publish the outcomes.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable

from pipeline.applier import Applier
from pipeline.ops import Op, Outcome, RequestOp
from pipeline.routing import Router, model_ops

__all__ = ["apply_by_model", "route_deletions"]


def route_deletions(
    router: Router,
    applier: Applier,
    ops: list[RequestOp],
    owns: Callable[[str], bool],
    max_bytes: int,
) -> list[Outcome]:
    """The intake stage: suppressions, and per-model batches (deletions, feature removals
    and relabels, each model's in the order they came).

    A model whose partition this worker owns is applied here at once (with one worker,
    every model): the hop through ``unlearn.model-ops`` would only add latency, and the
    owner is still the only writer. Its requests get their final receipt from the
    publication; only if applying fails are they opened as ``received`` (pending until
    the batch, not committed, is read and applied again). The others' batches are opened
    as ``received`` at once and go in the routing outcome's ``forward``, for their owners.
    """
    by_model, routed = router.route(ops, pending=lambda m: not owns(m))
    local = {m: batch for m, batch in by_model.items() if owns(m)}
    remote = {m: batch for m, batch in by_model.items() if m not in local}
    routed.forward = model_ops(remote, max_bytes)
    outcomes = [routed]
    try:
        outcomes += [applier.apply(m, batch) for m, batch in local.items()]
    except BaseException:  # not applied: pending until the batch is read and applied again
        router.open_pending(local)
        raise
    return outcomes


def apply_by_model(applier: Applier, ops: Iterable[tuple[str, Op]]) -> list[Outcome]:
    """The owner stage: each model's operations, in order, applied as one batch."""
    by_model: dict[str, list[Op]] = {}
    for model_id, op in ops:
        by_model.setdefault(model_id, []).append(op)
    return [applier.apply(m, batch) for m, batch in by_model.items()]

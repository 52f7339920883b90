"""The intake stage's hand-off: requests routed to models, as per-model batches.

Deletion requests arrive keyed by subject; a model's state belongs to one model. As Kafka
Streams does with a repartition topic, the worker runs two stages:

1. **intake** (any worker, partitions of ``unlearn.deletions``): decodes, dead-letters,
   writes suppressions and ``received`` receipts, resolves each request to the models it
   concerns (:meth:`Router.route`), and writes one :class:`ModelOps`
   per model to ``unlearn.model-ops``, keyed by model id and partitioned as
   ``unlearn.records`` is (murmur2 of the model id);
2. **owner** (the worker assigned that partition of ``unlearn.model-ops`` and, because
   faust assigns co-partitioned topics together, the same partition of
   ``unlearn.records``): applies the model's deletions and new records, alone.

:class:`Router` resolves requests to models (step 1); :func:`model_ops` turns the routing
into :class:`~pipeline.events.ModelOps` messages (split to stay under the event size
limit) and :func:`forgets` back into the applier's operations (step 2).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from pipeline.events import (
    DeletionRequested,
    ModelOps,
    Origin,
    ReceiptStatus,
    RoutedRequest,
    encode_event,
)
from pipeline.intake import Message, Rejected
from pipeline.ops import Forget, Outcome, RequestOp, request_op
from pipeline.store.facade import Store
from pipeline.training import load_holdout

__all__ = ["Router", "forgets", "model_ops"]

_OVERHEAD = 512
"""Bytes of a ModelOps message besides its requests (ids, field names)."""


class Router:
    """The intake stage's logic: resolve deletion requests to the models they concern.

    Stateless but for a cache of each model's holdout record ids (a holdout only ever
    loses rows, so a stale copy is a superset: it routes a request to a model that then
    finds nothing to erase). Any number of workers route at once.

    Parameters
    ----------
    store : Store
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._holdouts: dict[str, frozenset[str]] = {}

    def route(
        self, ops: list[RequestOp], *, pending: Callable[[str], bool] | None = None
    ) -> tuple[dict[str, list[RequestOp]], Outcome]:
        """Fan requests out to the models they concern, each model's in batch order.

        A deletion names its models, or concerns every model that holds the subject's or
        the named records. A named model that does not exist gets a ``rejected`` receipt
        (and the request a dead letter if it names no existing model); a deletion whose
        data no model holds gets an ``already_absent`` receipt from every model. A
        feature removal or a relabel names its one model.

        Parameters
        ----------
        ops : list of operations
        pending : callable, optional
            ``pending(model_id)``: open the requests routed to this model as ``received``
            now, visible as pending until applied (default: every model). The intake stage
            opens those it forwards to other workers; those it applies at once get their
            final receipt from the publication, and :meth:`open_pending` if that fails.

        Returns
        -------
        by_model : dict of str to list of operations
        outcome : Outcome
            Receipts written and events rejected while routing.
        """
        forgets = [op for op in ops if isinstance(op, Forget)]
        # before any receipt can be final: what these requests erase stays out for good
        self.store.suppressions.add([op.request for op in forgets])
        registry = set(self.store.models.models())
        subject_models = self.store.records.models_for_subjects(
            op.request.subject_id
            for op in forgets
            if op.request.model_ids is None and op.request.subject_id is not None
        )
        by_model: dict[str, list[RequestOp]] = {}
        outcome = Outcome(model_id="*")
        for op in ops:
            if not isinstance(op, Forget):  # a feature removal or relabel: one model
                self._route_one(op, registry, by_model, outcome)
                continue
            req = op.request
            if req.model_ids is not None:
                known = [m for m in dict.fromkeys(req.model_ids) if m in registry]
                for missing in (m for m in dict.fromkeys(req.model_ids) if m not in registry):
                    reason = f"model {missing!r} does not exist"
                    self._close_new(
                        outcome, req.request_id, missing, ReceiptStatus.REJECTED, reason=reason
                    )
                if not known:
                    if op.message is not None:
                        error = f"request {req.request_id!r} names no existing model: " + ", ".join(
                            repr(m) for m in req.model_ids
                        )
                        outcome.rejected.append(Rejected(op.message, "unknown_model", error))
                    continue
                targets = known
            else:
                targets = sorted(self._holders(req, registry, subject_models))
                if not targets:
                    earlier = self.store.receipts.get(req.request_id)
                    if earlier:  # a replay: its data is gone from the models it concerned
                        outcome.skipped += 1
                        outcome.receipts.extend(r for r in earlier if r.status.final)
                        continue
                    for model_id in sorted(registry):
                        version = self.store.models.current_version(model_id) or None
                        self._close_new(
                            outcome,
                            req.request_id,
                            model_id,
                            ReceiptStatus.ALREADY_ABSENT,
                            version=version,
                        )
                    continue
            for model_id in targets:
                by_model.setdefault(model_id, []).append(op)
        self.open_pending(
            {m: batch for m, batch in by_model.items() if pending is None or pending(m)}
        )
        return by_model, outcome

    def open_pending(self, by_model: Mapping[str, list[RequestOp]]) -> None:
        """Open a ``received`` receipt for each request and model that has none: visible
        as pending (the overdue-deletion alert) until a publication closes it."""
        for model_id, ops in by_model.items():
            self.store.receipts.open_many(
                model_id, {op.request.request_id: op.request.ts for op in ops}
            )

    def _route_one(
        self,
        op: RequestOp,
        registry: set[str],
        by_model: dict[str, list[RequestOp]],
        outcome: Outcome,
    ) -> None:
        """Route a request that names its one model (``model_id``)."""
        req = op.request
        model_id = getattr(req, "model_id", "")
        if model_id in registry:
            by_model.setdefault(model_id, []).append(op)
            return
        reason = f"model {model_id!r} does not exist"
        self._close_new(outcome, req.request_id, model_id, ReceiptStatus.REJECTED, reason=reason)
        if op.message is not None:
            error = f"request {req.request_id!r} names no existing model: {model_id!r}"
            outcome.rejected.append(Rejected(op.message, "unknown_model", error))

    def _close_new(
        self,
        outcome: Outcome,
        request_id: str,
        model_id: str,
        status: ReceiptStatus,
        **fields: Any,
    ) -> None:
        """Close a request for a model unless it is final already (then: a replay)."""
        existing = self.store.receipts.get_one(request_id, model_id)
        if existing is not None and existing.status.final:
            outcome.skipped += 1
            return
        if status is ReceiptStatus.REJECTED:
            receipt = self.store.receipts.reject(request_id, model_id, str(fields["reason"]))
        else:
            receipt = self.store.receipts.close(request_id, model_id, status, **fields)
        outcome.receipts.append(receipt)

    def _holders(
        self, req: DeletionRequested, registry: set[str], subject_models: dict[str, set[str]]
    ) -> set[str]:
        models: set[str] = set()
        if req.subject_id is not None:
            models |= subject_models.get(req.subject_id, set()) & registry
        if req.record_ids:
            client: Any = self.store.client
            pipe = client.pipeline(transaction=False)
            ordered = sorted(registry - models)
            for model_id in ordered:
                pipe.smismember(self.store.keys.records(model_id), req.record_ids)
            for model_id, found in zip(ordered, pipe.execute(), strict=True):
                if any(found):
                    models.add(model_id)
            wanted = set(req.record_ids)
            models |= {m for m in registry - models if wanted & self._holdout_ids(m)}
        return models

    def _holdout_ids(self, model_id: str) -> frozenset[str]:
        """Record ids in a model's holdout (cached: a holdout only ever loses rows, so a
        stale copy is a superset, which routes a request to a model that then finds
        nothing to erase)."""
        ids = self._holdouts.get(model_id)
        if ids is None:
            holdout = load_holdout(self.store, model_id)
            ids = frozenset(holdout.ids) if holdout is not None else frozenset()
            self._holdouts[model_id] = ids
        return ids


def model_ops(by_model: dict[str, list[RequestOp]], max_bytes: int) -> list[ModelOps]:
    """One or more :class:`ModelOps` per model, each at most ``max_bytes`` when encoded.

    Parameters
    ----------
    by_model : dict of str to list of operations
        The routing of a batch (:meth:`Router.route`); every operation carries the
        message it was decoded from.
    max_bytes : int
        The size limit of an event (``UNLEARN_MAX_EVENT_BYTES``); a single request is
        always below it, as it was accepted under the same limit.

    Returns
    -------
    list of ModelOps
        In model order, then request order. Event ids are derived from the model and the
        requests' origins, so a replayed intake batch produces the same ids.
    """
    out: list[ModelOps] = []
    for model_id, ops in by_model.items():
        chunk: list[RoutedRequest] = []
        size = _OVERHEAD
        for op in ops:
            routed = RoutedRequest(request=op.request, origin=_origin(op.message))
            n = len(routed.model_dump_json(by_alias=True))
            if chunk and size + n > max_bytes:
                out.append(_batch(model_id, chunk))
                chunk, size = [], _OVERHEAD
            chunk.append(routed)
            size += n
        if chunk:
            out.append(_batch(model_id, chunk))
    return out


def forgets(batches: Iterable[ModelOps]) -> list[RequestOp]:
    """The applier's operations of routed batches (:func:`~pipeline.ops.request_op`), each
    with a message that names where its request was first consumed (the dead-letter topic
    gets that origin and the request's JSON)."""
    return [
        request_op(
            routed.request,
            Message(
                routed.origin.topic,
                routed.origin.partition,
                routed.origin.offset,
                _key(routed.request).encode(),
                encode_event(routed.request),
                routed.origin.timestamp,
            ),
        )
        for batch in batches
        for routed in batch.requests
    ]


def _key(request: Any) -> str:
    """The key a request was produced under: the subject for a deletion (else its id),
    the model id for a feature removal or relabel."""
    if isinstance(request, DeletionRequested):
        return request.subject_id or request.request_id
    return str(request.model_id)


def _origin(message: Message | None) -> Origin:
    if message is None:
        return Origin(topic="-", partition=0, offset=0)
    return Origin(
        topic=message.topic,
        partition=message.partition,
        offset=message.offset,
        timestamp=message.timestamp,
    )


def _batch(model_id: str, requests: Sequence[RoutedRequest]) -> ModelOps:
    first, last = requests[0].origin, requests[-1].origin
    ids = "\0".join(r.request.request_id for r in requests)
    digest = hashlib.sha256(ids.encode()).hexdigest()[:16]
    return ModelOps(
        event_id=f"ops:{model_id}:{first.topic}:{first.partition}:{first.offset}-{last.offset}:{digest}",
        model_id=model_id,
        requests=list(requests),
        ts=datetime.now(UTC),
    )

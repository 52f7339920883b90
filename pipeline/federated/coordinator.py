"""The federated server behind ``unlearn.federated``: events in, versions and receipts out.

The worker's agent (``workers/federated.py``) decodes messages with
:func:`decode_federated` and hands them, in order, to :meth:`FederatedCoordinator.handle`,
which returns :class:`~pipeline.ops.Outcome` objects to publish exactly as the
deletion path's. Per federation (:mod:`pipeline.federated.board`) it keeps a
:class:`~pipeline.federated.FederatedServer` in memory and:

* ``ClientStats``: collects a client's K events of a round (one per one-vs-rest problem),
  hands the reassembled statistics to the server, and once every member has reported
  closes the round: posts the next round on the board, or, when the server releases a
  model, publishes it as a new version (one Redis transaction, as
  :class:`~pipeline.applier.Applier` does) and closes the board's round.
* ``ClientRemoved`` / ``ClassRemoved``: opens a ``received`` receipt and queues the
  removal; when the server is idle it subtracts the client (or drops the class) and runs
  refresh rounds with the remaining clients; the released version carries an ``applied``
  receipt for the event id, with the certificate (the remaining clients' gradient
  residual at the released model, Guo et al., ICML 2020, Theorem 3) and the budget.

Idempotency: a removal whose receipt is final, or that is queued or running, is skipped;
statistics for a past round, or repeated within the round, are skipped. A removal of a
client (class) removed before gets an ``already_absent`` receipt; of one never part of the
federation a ``rejected`` receipt and a dead letter. Statistics the server cannot use
(unknown federation, client or class; wrong shapes; a round not open) are dead-lettered
with the reason. The coordinator is not thread-safe: the worker runs it on its one
executor thread. Its servers live in memory: a worker restarted mid-federation cannot
resume it (the released versions and receipts are in Redis; the stored statistics are
not).
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from pipeline.errors import SchemaError, UnknownClass, UnknownModel
from pipeline.events import (
    ClassRemoved,
    ClientRemoved,
    ClientStats,
    Event,
    ReceiptStatus,
    decode_event,
)
from pipeline.federated.board import FederationBoard, FederationSpec
from pipeline.federated.errors import FederatedError, UnknownClient
from pipeline.federated.server import FederatedServer
from pipeline.federated.statistics import ClientStatistics
from pipeline.intake import Message, Rejected, oversized, rejection_reason
from pipeline.ops import Outcome
from pipeline.store import Store
from pipeline.store.versions import ModelSpec
from pipeline.unlearning.kinds import kind_named

__all__ = ["FEDERATED_EVENTS", "FederatedCoordinator", "decode_federated"]

log = logging.getLogger(__name__)

FederatedEvent = ClientStats | ClientRemoved | ClassRemoved
FEDERATED_EVENTS: tuple[type[Event], ...] = (ClientStats, ClientRemoved, ClassRemoved)
Removal = ClientRemoved | ClassRemoved


def decode_federated(message: Message, *, max_bytes: int) -> FederatedEvent | Rejected[Any] | None:
    """One ``unlearn.federated`` message as an event, a :class:`Rejected`, or None (tombstone).

    As :func:`pipeline.intake.decode_message`, for the three event types of the topic.
    """
    value = message.value
    if value is None:
        return None
    too_big = oversized(message, max_bytes, "a client's Hessian is d * d floats, reduce d")
    if too_big is not None:
        return too_big
    try:
        event = decode_event(value)
    except SchemaError as exc:
        return Rejected(message, rejection_reason(exc), str(exc))
    if not isinstance(event, ClientStats | ClientRemoved | ClassRemoved):
        kind = type(event).__name__
        error = f"this topic carries ClientStats, ClientRemoved and ClassRemoved, not {kind}"
        return Rejected(message, "wrong_type", error)
    return event


@dataclass
class _Federation:
    """One federation as the coordinator holds it."""

    spec: FederationSpec
    server: FederatedServer
    stats: dict[tuple[str, int], dict[Any, tuple[ClientStats, Message | None]]] = field(
        default_factory=dict
    )
    queue: deque[tuple[Removal, Message | None]] = field(default_factory=deque)
    active: Removal | None = None
    started: float = 0.0
    removed_clients: set[str] = field(default_factory=set)
    removed_classes: list[Any] = field(default_factory=list)


def _now() -> datetime:
    return datetime.now(UTC)


class FederatedCoordinator:
    """Runs the federations of one worker; see the module docstring.

    Parameters
    ----------
    store : Store
    keep_versions : int
        Versions kept per model.
    """

    def __init__(self, store: Store, *, keep_versions: int = 50) -> None:
        self.store = store
        self.board = FederationBoard(store)
        self.keep_versions = keep_versions
        self._feds: dict[str, _Federation] = {}

    def server(self, model_id: str) -> FederatedServer | None:
        """The server of a federation this coordinator runs (None: not loaded)."""
        fed = self._feds.get(model_id)
        return None if fed is None else fed.server

    def handle(self, items: list[tuple[FederatedEvent, Message | None]]) -> list[Outcome]:
        """Apply decoded events in order; one :class:`Outcome` per published version or
        batch of receipts and rejections, per model."""
        outcomes: list[Outcome] = []
        for event, message in items:
            out = Outcome(event.model_id)
            try:
                fed = self._federation(event.model_id)
                if isinstance(event, ClientStats):
                    self._stats(fed, event, message, out, outcomes)
                else:
                    self._enqueue(fed, event, message, out, outcomes)
            except UnknownModel as exc:
                self._reject(out, message, "unknown_model", str(exc))
            outcomes.append(out)
        return [o for o in outcomes if o.published or o.receipts or o.rejected or o.skipped]

    # -- federations ---------------------------------------------------------------------
    def _federation(self, model_id: str) -> _Federation:
        fed = self._feds.get(model_id)
        if fed is not None:
            return fed
        spec = self.board.spec(model_id)
        if spec is None:
            raise UnknownModel(model_id)
        server = spec.server()
        server.start(spec.members)
        posted = self.board.posted(model_id)
        if self.store.models.current_version(model_id) or (posted and posted.request.round):
            log.warning(
                "federation %r: its state is not in this worker's memory (restarted?); "
                "its statistics will be refused until it is declared again",
                model_id,
            )
        fed = _Federation(spec=spec, server=server)
        self._feds[model_id] = fed
        log.info("federation %r loaded: %d members", model_id, len(spec.members))
        return fed

    @staticmethod
    def _reject(out: Outcome, message: Message | None, reason: str, error: str) -> None:
        if message is not None:
            out.rejected.append(Rejected(message, reason, error))
        else:
            log.warning("refused an event (%s): %s", reason, error)

    # -- statistics ----------------------------------------------------------------------
    def _stats(
        self,
        fed: _Federation,
        ev: ClientStats,
        message: Message | None,
        out: Outcome,
        outcomes: list[Outcome],
    ) -> None:
        server = fed.server
        if ev.round < server.round_:
            out.skipped += 1  # a late redelivery of a closed round
            return
        labels = server.problem_labels
        problems = [None] if labels is None else labels
        error = None
        reason = "invalid"
        if not server.updating:
            error = f"federation {ev.model_id!r} has no open round (round {ev.round} reported)"
        elif ev.round > server.round_:
            error = f"round {ev.round} is not open yet; the server is in round {server.round_}"
        elif ev.client_id not in server.members_:
            error = str(UnknownClient(ev.client_id, server.members_))
        elif ev.class_label not in problems:
            reason = "unknown_class"
            error = (
                f"class_label {ev.class_label!r} is not a problem of {ev.model_id!r} {problems!r}"
            )
        if error is not None:
            self._reject(out, message, reason, error)
            return
        slot = fed.stats.setdefault((ev.client_id, ev.round), {})
        if ev.class_label in slot:
            out.skipped += 1
            return
        slot[ev.class_label] = (ev, message)
        if len(slot) < len(problems):
            return
        del fed.stats[(ev.client_id, ev.round)]
        try:
            stats = ClientStatistics.from_events([e for e, _ in slot.values()], labels)
            server.receive(stats)
        except FederatedError as exc:
            for _, msg in slot.values():
                self._reject(out, msg, "invalid", str(exc))
            return
        if server.missing():
            return
        if server.advance():
            outcomes.append(self._release(fed))
            self._next_removal(fed, outcomes)
        else:
            self._post(fed)

    def _post(self, fed: _Federation) -> None:
        server = fed.server
        request = server.request() if server.updating else None
        self.board.post(fed.spec.model_id, request, sorted(server.members_))

    # -- removals ------------------------------------------------------------------------
    def _enqueue(
        self,
        fed: _Federation,
        ev: Removal,
        message: Message | None,
        out: Outcome,
        outcomes: list[Outcome],
    ) -> None:
        model_id = ev.model_id
        existing = self.store.receipts.get_one(ev.event_id, model_id)
        queued = {e.event_id for e, _ in fed.queue}
        if fed.active is not None:
            queued.add(fed.active.event_id)
        if (existing is not None and existing.status.final) or ev.event_id in queued:
            out.skipped += 1
            return
        self.store.receipts.received(ev.event_id, [model_id], received_at=min(ev.ts, _now()))
        fed.queue.append((ev, message))
        self._next_removal(fed, outcomes)

    def _next_removal(self, fed: _Federation, outcomes: list[Outcome]) -> None:
        """Start queued removals while the server is idle with a released model."""
        server = fed.server
        while fed.active is None and fed.queue and not server.updating:
            ev, message = fed.queue.popleft()
            out = Outcome(ev.model_id)
            outcomes.append(out)
            try:
                if isinstance(ev, ClientRemoved):
                    gone = ev.client_id in fed.removed_clients
                    if not gone:
                        server.remove_client(ev.client_id)
                else:  # a regressor's server raises: it has no classes to remove
                    gone = ev.class_label in fed.removed_classes
                    if not gone:
                        server.remove_class(ev.class_label, class_rows=False)
            except (FederatedError, UnknownClass) as exc:
                reason = "unknown_class" if isinstance(exc, UnknownClass) else "invalid"
                out.receipts.append(self.store.receipts.reject(ev.event_id, ev.model_id, str(exc)))
                self._reject(out, message, reason, str(exc))
                continue
            if gone:
                out.receipts.append(
                    self.store.receipts.close(
                        ev.event_id,
                        ev.model_id,
                        ReceiptStatus.ALREADY_ABSENT,
                        version=self.store.models.current_version(ev.model_id) or None,
                        method="none",
                        certificate=server.certificate_,
                        budget=server.budget_,
                    )
                )
                continue
            fed.active, fed.started = ev, time.perf_counter()
            if isinstance(ev, ClientRemoved):
                fed.removed_clients.add(ev.client_id)
            else:
                fed.removed_classes.append(ev.class_label)
            if server.updating:
                self._post(fed)
            else:  # ridge: the subtraction is exact, no round needed
                outcomes.append(self._release(fed))

    # -- publishing ----------------------------------------------------------------------
    def _release(self, fed: _Federation) -> Outcome:
        """Publish the server's released model (and the receipt of the removal it ends)."""
        server, spec, model_id = fed.server, fed.spec, fed.spec.model_id
        report = server.last_report(time.perf_counter() - fed.started if fed.active else 0.0)
        W, intercept = server.coef_, server.intercept_
        classes = kind_named(spec.kind).classes(server)
        seq = (self.store.models.applied_seq(model_id) or 0) + 1
        extra = {
            "federated": {
                "members": sorted(server.members_),
                "removed_clients": sorted(fed.removed_clients),
                "removed_classes": list(fed.removed_classes),
                "rounds": server.last_rounds_,
                "rounds_total": server.rounds_,
                "converged": server.converged_,
            }
        }
        pub = self.store.models.publication(model_id, self.store.models.current_version(model_id))
        pub.set_model(
            ModelSpec(
                kind=spec.kind,
                coef=W,
                intercept=intercept,
                method=report.method,
                seq=seq,
                classes=classes,
                certificate=report.certificate,
                budget=report.budget,
                n_records=report.n_records,
                extra=extra,
            )
        )
        if fed.active is not None:
            pub.receipt(fed.active.event_id, ReceiptStatus.APPLIED, n_records=report.n_removed)
            pub.mark_events([fed.active.event_id])
        result = pub.applied_seq(seq).retain(self.keep_versions).commit()
        fed.active = None
        self.board.post(model_id, None, sorted(server.members_))
        log.info(
            "federation %r: published v%d (%s, %d rounds, certificate %.3g of %.3g)",
            model_id,
            result.version,
            report.method,
            server.last_rounds_,
            report.certificate,
            report.budget,
        )
        return Outcome(
            model_id,
            published=result.notice(),
            receipts=list(result.receipts),
            reports=[report],
        )

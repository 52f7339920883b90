"""Deletion receipts: one per deletion request and affected model, the audit trail.

A receipt is the JSON of :class:`pipeline.events.Receipt`, stored per model (hash tag
``{model_id}``) so that a :class:`~pipeline.store.Publication` writes it in the same
transaction as the version where the deletion took effect. Its life:
``received`` -> (``pending_retrain``) -> one final status, ``applied``, ``completed``,
``already_absent`` or ``rejected``. A final receipt is never overwritten, so replaying a
request after a crash keeps the version where the erasure first took effect.

``due_at`` is ``received_at`` plus the legal deadline (30 days by default); open
requests sit in a per-model sorted set by received time, for the "oldest pending
deletion" alert. A request -> models index answers "what happened to request X?"
across models.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from pipeline.errors import InvalidInput
from pipeline.events import Receipt, ReceiptStatus
from pipeline.store.keys import KeySpace
from pipeline.store.records import index_model

__all__ = [
    "DEFAULT_LEGAL_DEADLINE",
    "DEFAULT_RETENTION",
    "ReceiptStore",
    "index_requests",
    "next_receipt",
    "stage_receipts",
]

DEFAULT_LEGAL_DEADLINE = timedelta(days=30)
DEFAULT_RETENTION = timedelta(days=730)
"""How long receipts (and suppressions) are kept: 24 months, CCPA's record-keeping rule."""


def _now() -> datetime:
    return datetime.now(UTC)


def next_receipt(
    existing: Receipt | None,
    *,
    request_id: str,
    model_id: str,
    status: ReceiptStatus,
    deadline: timedelta,
    now: datetime | None = None,
    received_at: datetime | None = None,
    **outcome: Any,
) -> Receipt:
    """The receipt after a status change (``received_at`` and ``due_at`` are kept).

    Parameters
    ----------
    existing : Receipt or None
        The stored receipt, if any; a final one must not be passed (check ``final``).
    received_at : datetime, optional
        When the request arrived, for a receipt with no stored predecessor (default
        ``now``); the legal deadline runs from it.
    outcome
        ``version``, ``method``, ``certificate``, ``budget``, ``n_records``, ``reason``.
    """
    now = now or _now()
    received = existing.received_at if existing else (received_at or now)
    return Receipt(
        event_id=f"rcpt:{model_id}:{request_id}:{status.value}",
        request_id=request_id,
        model_id=model_id,
        status=status,
        received_at=received,
        due_at=existing.due_at if existing else received + deadline,
        completed_at=now if status.final else None,
        ts=now,
        **outcome,
    )


def mget(pipe: Any, keys: Sequence[str]) -> Any:
    """``MGET`` of keys that share one model's hash tag, in a plain or cluster pipeline.

    redis-py's cluster pipeline refuses its multi-key methods by name, whatever the keys;
    sent as a raw command, one slot's keys are as valid on a cluster as anywhere.
    """
    return pipe.execute_command("MGET", *keys)


def mset(pipe: Any, mapping: Mapping[str, Any]) -> Any:
    """``MSET`` of keys that share one model's hash tag (see :func:`mget`)."""
    return pipe.execute_command("MSET", *(part for item in mapping.items() for part in item))


def stage_receipts(
    pipe: Any, keys: KeySpace, receipts: Iterable[Receipt], retention: timedelta
) -> None:
    """Queue the writes of receipts (one model's) and their pending-set entries in a MULTI.

    One ``MSET`` and at most one ``ZREM`` and one ``ZADD`` per model, whatever the count,
    and an ``EXPIRE`` per receipt: a receipt is kept for ``retention``, then expires.
    """
    ttl = max(1, int(retention.total_seconds()))
    by_model: dict[str, list[Receipt]] = {}
    for receipt in receipts:
        by_model.setdefault(receipt.model_id, []).append(receipt)
    for model_id, batch in by_model.items():
        mset(
            pipe,
            {keys.receipt(model_id, r.request_id): r.model_dump_json(by_alias=True) for r in batch},
        )
        for r in batch:
            pipe.expire(keys.receipt(model_id, r.request_id), ttl)
        pending = keys.pending(model_id)
        closed = [r.request_id for r in batch if r.status.final]
        if closed:
            pipe.zrem(pending, *closed)
        opened = {r.request_id: r.received_at.timestamp() for r in batch if not r.status.final}
        if opened:
            pipe.zadd(pending, opened)


def index_requests(
    client: Any,
    keys: KeySpace,
    model_id: str,
    request_ids: Iterable[str],
    retention: timedelta = DEFAULT_RETENTION,
) -> None:
    """Add ``model_id`` to the request -> models index of each request (one round trip,
    before the receipts are written: :func:`~pipeline.store.records.index_model`).

    Only receipts that :meth:`ReceiptStore.get` would not find through the model
    registry need it: those closed by :meth:`ReceiptStore.close_many` (a request naming a
    model that does not exist is rejected under that name) or opened by
    :meth:`ReceiptStore.received`. The receipts of the deletion path (opened at routing,
    closed by a publication) belong to registered models and are not indexed: two
    commands fewer per request. The entries expire with the receipts.
    """
    index_model(client, model_id, map(keys.request_models, request_ids), retention)


def _parse(raw: Any) -> Receipt | None:
    return None if raw is None else Receipt.model_validate_json(raw)


class ReceiptStore:
    """Record and look up deletion receipts.

    Parameters
    ----------
    client : redis.Redis
    keys : KeySpace
    legal_deadline : timedelta
        ``due_at = received_at + legal_deadline``.
    retention : timedelta
        How long a receipt is kept (then it expires).
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        legal_deadline: timedelta = DEFAULT_LEGAL_DEADLINE,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        self._r: Any = client  # redis-py types its replies loosely
        self._keys = keys
        self.legal_deadline = legal_deadline
        self.retention = retention

    def received(
        self, request_id: str, model_ids: Iterable[str], *, received_at: datetime | None = None
    ) -> list[Receipt]:
        """Open a ``received`` receipt per model; an existing receipt is kept as it is.

        Returns
        -------
        list of Receipt
            The stored receipt of each model (new or existing), in ``model_ids`` order.
        """
        now = received_at or _now()
        out = []
        for model_id in model_ids:
            index_requests(self._r, self._keys, model_id, [request_id], self.retention)
            fresh = next_receipt(
                None,
                request_id=request_id,
                model_id=model_id,
                status=ReceiptStatus.RECEIVED,
                deadline=self.legal_deadline,
                now=now,
            )
            out.append(self._open(fresh))
        return out

    def open_many(self, model_id: str, requests: dict[str, datetime]) -> int:
        """Open a ``received`` receipt for each request that has none yet (two round trips).

        The worker calls it when a request reaches it, before applying: a request that is
        then lost (a bug, a crash) stays visible as pending to the overdue-deletion alert.
        A stored receipt, open or final, is never touched. Returns how many were opened.
        """
        if not requests:
            return 0
        # no index entry: the model is registered (routing found it), get() looks there
        ttl = max(1, int(self.retention.total_seconds()))
        fresh = [
            next_receipt(
                None,
                request_id=rid,
                model_id=model_id,
                status=ReceiptStatus.RECEIVED,
                deadline=self.legal_deadline,
                received_at=received,
            )
            for rid, received in requests.items()
        ]
        pipe = self._r.pipeline(transaction=False)
        for receipt in fresh:
            key = self._keys.receipt(model_id, receipt.request_id)
            pipe.set(key, receipt.model_dump_json(by_alias=True), nx=True, ex=ttl)
        opened = {
            r.request_id: r.received_at.timestamp()
            for r, ok in zip(fresh, pipe.execute(), strict=True)
            if ok
        }
        if opened:
            self._r.zadd(self._keys.pending(model_id), opened)
        return len(opened)

    def _open(self, fresh: Receipt) -> Receipt:
        key = self._keys.receipt(fresh.model_id, fresh.request_id)
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(key)
                    existing = _parse(pipe.get(key))
                    if existing is not None:
                        return existing
                    pipe.multi()
                    stage_receipts(pipe, self._keys, [fresh], self.retention)
                    pipe.execute()
                    return fresh
                except redis.WatchError:
                    continue

    def reject(self, request_id: str, model_id: str, reason: str) -> Receipt:
        """Close a request for one model as ``rejected`` (a final receipt is kept)."""
        if not reason:
            msg = f"rejecting request {request_id!r} needs a reason"
            raise InvalidInput(msg)
        return self.close(request_id, model_id, ReceiptStatus.REJECTED, reason=reason)

    def close(
        self, request_id: str, model_id: str, status: ReceiptStatus, **outcome: Any
    ) -> Receipt:
        """Close a request for one model without publishing a version (a final receipt is kept).

        For outcomes that change no model, e.g. ``already_absent`` with ``version`` set to
        the current version, which already does not hold the records.
        """
        written = self.close_many(model_id, {request_id: _now()}, status, **outcome)
        if written:
            return written[0]
        kept = self.get_one(request_id, model_id)  # final already: kept as it was
        assert kept is not None
        return kept

    def close_many(
        self,
        model_id: str,
        requests: dict[str, datetime],
        status: ReceiptStatus,
        **outcome: Any,
    ) -> list[Receipt]:
        """:meth:`close` many requests of one model in one transaction.

        ``requests`` maps request ids to when they were received (used when no receipt
        is stored yet). Final receipts are kept; returns the receipts written.
        """
        if not ReceiptStatus(status).final:
            msg = f"closing a receipt takes a final status, got {status!r}"
            raise InvalidInput(msg)
        ids = list(requests)
        if not ids:
            return []
        index_requests(self._r, self._keys, model_id, ids, self.retention)
        keys = [self._keys.receipt(model_id, rid) for rid in ids]
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(*keys)
                    now = _now()
                    written = []
                    for rid, raw in zip(ids, mget(pipe, keys), strict=True):
                        existing = _parse(raw)
                        if existing is not None and existing.status.final:
                            continue
                        written.append(
                            next_receipt(
                                existing,
                                request_id=rid,
                                model_id=model_id,
                                status=ReceiptStatus(status),
                                deadline=self.legal_deadline,
                                now=now,
                                received_at=min(requests[rid], now),
                                **outcome,
                            )
                        )
                    pipe.multi()
                    stage_receipts(pipe, self._keys, written, self.retention)
                    pipe.execute()
                    return written
                except redis.WatchError:
                    continue

    def get_many(self, request_ids: Iterable[str], model_id: str) -> list[Receipt | None]:
        """Receipts of several requests for one model, in one round trip."""
        ids = list(request_ids)
        if not ids:
            return []
        raws = self._r.mget([self._keys.receipt(model_id, rid) for rid in ids])
        return [_parse(raw) for raw in raws]

    def get_one(self, request_id: str, model_id: str) -> Receipt | None:
        """The receipt of one request for one model, or ``None``."""
        raw = self._r.get(self._keys.receipt(model_id, request_id))
        return _parse(raw)

    def get(self, request_id: str) -> list[Receipt]:
        """Every model's receipt for a request, sorted by model id (empty if unknown).

        Looks at every registered model, and at the models the request's index names
        (receipts under names that are not models: see :func:`index_requests`); one
        round trip for the names, one for the receipts.
        """
        names: Any = self._r.pipeline(transaction=False)
        names.smembers(self._keys.model_index())
        names.smembers(self._keys.request_models(request_id))
        registered, indexed = names.execute()
        model_ids = sorted({m.decode() for m in (*registered, *indexed)})
        if not model_ids:
            return []
        reads: Any = self._r.pipeline(transaction=False)  # GETs: the keys span slots
        for model_id in model_ids:
            reads.get(self._keys.receipt(model_id, request_id))
        found = (_parse(raw) for raw in reads.execute())
        return [receipt for receipt in found if receipt is not None]

    def pending(self, model_id: str) -> list[tuple[str, datetime]]:
        """Open requests of a model with their received time, oldest first."""
        rows = self._r.zrange(self._keys.pending(model_id), 0, -1, withscores=True)
        return [(rid.decode(), datetime.fromtimestamp(score, UTC)) for rid, score in rows]

    def oldest_pending(self, model_id: str) -> datetime | None:
        """Received time of the oldest open request of a model, or ``None``."""
        rows = self.pending(model_id)[:1]
        return rows[0][1] if rows else None

"""Suppression: an acknowledged erasure keeps the erased data out of every model, for good.

An erasure removes what a model holds. Data of the same subject (or the same record id)
can still be on its way: a ``RecordAdded`` produced before the request but still in the
records topic's backlog, a replay of that topic from the start, an offset reset. A
suppression entry, written when the worker first processes the request and *before* any
receipt can say ``applied``, keeps all of it out:

    a record of subject S (or with record id R) is never learned by a model in the
    request's scope if it was produced at or before the instant the request was first
    processed, ``at``.

A record's production time is the earlier of its event time (``ts``) and the broker's
timestamp of its message, so a client that leaves ``ts`` out cannot make an old record
look new. Data produced after ``at`` is new data and is learned, unless the request was
also an **objection** (GDPR Art. 21): then every record of the subject is kept out until
the objection is lifted (:meth:`Suppressions.lift`), and what was produced before the
lift stays out.

Entries are keyed by the SHA-256 token of the subject or record id (never the id) and by
scope (a model id, or ``*`` for a request that named no models). They expire with the
receipts (``UNLEARN_RECEIPT_RETENTION_DAYS``); an objection does not expire. The instant
a request was first processed is kept under its own key with the same lifetime, so a
replayed request never moves ``at`` forward (which would swallow later, legitimate data).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import redis

from pipeline.events import DeletionRequested
from pipeline.store.keys import KeySpace, subject_token
from pipeline.store.receipts import DEFAULT_RETENTION

__all__ = ["DEFAULT_RETENTION", "Candidate", "Suppressions"]

ALL = "*"
_LIFT = "lift"  # the field of an entry's hash that holds the instant of the last lift


@dataclass(frozen=True)
class Candidate:
    """A record about to be learned: its ids and when it was produced."""

    record_id: str
    subject_id: str
    produced_at: datetime


class Suppressions:
    """Read and write suppression entries (see the module docstring).

    Parameters
    ----------
    client : redis.Redis
    keys : KeySpace
    retention : timedelta
        Lifetime of an entry that is not an objection.
    """

    def __init__(
        self, client: redis.Redis, keys: KeySpace, retention: timedelta = DEFAULT_RETENTION
    ) -> None:
        self._client: Any = client
        self._keys = keys
        self._ttl = max(1, int(retention.total_seconds()))

    def add(self, requests: Sequence[DeletionRequested], now: datetime | None = None) -> None:
        """Suppress the data of ``requests`` (idempotent: a replay keeps its first instant).

        Called before any model applies the requests, so that no receipt can be final
        without its suppression. Two round trips whatever the number of requests (three
        when some are replays); plain commands (no script, no transaction), so it works on
        Redis Cluster too: each entry is a hash of request id -> instant, so concurrent
        writers never overwrite each other, and an objection is a flag of its own that
        never expires while it holds.
        """
        if not requests:
            return
        at_now = (now or datetime.now(UTC)).timestamp()
        pipe = self._client.pipeline(transaction=False)
        for req in requests:
            pipe.set(self._keys.request_seen(req.request_id), at_now, nx=True, ex=self._ttl)
        first = pipe.execute()
        seen = [None if new else req.request_id for req, new in zip(requests, first, strict=True)]
        earlier: dict[str, Any] = {}
        replayed = [seen_id for seen_id in seen if seen_id is not None]
        if replayed:  # these were processed before: their first instant holds
            pipe = self._client.pipeline(transaction=False)  # GETs: the keys span slots
            for seen_id in replayed:
                pipe.get(self._keys.request_seen(seen_id))
            earlier = dict(zip(replayed, pipe.execute(), strict=True))
        pipe = self._client.pipeline(transaction=False)
        for req in requests:
            stored = earlier.get(req.request_id)
            at = float(stored) if stored is not None else at_now
            for kind, token, scope in self._entries(req):
                key = self._keys.suppression(kind, token, scope)
                pipe.hset(key, req.request_id, at)
                pipe.expire(key, self._ttl)
                if req.objection and kind == "s":
                    flag = self._keys.suppression("o", token, scope)
                    pipe.set(flag, req.request_id)  # no TTL: until lifted
        pipe.execute()

    def lift(
        self, subject_id: str, model_ids: Iterable[str] | None = None, now: datetime | None = None
    ) -> int:
        """End an objection: the subject's data produced from now on may be learned again.

        What was produced before now stays out. Returns the number of objections lifted
        (0: there was none in that scope).
        """
        at = (now or datetime.now(UTC)).timestamp()
        token = subject_token(subject_id)
        lifted = 0
        for scope in list(model_ids) if model_ids is not None else [ALL]:
            flag = self._keys.suppression("o", token, scope)
            if not self._client.delete(flag):
                continue
            key = self._keys.suppression("s", token, scope)
            self._client.hset(key, _LIFT, at)
            self._client.expire(key, self._ttl)
            lifted += 1
        return lifted

    def suppressed(self, model_id: str, candidates: Sequence[Candidate]) -> list[bool]:
        """Whether ``model_id`` must not learn each of ``candidates`` (one round trip)."""
        if not candidates:
            return []
        pipe = self._client.pipeline(transaction=False)
        for c in candidates:
            s, r = subject_token(c.subject_id), subject_token(c.record_id)
            for scope in (ALL, model_id):
                pipe.hvals(self._keys.suppression("s", s, scope))
                pipe.hvals(self._keys.suppression("r", r, scope))
                pipe.exists(self._keys.suppression("o", s, scope))
        replies = pipe.execute()
        out = []
        for i, c in enumerate(candidates):
            instants, objections = [], 0
            for j in range(2):  # the two scopes
                subj, rec, obj = replies[6 * i + 3 * j : 6 * i + 3 * j + 3]
                instants += [float(v) for v in (*subj, *rec)]
                objections += int(obj)
            produced = c.produced_at.timestamp()
            out.append(objections > 0 or any(produced <= at for at in instants))
        return out

    def _entries(self, req: DeletionRequested) -> list[tuple[str, str, str]]:
        scopes = list(dict.fromkeys(req.model_ids)) if req.model_ids is not None else [ALL]
        out = []
        for scope in scopes:
            if req.subject_id is not None:
                out.append(("s", subject_token(req.subject_id), scope))
            for rid in dict.fromkeys(req.record_ids or ()):
                out.append(("r", subject_token(rid), scope))
        return out

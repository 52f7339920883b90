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

import json
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

# Merge an entry atomically: ``at`` only moves forward, an objection only a lift removes.
_MERGE = """
local cur = redis.call('GET', KEYS[1])
local at, objection = tonumber(ARGV[1]), ARGV[2] == '1'
if cur then
  local old = cjson.decode(cur)
  if old.at > at then at = old.at end
  objection = objection or old.objection
end
redis.call('SET', KEYS[1], cjson.encode({at = at, objection = objection}))
if objection then redis.call('PERSIST', KEYS[1]) else
  redis.call('EXPIRE', KEYS[1], tonumber(ARGV[3])) end
return 1
"""


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
        self._merge = self._client.register_script(_MERGE)

    def add(self, requests: Sequence[DeletionRequested], now: datetime | None = None) -> None:
        """Suppress the data of ``requests`` (idempotent: a replay keeps its first instant).

        Called before any model applies the requests, so that no receipt can be final
        without its suppression.
        """
        if not requests:
            return
        at_now = (now or datetime.now(UTC)).timestamp()
        pipe = self._client.pipeline(transaction=False)
        for req in requests:
            pipe.set(self._keys.request_seen(req.request_id), at_now, nx=True, ex=self._ttl)
            pipe.get(self._keys.request_seen(req.request_id))
        replies = pipe.execute()
        pipe = self._client.pipeline(transaction=False)
        for req, seen in zip(requests, replies[1::2], strict=True):
            at = float(seen) if seen is not None else at_now
            objection = "1" if req.objection else "0"
            for key in self._entries(req):
                self._merge(keys=[key], args=[at, objection, self._ttl], client=pipe)
        pipe.execute()

    def lift(
        self, subject_id: str, model_ids: Iterable[str] | None = None, now: datetime | None = None
    ) -> int:
        """End an objection: the subject's data produced from now on may be learned again.

        Returns the number of objections lifted (0: there was none in that scope).
        """
        at = (now or datetime.now(UTC)).timestamp()
        token = subject_token(subject_id)
        scopes = list(model_ids) if model_ids is not None else [ALL]
        lifted = 0
        for scope in scopes:
            key = self._keys.suppression("s", token, scope)
            raw = self._client.get(key)
            if raw is None or not json.loads(raw).get("objection"):
                continue
            entry = {"at": max(at, float(json.loads(raw)["at"])), "objection": False}
            self._client.set(key, json.dumps(entry), ex=self._ttl)
            lifted += 1
        return lifted

    def suppressed(self, model_id: str, candidates: Sequence[Candidate]) -> list[bool]:
        """Whether ``model_id`` must not learn each of ``candidates`` (one round trip)."""
        if not candidates:
            return []
        keys: list[str] = []
        for c in candidates:
            s, r = subject_token(c.subject_id), subject_token(c.record_id)
            for scope in (ALL, model_id):
                keys.append(self._keys.suppression("s", s, scope))
                keys.append(self._keys.suppression("r", r, scope))
        pipe = self._client.pipeline(transaction=False)
        for key in keys:
            pipe.get(key)
        replies = pipe.execute()
        out = []
        for i, c in enumerate(candidates):
            produced = c.produced_at.timestamp()
            entries = [json.loads(raw) for raw in replies[4 * i : 4 * i + 4] if raw is not None]
            out.append(any(e["objection"] or produced <= float(e["at"]) for e in entries))
        return out

    def _entries(self, req: DeletionRequested) -> list[str]:
        scopes = list(dict.fromkeys(req.model_ids)) if req.model_ids is not None else [ALL]
        keys = []
        for scope in scopes:
            if req.subject_id is not None:
                keys.append(self._keys.suppression("s", subject_token(req.subject_id), scope))
            for rid in dict.fromkeys(req.record_ids or ()):
                keys.append(self._keys.suppression("r", subject_token(rid), scope))
        return keys

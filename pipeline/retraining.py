"""Full retraining without losing deletions: the retrainer's side of the hand-off.

The retrainer is a separate process. For a ``RetrainRequested`` it

1. claims the model (:meth:`Retraining.try_start`): an in-flight marker set with
   ``SET NX`` and a time-to-live coalesces triggers (one retrain in flight per model
   absorbs the others) and a per-model start time rate-limits them (the retrainer process
   defers a rate-limited request until :meth:`Retraining.rate_limit_lifts`, keeping one
   per model, so that a trigger is delayed, never lost);
2. takes a consistent snapshot (:meth:`Retraining.snapshot`): the current version's engine
   checkpoint, its applied sequence number S and its records, read under ``WATCH`` of the
   ``current`` alias, so that they all belong to the same version;
3. refits from the snapshot (:func:`refit`, warm-started, same objective and perturbation)
   with progress reported;
4. hands the fitted engine state (no features) and S back through Redis
   (:meth:`Retraining.hand_back`).

It never publishes: the worker, the model's single writer, merges the result
(:meth:`pipeline.applier.Applier.merge_retrain`): it forgets from the refitted model
every record erased after S and learns every record added after S, then publishes. So a
version published after a retrain never contains a record whose deletion was acknowledged
before it (DESIGN section 7, invariant 2).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import redis

from pipeline.errors import NoEngineCheckpoint, UnknownModel
from pipeline.store.codec import StateValue, decode_state, encode_state
from pipeline.store.facade import Store
from pipeline.store.records import StoredRecord
from pipeline.training import Engine
from pipeline.unlearning.kinds import kind_of_state

__all__ = ["HandBack", "Retraining", "Snapshot", "engine_from_state", "refit"]

_META = "__retrain__"


@dataclass(frozen=True)
class Snapshot:
    """A model's state at one version: engine checkpoint, records, sequence number."""

    model_id: str
    version: int
    seq: int
    state: dict[str, StateValue]
    records: list[StoredRecord]


@dataclass(frozen=True)
class HandBack:
    """A finished refit waiting for the worker: engine state at snapshot ``snapshot_seq``."""

    model_id: str
    snapshot_version: int
    snapshot_seq: int
    reason: str
    request_id: str
    duration_s: float
    state: dict[str, StateValue] = field(repr=False)


def engine_from_state(
    state: dict[str, StateValue], records: list[StoredRecord], n_features: int | None = None
) -> Engine:
    """Rebuild an engine from its checkpoint and its records (in any order)."""
    d = int(n_features if n_features is not None else str(state["n_features_in"]))
    X = np.stack([r.features for r in records]) if records else np.empty((0, d))
    y = np.array([r.label for r in records])
    ids = [r.record_id for r in records]
    return kind_of_state(state).resume(state, X, y, ids)


def refit(engine: Engine, progress: Callable[[float, str], None] | None = None) -> float:
    """Fit ``engine`` again on the records it holds (warm start); return the seconds taken."""
    start = time.perf_counter()
    engine.refit(progress=progress)
    return time.perf_counter() - start


class Retraining:
    """Coalescing, rate limiting, snapshots and the hand-off, over Redis.

    Parameters
    ----------
    store : Store
    timeout : float
        Seconds an in-flight marker lives: a retrainer that dies frees the model then.
    min_interval : float
        Seconds between two retrain starts of one model; ``operator`` requests skip it.
    """

    def __init__(self, store: Store, *, timeout: float = 1800.0, min_interval: float = 60.0):
        self.store = store
        self.timeout = timeout
        self.min_interval = min_interval
        self._r: Any = store.client
        self._keys = store.keys

    # ---- claiming --------------------------------------------------------------------
    def try_start(self, model_id: str, reason: str, request_id: str) -> str | None:
        """Claim the model for a retrain; ``None`` if claimed, else why it was absorbed.

        Returns
        -------
        str or None
            ``"in_flight"`` (coalesced into the running retrain) or ``"rate_limited"``.
        """
        if not self.store.models.current_version(model_id):
            raise UnknownModel(model_id)
        if reason != "operator":
            last = self._r.get(self._keys.retrain_last(model_id))
            if last is not None and time.time() - float(last) < self.min_interval:
                return "rate_limited"
        marker = json.dumps({"reason": reason, "request_id": request_id, "started_at": time.time()})
        claimed = self._r.set(
            self._keys.retrain_inflight(model_id), marker, nx=True, px=int(self.timeout * 1000)
        )
        if not claimed:
            return "in_flight"
        self._r.set(self._keys.retrain_last(model_id), str(time.time()))
        return None

    def rate_limit_lifts(self, model_id: str) -> float:
        """Unix time from which a non-operator retrain of the model may start again."""
        last = self._r.get(self._keys.retrain_last(model_id))
        return time.time() if last is None else float(last) + self.min_interval

    def in_flight(self, model_id: str) -> dict[str, Any] | None:
        """The in-flight marker of the model (reason, start time, progress), or ``None``."""
        raw = self._r.get(self._keys.retrain_inflight(model_id))
        return None if raw is None else dict(json.loads(raw))

    def report_progress(self, model_id: str, fraction: float, message: str) -> None:
        """Record progress in the in-flight marker (kept only while the marker lives)."""
        key = self._keys.retrain_inflight(model_id)
        raw = self._r.get(key)
        if raw is None:
            return
        marker = json.loads(raw)
        marker.update(progress=round(float(fraction), 4), message=message)
        self._r.set(key, json.dumps(marker), xx=True, keepttl=True)

    def release(self, model_id: str, *, forget_rate_limit: bool = False) -> None:
        """Drop the in-flight marker and any result (an abandoned or refused retrain)."""
        keys = [self._keys.retrain_inflight(model_id), self._keys.retrain_result(model_id)]
        if forget_rate_limit:
            keys.append(self._keys.retrain_last(model_id))
        self._r.delete(*keys)

    # ---- the snapshot ----------------------------------------------------------------
    def snapshot(self, model_id: str) -> Snapshot:
        """Checkpoint, records and sequence number of the current version, consistently.

        Raises
        ------
        UnknownModel
            Nothing is published under ``model_id``.
        NoEngineCheckpoint
            The current version has no engine checkpoint (a federated model).
        """
        current_key = self._keys.current(model_id)
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(current_key)
                    raw = pipe.get(current_key)
                    if raw is None:
                        raise UnknownModel(model_id)
                    version = int(raw)
                    fields = pipe.hgetall(self._keys.checkpoint(model_id, version))
                    if not fields:
                        raise NoEngineCheckpoint(model_id, version)
                    seq_raw = pipe.get(self._keys.applied_seq(model_id))
                    records = list(self.store.records.scan(model_id))
                    pipe.multi()
                    pipe.get(current_key)
                    pipe.execute()  # fails if a publication moved `current` meanwhile
                    return Snapshot(
                        model_id=model_id,
                        version=version,
                        seq=int(seq_raw or 0),
                        state=decode_state(fields),
                        records=records,
                    )
                except redis.WatchError:
                    continue

    # ---- the hand-off ----------------------------------------------------------------
    def hand_back(self, result: HandBack) -> bool:
        """Store a finished refit for the worker; False if the claim was dropped meanwhile.

        The claim must still be this retrain's: a marker that expired (the refit took
        longer than ``timeout``) may have been taken by a newer retrain, whose marker the
        worker's merge of this stale result would otherwise clear.
        """
        marker = self.in_flight(result.model_id)
        if marker is None or marker.get("request_id") != result.request_id:
            return False
        meta = {
            "snapshot_version": result.snapshot_version,
            "snapshot_seq": result.snapshot_seq,
            "reason": result.reason,
            "request_id": result.request_id,
            "duration_s": result.duration_s,
        }
        fields = encode_state(result.state)
        fields[_META] = json.dumps(meta).encode()
        key = self._keys.retrain_result(result.model_id)
        with self._r.pipeline(transaction=True) as pipe:
            pipe.delete(key)
            pipe.hset(key, mapping=fields)
            pipe.execute()
        return True

    def pending_results(self, model_ids: list[str]) -> list[str]:
        """The models among ``model_ids`` that have a refit waiting to be merged."""
        pipe = self._r.pipeline(transaction=False)
        for model_id in model_ids:
            pipe.exists(self._keys.retrain_result(model_id))
        return [m for m, found in zip(model_ids, pipe.execute(), strict=True) if found]

    def take_result(self, model_id: str) -> HandBack | None:
        """The refit waiting for ``model_id`` (left in place until a publication clears it)."""
        fields: Any = self._r.hgetall(self._keys.retrain_result(model_id))
        if not fields:
            return None
        meta = json.loads(fields.pop(_META.encode()))
        return HandBack(
            model_id=model_id,
            snapshot_version=int(meta["snapshot_version"]),
            snapshot_seq=int(meta["snapshot_seq"]),
            reason=str(meta["reason"]),
            request_id=str(meta["request_id"]),
            duration_s=float(meta["duration_s"]),
            state=decode_state(fields),
        )

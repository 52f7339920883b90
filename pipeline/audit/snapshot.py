"""What the audit reads of one model, consistently: the version, its checkpoint, its records.

Everything a publication changes moves the model's ``current`` alias; the snapshot reads
again when it moved while reading. The audit never reads the worker's in-memory engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import PipelineError, UnknownModel
from pipeline.store.codec import StateValue, decode_state
from pipeline.store.models import UnknownVersion
from pipeline.store.records import StoredRecord
from pipeline.store.versions import ModelVersion
from pipeline.training import Holdout, load_holdout

if TYPE_CHECKING:
    from pipeline.store.facade import Store

__all__ = ["Snapshot", "find_orphans", "read_records", "read_snapshot", "records_usable"]

Array = NDArray[np.float64]
_CHUNK = 1000
_SNAPSHOT_TRIES = 5


# -- reading one consistent state -----------------------------------------------------------
@dataclass
class Snapshot:
    """What the audit reads of one model: the version, its checkpoint, its records."""

    version: ModelVersion
    state: dict[str, StateValue] | None
    ids: list[str]
    records: list[StoredRecord]
    missing: list[str]
    holdout: Holdout | None

    @property
    def model_id(self) -> str:
        return self.version.model_id

    @property
    def federated(self) -> bool:
        return "federated" in self.version.metadata.extra


def read_records(store: Store, model_id: str, ids: Sequence[str]) -> tuple[list, list[str]]:
    """The records of ``ids`` (one pipelined round trip per 1,000) and the ids with none."""
    found: list[StoredRecord] = []
    missing: list[str] = []
    for start in range(0, len(ids), _CHUNK):
        chunk = ids[start : start + _CHUNK]
        for rid, rec in zip(chunk, store.records.get_many(model_id, chunk), strict=True):
            if rec is None:
                missing.append(rid)
            else:
                found.append(rec)
    return found, missing


def read_snapshot(store: Store, model_id: str) -> Snapshot:
    """The current version, its checkpoint, records and holdout, read consistently.

    Everything a publication changes moves ``current``; if it moved while reading, the
    audit reads again.
    """
    for _ in range(_SNAPSHOT_TRIES):
        current = store.models.current_version(model_id)
        if current == 0:
            raise UnknownModel(model_id)
        try:
            version = store.models.get(model_id, current)
        except UnknownVersion:  # retired between the two reads: current moved on
            continue
        raw: Any = store.client.hgetall(store.keys.checkpoint(model_id, current))
        state = decode_state(raw) if raw else None
        ids = sorted(store.records.ids(model_id))
        records, missing = read_records(store, model_id, ids)
        holdout = load_holdout(store, model_id)
        if store.models.current_version(model_id) == current:
            return Snapshot(version, state, ids, records, missing, holdout)
    msg = (
        f"model {model_id!r} kept publishing new versions while the audit read it "
        f"({_SNAPSHOT_TRIES} tries): run the audit again when its worker is less busy"
    )
    raise PipelineError(msg)


def records_usable(snap: Snapshot) -> tuple[Array, list[Any]] | None:
    """The held records' features and labels, or None if some are unreadable."""
    d = snap.version.metadata.n_features
    if snap.missing or any(r.features.shape != (d,) for r in snap.records):
        return None
    X = np.stack([r.features for r in snap.records]) if snap.records else np.empty((0, d))
    return X, [r.label for r in snap.records]


def find_orphans(store: Store, model_id: str, held: set[str]) -> list[str]:
    """Record ids whose features are stored although the model does not hold them."""
    prefix = store.keys.record(model_id, "")
    found = []
    for raw in store.client.scan_iter(match=prefix + "*", count=5000):
        key = raw.decode() if isinstance(raw, bytes) else raw
        rid = key[len(prefix) :]
        if rid not in held:
            found.append(rid)
    if not found:
        return []
    # an erasure between the scan and the read of the record set is not an orphan
    pipe = store.client.pipeline(transaction=False)
    for rid in found:
        pipe.exists(store.keys.record(model_id, rid))
        pipe.sismember(store.keys.records(model_id), rid)
    replies = pipe.execute()
    return sorted(
        rid
        for rid, exists, member in zip(found, replies[0::2], replies[1::2], strict=True)
        if exists and not member
    )

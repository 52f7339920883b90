"""The training records a model needs, held per model with a subject index.

Each record is a hash (``features`` as raw little-endian float64, ``label`` as JSON,
``subject``); per model there is a set of record ids and, per subject, a set of that
subject's record ids; across models, a subject -> models index lets a deletion by
subject fan out. Records are added here or by a :class:`~pipeline.store.Publication`;
they are *erased* only by a publication, in the same transaction that publishes the
version that no longer contains them.

The subject -> models index lives in another hash slot, so it is written before the
model's transaction (a superset is harmless) and pruned after an erasure empties the
subject's set. With one writer per model (DESIGN section 4) the prune cannot race an add.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import TYPE_CHECKING, Any

import numpy as np
import redis

from pipeline.errors import InvalidInput
from pipeline.store.keys import KeySpace

if TYPE_CHECKING:
    from pipeline.events import RecordAdded

__all__ = ["RecordStore", "StoredRecord"]

Label = int | float | str


@dataclass(frozen=True)
class StoredRecord:
    """One training record.

    Parameters
    ----------
    record_id, subject_id : str
    features : ndarray of shape (n_features,)
        Stored as float64.
    label : int, float or str
    """

    record_id: str
    subject_id: str
    features: np.ndarray
    label: Label

    @classmethod
    def from_event(cls, event: RecordAdded) -> StoredRecord:
        """Build from a validated ``RecordAdded`` event."""
        return cls(
            record_id=event.record_id,
            subject_id=event.subject_id,
            features=np.asarray(event.features, dtype=np.float64),
            label=event.label,
        )

    def to_fields(self) -> dict[str, bytes]:
        features = np.asarray(self.features, dtype="<f8")
        if features.ndim != 1:
            msg = f"record {self.record_id!r}: features have shape {features.shape}, need (d,)"
            raise InvalidInput(msg)
        return {
            "features": features.tobytes(),
            "label": json.dumps(self.label).encode(),
            "subject": self.subject_id.encode(),
        }

    @classmethod
    def from_fields(cls, record_id: str, fields: dict[bytes, bytes]) -> StoredRecord:
        return cls(
            record_id=record_id,
            subject_id=fields[b"subject"].decode(),
            features=np.frombuffer(fields[b"features"], dtype="<f8").astype(np.float64),
            label=json.loads(fields[b"label"]),
        )


def _ids(values: Iterable[bytes | str]) -> list[str]:
    return [v.decode() if isinstance(v, bytes) else v for v in values]


def _by_subject(pairs: Iterable[tuple[str, str]]) -> dict[str, list[str]]:
    groups: dict[str, list[str]] = {}
    for record_id, subject_id in pairs:
        groups.setdefault(subject_id, []).append(record_id)
    return groups


def stage_add(pipe: Any, keys: KeySpace, model_id: str, records: Sequence[StoredRecord]) -> None:
    """Queue the writes that add ``records`` (all new) inside a MULTI.

    One ``HSET`` per record, then one variadic ``SADD`` per set touched: a batch costs
    about one command per record, not three.
    """
    if not records:
        return
    for rec in records:
        pipe.hset(keys.record(model_id, rec.record_id), mapping=rec.to_fields())
    pipe.sadd(keys.records(model_id), *(rec.record_id for rec in records))
    for subject_id, ids in _by_subject((r.record_id, r.subject_id) for r in records).items():
        pipe.sadd(keys.subject_records(model_id, subject_id), *ids)


def stage_erase(pipe: Any, keys: KeySpace, model_id: str, subjects: dict[str, str]) -> None:
    """Queue the writes that erase records (``record id -> subject id``) inside a MULTI.

    Variadic ``DEL`` and ``SREM``: a constant number of commands plus one per subject.
    """
    if not subjects:
        return
    pipe.delete(*(keys.record(model_id, record_id) for record_id in subjects))
    pipe.srem(keys.records(model_id), *subjects)
    for subject_id, ids in _by_subject(subjects.items()).items():
        pipe.srem(keys.subject_records(model_id, subject_id), *ids)


def index_model(
    client: Any, model_id: str, index_keys: Iterable[str], expire: timedelta | None = None
) -> None:
    """Add ``model_id`` to each of these index sets (subject -> models, request -> models,
    the model registry), in one round trip; ``expire`` renews the sets' lifetime.

    The indexes live outside the model's hash slot, so a writer adds to them before the
    model's transaction: a superset is harmless, a record or receipt no index reaches
    would be lost.
    """
    unique = list(dict.fromkeys(index_keys))
    if not unique:
        return
    pipe = client.pipeline(transaction=False)
    for key in unique:
        pipe.sadd(key, model_id)
        if expire is not None:
            pipe.expire(key, max(1, int(expire.total_seconds())))
    pipe.execute()


def index_subjects(client: Any, keys: KeySpace, model_id: str, subject_ids: Iterable[str]) -> None:
    """Add ``model_id`` to the subject -> models index of each subject (one round trip)."""
    index_model(client, model_id, map(keys.subject_models, subject_ids))


def read_subjects(client: Any, keys: KeySpace, model_id: str, ids: Sequence[str]) -> list[Any]:
    """Subject of each record id (``None`` when the record is absent), in one round trip."""
    pipe = client.pipeline(transaction=False)
    for record_id in ids:
        pipe.hget(keys.record(model_id, record_id), "subject")
    return [None if s is None else s.decode() for s in pipe.execute()]


def prune_subject_index(
    client: redis.Redis, keys: KeySpace, model_id: str, subject_ids: Iterable[str]
) -> None:
    """Drop ``model_id`` from the subject -> models index of subjects it no longer holds.

    Two round trips whatever the number of subjects: one to test, one to prune.
    """
    subjects = sorted(set(subject_ids))
    if not subjects:
        return
    probe: Any = client.pipeline(transaction=False)
    for subject_id in subjects:
        probe.exists(keys.subject_records(model_id, subject_id))
    held = probe.execute()
    prune: Any = client.pipeline(transaction=False)
    for subject_id, still in zip(subjects, held, strict=True):
        if not still:
            prune.srem(keys.subject_models(subject_id), model_id)
    prune.execute()


class RecordStore:
    """Read and add the records of every model.

    Parameters
    ----------
    client : redis.Redis
        A client with ``decode_responses=False``.
    keys : KeySpace
    """

    def __init__(self, client: redis.Redis, keys: KeySpace) -> None:
        self._r: Any = client  # redis-py types its replies loosely
        self._keys = keys

    def add(self, model_id: str, records: Iterable[StoredRecord]) -> list[str]:
        """Add records that are not there yet; return the ids actually added.

        Adding a record id the model already holds is a no-op (idempotent replay).
        """
        batch = list({rec.record_id: rec for rec in records}.values())
        if not batch:
            return []
        index_subjects(self._r, self._keys, model_id, (rec.subject_id for rec in batch))
        recs_key = self._keys.records(model_id)
        with self._r.pipeline(transaction=True) as pipe:
            while True:
                try:
                    pipe.watch(recs_key)
                    present = pipe.smismember(recs_key, [r.record_id for r in batch])
                    new = [rec for rec, has in zip(batch, present, strict=True) if not has]
                    pipe.multi()
                    stage_add(pipe, self._keys, model_id, new)
                    pipe.execute()
                    break
                except redis.WatchError:
                    continue
        return [rec.record_id for rec in new]

    def get(self, model_id: str, record_id: str) -> StoredRecord | None:
        """One record, or ``None`` if the model does not hold it."""
        return self.get_many(model_id, [record_id])[0]

    def get_many(self, model_id: str, record_ids: Sequence[str]) -> list[StoredRecord | None]:
        """Records in the order asked, ``None`` for absent ones (one round trip)."""
        pipe = self._r.pipeline(transaction=False)
        for record_id in record_ids:
            pipe.hgetall(self._keys.record(model_id, record_id))
        return [
            StoredRecord.from_fields(rid, fields) if fields else None
            for rid, fields in zip(record_ids, pipe.execute(), strict=True)
        ]

    def ids(self, model_id: str) -> set[str]:
        """Every record id the model holds."""
        return set(_ids(self._r.smembers(self._keys.records(model_id))))

    def unsent_tombstones(self, model_id: str) -> list[str]:
        """Erased record ids whose tombstones were never acknowledged by the broker.

        A publication that erases records adds them in its transaction; the worker removes
        them (:meth:`tombstones_delivered`) once the broker has taken the tombstones. What
        is left after a crash is sent again with the model's next batch.
        """
        return sorted(m.decode() for m in self._r.smembers(self._keys.tombstones(model_id)))

    def tombstones_delivered(self, model_id: str, record_ids: Iterable[str]) -> None:
        """Forget the ids whose tombstones the broker acknowledged."""
        ids = list(record_ids)
        if ids:
            self._r.srem(self._keys.tombstones(model_id), *ids)

    def unsent_corrections(self, model_id: str) -> dict[str, str]:
        """Record ids whose corrected ``RecordAdded`` the broker never acknowledged, with the
        event id each was published under (see :meth:`unsent_tombstones`, the same
        protocol: a publication adds them, the worker removes them once delivered, and
        what a crash left is sent again with the model's next batch)."""
        raw = self._r.hgetall(self._keys.corrections(model_id))
        return {k.decode(): v.decode() for k, v in raw.items()}

    def corrections_delivered(self, model_id: str, record_ids: Iterable[str]) -> None:
        """Forget the ids whose corrected records the broker acknowledged."""
        ids = list(record_ids)
        if ids:
            self._r.hdel(self._keys.corrections(model_id), *ids)

    def count(self, model_id: str) -> int:
        """Number of records the model holds."""
        return int(self._r.scard(self._keys.records(model_id)))

    def subject_record_ids(self, model_id: str, subject_id: str) -> set[str]:
        """Record ids of one subject in one model."""
        return self.subject_record_ids_many(model_id, [subject_id])[subject_id]

    def subject_record_ids_many(
        self, model_id: str, subject_ids: Iterable[str]
    ) -> dict[str, set[str]]:
        """Record ids of several subjects in one model, in one round trip."""
        subjects = list(dict.fromkeys(subject_ids))
        pipe = self._r.pipeline(transaction=False)
        for subject_id in subjects:
            pipe.smembers(self._keys.subject_records(model_id, subject_id))
        found = pipe.execute() if subjects else []
        return {s: set(_ids(m)) for s, m in zip(subjects, found, strict=True)}

    def models_for_subject(self, subject_id: str) -> set[str]:
        """Models that may hold the subject's records (a superset; check each model)."""
        return self.models_for_subjects([subject_id])[subject_id]

    def models_for_subjects(self, subject_ids: Iterable[str]) -> dict[str, set[str]]:
        """:meth:`models_for_subject` of several subjects, in one round trip."""
        subjects = list(dict.fromkeys(subject_ids))
        pipe = self._r.pipeline(transaction=False)
        for subject_id in subjects:
            pipe.smembers(self._keys.subject_models(subject_id))
        found = pipe.execute() if subjects else []
        return {s: set(_ids(m)) for s, m in zip(subjects, found, strict=True)}

    def scan(self, model_id: str, batch: int = 500) -> Iterator[StoredRecord]:
        """Iterate over the model's records (not a snapshot: use for retraining reads)."""
        ids: list[str] = []
        for raw in self._r.sscan_iter(self._keys.records(model_id), count=batch):
            ids.append(raw.decode() if isinstance(raw, bytes) else raw)
            if len(ids) >= batch:
                yield from (r for r in self.get_many(model_id, ids) if r is not None)
                ids = []
        if ids:
            yield from (r for r in self.get_many(model_id, ids) if r is not None)

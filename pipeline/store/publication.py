"""One atomic model publication: a new version plus everything that must move with it.

The streaming worker collects a batch's effects on a :class:`Publication` and commits
them in ONE Redis transaction (``WATCH`` + ``MULTI``/``EXEC``, all keys in the model's
hash slot)::

    pub = store.models.publication("churn", expected_version=7)
    pub.set_model(ModelSpec(kind="logistic", coef=w, intercept=b, classes=[0, 1],
                            method="influence", seq=1042, certificate=c, budget=eps))
    pub.add_records(new_records)          # learned in this version
    pub.erase_records(["r17", "r18"])     # forgotten in this version
    pub.receipt("req-9", ReceiptStatus.APPLIED)
    pub.applied_seq(1042)
    pub.checkpoint(engine.state_dict())
    result = pub.commit()                 # -> PublishResult, version 8

Either all of it is visible or none: a reader that sees ``current = 8`` finds version 8's
coefficients, the erased records gone and the receipts pointing at version 8. If another
writer moved ``current`` first, :meth:`Publication.commit` raises
:class:`~pipeline.errors.ModelVersionConflict` and writes nothing. The transaction
also appends to the model's stream (``XADD``); after ``EXEC`` the version is announced on
its pub/sub channel (``PUBLISH``, which Redis Cluster does not allow in a transaction).

A publication that erases records the model held retires, in the same transaction,
every earlier version and its checkpoint: they learned from the erased records, so no
reader may be served them and no rollback may return to them. Receipts written here
expire after the retention period (24 months by default).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import numpy as np
import redis

from pipeline.errors import InvalidInput, ModelVersionConflict
from pipeline.events import ModelPublished, Receipt, ReceiptStatus
from pipeline.faults import crash_point
from pipeline.store.checkpoints import stage_checkpoint
from pipeline.store.codec import StateValue, encode_array, encode_state
from pipeline.store.keys import KeySpace
from pipeline.store.receipts import (
    DEFAULT_RETENTION,
    mget,
    next_receipt,
    stage_receipts,
)
from pipeline.store.records import (
    StoredRecord,
    index_model,
    prune_subject_index,
    read_subjects,
    stage_add,
    stage_erase,
)
from pipeline.store.versions import ModelSpec, VersionMetadata

__all__ = ["APPLIED_EVENTS_KEPT", "STREAM_MAXLEN", "Publication", "PublishResult"]

STREAM_MAXLEN = 10_000
APPLIED_EVENTS_KEPT = 1_000_000
"""Applied input event ids remembered per model (the oldest are forgotten first)."""
_MAX_RETRIES = 20


@dataclass(frozen=True)
class PublishResult:
    """What a committed publication did.

    Attributes
    ----------
    metadata : VersionMetadata
        The published version.
    added : list of str
        Record ids stored (ids already present were skipped).
    erased : list of str
        Record ids whose features were erased.
    absent : list of str
        Record ids asked to be erased that the model did not hold.
    receipts : list of Receipt
        Receipts written; ``kept`` lists final receipts left unchanged (a replay).
    removed_versions : list of int
        Versions deleted by retention.
    """

    metadata: VersionMetadata
    added: list[str] = field(default_factory=list)
    erased: list[str] = field(default_factory=list)
    absent: list[str] = field(default_factory=list)
    receipts: list[Receipt] = field(default_factory=list)
    kept: list[Receipt] = field(default_factory=list)
    removed_versions: list[int] = field(default_factory=list)

    def notice(self) -> ModelPublished:
        """The ``ModelPublished`` event announcing this version on ``unlearn.model-updates``."""
        return self.metadata.notice()

    @property
    def version(self) -> int:
        return self.metadata.version


@dataclass
class _Plan:
    """Everything read under WATCH, from which the MULTI block is written."""

    metadata: VersionMetadata
    coef: bytes
    intercept: bytes
    added: list[StoredRecord]
    erase: dict[str, str]
    absent: list[str]
    receipts: list[Receipt]
    kept: list[Receipt]
    drop_versions: list[int]
    drop_checkpoints: list[int]
    expire_versions: list[int] = field(default_factory=list)
    rewrite: list[str] = field(default_factory=list)


class Publication:
    """Builder for one atomic publication; obtain it from ``ModelRegistry.publication``.

    Parameters
    ----------
    client : redis.Redis
    keys : KeySpace
    model_id : str
    expected_version : int
        The version the writer believes is current (0 for a model's first version).
    legal_deadline : timedelta
        For receipts that had no ``received`` entry yet.
    retention : timedelta
        How long the receipts written are kept.
    """

    def __init__(
        self,
        client: redis.Redis,
        keys: KeySpace,
        model_id: str,
        expected_version: int,
        legal_deadline: timedelta,
        retention: timedelta = DEFAULT_RETENTION,
    ) -> None:
        keys.current(model_id)  # validates the model id
        self._r: Any = client  # redis-py types its replies loosely
        self._keys = keys
        self.model_id = model_id
        self.expected_version = int(expected_version)
        self._deadline = legal_deadline
        self._retention = retention
        self._spec: ModelSpec | None = None
        self._adds: dict[str, StoredRecord] = {}
        self._erase_ids: list[str] = []
        self._tombstones: list[str] = []
        self._corrections: dict[str, str] = {}
        self._known_subjects: dict[str, str] = {}
        self._erase_subjects: list[str] = []
        self._receipts: dict[str, tuple[ReceiptStatus, str | None, int, datetime | None]] = {}
        self._receipt_details: dict[str, dict[str, Any]] = {}
        self._new_features: dict[str, np.ndarray] = {}
        self._new_labels: dict[str, Any] = {}
        self._relabelled_at: float | None = None
        self._seq: int | None = None
        self._state: dict[str, bytes] | None = None
        self._keep_older: bool = False
        self._keep_last: int | None = None
        self._grace: timedelta | None = None
        self._retire = False
        self._events: list[str] = []
        self._retrain_done = False
        self._holdout: dict[str, bytes] | None = None
        self._committed = False
        self._notice: dict[str, str] = {}

    # ---- building ------------------------------------------------------------------
    def set_model(self, spec: ModelSpec) -> Publication:
        """The coefficients and metadata of the new version (required)."""
        spec.checked()
        self._spec = spec
        return self

    def add_records(self, records: Iterable[StoredRecord]) -> Publication:
        """Store records learned in this version (ids already held are skipped)."""
        for rec in records:
            self._adds[rec.record_id] = rec
        return self

    def erase_records(
        self, record_ids: Iterable[str], subjects: Mapping[str, str] | None = None
    ) -> Publication:
        """Erase records' features and index entries (absent ids are reported).

        ``subjects`` (record id -> subject id), when the writer knows them, saves reading
        each record's subject; whether a record is held is checked either way.
        """
        self._erase_ids.extend(record_ids)
        if subjects:
            self._known_subjects.update(subjects)
        return self

    def tombstones(self, record_ids: Iterable[str]) -> Publication:
        """Keep these record ids until the worker has their tombstones acknowledged
        (:meth:`~pipeline.store.records.RecordStore.tombstones_delivered`)."""
        self._tombstones.extend(record_ids)
        return self

    def corrections(self, event_ids: Mapping[str, str]) -> Publication:
        """Keep these record ids (with the event id of each one's corrected
        ``RecordAdded``) until the worker has the corrected records acknowledged
        (:meth:`~pipeline.store.records.RecordStore.corrections_delivered`)."""
        self._corrections.update(event_ids)
        return self

    def erase_subject(self, subject_id: str) -> Publication:
        """Erase every record of a subject that this model holds."""
        self._erase_subjects.append(subject_id)
        return self

    def receipt(
        self,
        request_id: str,
        status: ReceiptStatus,
        *,
        reason: str | None = None,
        n_records: int = 0,
        received_at: datetime | None = None,
        **details: Any,
    ) -> Publication:
        """Write a receipt pointing at the new version (a final receipt is kept).

        ``n_records`` is how many of the request's records this version erased (or
        relabelled); ``received_at`` when the request arrived, if no receipt of it is
        stored yet; ``details``: other :class:`~pipeline.events.Receipt` fields
        (``operation``, ``columns``, ``relabelled``, and ``method`` when the request's own
        update differs from the version's).
        """
        self._receipts[request_id] = (
            ReceiptStatus(status),
            reason,
            int(n_records),
            received_at,
        )
        self._receipt_details[request_id] = details
        return self

    def update_records(
        self,
        features: Mapping[str, np.ndarray] | None = None,
        labels: Mapping[str, Any] | None = None,
        *,
        relabelled_at: float | None = None,
    ) -> Publication:
        """Rewrite held records' features (a feature removal zeroes the columns) and labels
        (a relabel), in the same transaction as the version that no longer uses the old
        values. Records the model does not hold, or erased by this publication, are left
        alone (never recreated).

        ``relabelled_at`` (epoch seconds): remember, per relabelled record, when its label
        was corrected, so that a replay of its older ``RecordAdded`` is never learned.
        """
        for rid, x in (features or {}).items():
            self._new_features[rid] = np.asarray(x, dtype="<f8")
        self._new_labels.update(labels or {})
        if relabelled_at is not None:
            self._relabelled_at = float(relabelled_at)
        return self

    def applied_seq(self, seq: int) -> Publication:
        """Move the applied-sequence marker (default: the spec's ``seq``)."""
        self._seq = int(seq)
        return self

    def checkpoint(
        self, state: Mapping[str, StateValue], *, keep_older: bool = False
    ) -> Publication:
        """Save the engine state with the new version, dropping older checkpoints."""
        self._state = encode_state(state)
        self._keep_older = keep_older
        return self

    def mark_events(self, event_ids: Iterable[str]) -> Publication:
        """Remember input event ids as applied (scored by the new seq), for replays."""
        self._events.extend(event_ids)
        return self

    def replace_holdout(self, fields: Mapping[str, bytes]) -> Publication:
        """Write the model's holdout set (encoded hash fields) with the new version."""
        self._holdout = dict(fields)
        return self

    def retrain_done(self) -> Publication:
        """Clear the model's in-flight retrain marker and handed-back result."""
        self._retrain_done = True
        return self

    def retain(self, keep_last: int) -> Publication:
        """Delete versions older than the last ``keep_last`` (never the current one)."""
        if keep_last < 1:
            msg = f"keep_last={keep_last}: retention must keep at least the current version"
            raise InvalidInput(msg)
        self._keep_last = keep_last
        return self

    def retire_earlier(self) -> Publication:
        """Retire every earlier version, as an erasure does (with the same grace): they
        used what this version no longer uses (a forgotten feature column, a corrected,
        possibly poisoned, label)."""
        self._retire = True
        return self

    def erased_versions_grace(self, grace: timedelta | None) -> Publication:
        """Keep the versions an erasure retires readable by number for ``grace`` (then they
        expire); ``None`` or zero: delete them in the transaction (the default).

        ``current`` never points at them either way. An operator may want a short grace
        (an audit of the last versions before an erasure); it must not exceed the legal
        deadline (the settings enforce it).
        """
        self._grace = grace if grace else None
        return self

    # ---- committing ----------------------------------------------------------------
    def commit(self) -> PublishResult:
        """Publish atomically.

        Raises
        ------
        ModelVersionConflict
            ``current`` is not ``expected_version`` (another writer published first).
        """
        if self._spec is None:
            msg = f"publication of {self.model_id!r} has no model: call set_model() first"
            raise InvalidInput(msg)
        if self._committed:
            msg = f"publication of {self.model_id!r} was already committed"
            raise InvalidInput(msg)
        keys, model_id = self._keys, self.model_id
        index_model(
            self._r,
            model_id,
            [
                keys.model_index(),
                *(keys.subject_models(rec.subject_id) for rec in self._adds.values()),
            ],
        )
        current_key = keys.current(model_id)
        with self._r.pipeline(transaction=True) as pipe:
            for _ in range(_MAX_RETRIES):
                try:
                    pipe.watch(current_key, keys.records(model_id))
                    plan = self._plan(pipe)
                    pipe.multi()
                    self._stage(pipe, plan)
                    crash_point("publication.exec", model_id)
                    pipe.execute()
                    crash_point("publication.committed", model_id)
                    break
                except redis.WatchError:
                    found = int(self._r.get(current_key) or 0)
                    if found != self.expected_version:
                        raise ModelVersionConflict(model_id, self.expected_version, found) from None
            else:
                msg = f"publication of {model_id!r} kept conflicting with record writes"
                raise InvalidInput(msg)
        self._committed = True
        # after EXEC: Redis Cluster allows no PUBLISH inside a transaction. The stream entry
        # (XADD, inside it) is what watchers rely on; the channel is a best-effort wake-up.
        self._r.publish(keys.channel(model_id), json.dumps(self._notice))
        # a subject that also gained a record here still has its set: never pruned
        prune_subject_index(self._r, keys, model_id, plan.erase.values())
        return PublishResult(
            metadata=plan.metadata,
            added=[r.record_id for r in plan.added],
            erased=list(plan.erase),
            absent=plan.absent,
            receipts=plan.receipts,
            kept=plan.kept,
            removed_versions=plan.drop_versions,
        )

    def _plan(self, pipe: Any) -> _Plan:
        """Read (under WATCH) everything the writes depend on."""
        keys, model_id, spec = self._keys, self.model_id, self._spec
        assert spec is not None
        found = int(pipe.get(keys.current(model_id)) or 0)
        if found != self.expected_version:
            raise ModelVersionConflict(model_id, self.expected_version, found)
        version = found + 1

        ids = list(dict.fromkeys(self._erase_ids))
        replaced = set(ids)  # an id both erased and added is replaced: erase, then add
        adds = list(self._adds.values())
        held = pipe.smismember(keys.records(model_id), [r.record_id for r in adds]) if adds else []
        added = [
            rec for rec, has in zip(adds, held, strict=True) if not has or rec.record_id in replaced
        ]

        for subject_id in self._erase_subjects:
            members = pipe.smembers(keys.subject_records(model_id, subject_id))
            ids.extend(sorted(m.decode() for m in members if m.decode() not in ids))
        subjects = self._subjects(pipe, ids)
        erase = {rid: s for rid, s in zip(ids, subjects, strict=True) if s is not None}
        absent = [rid for rid, s in zip(ids, subjects, strict=True) if s is None]

        added_ids = {r.record_id for r in added}
        updates = [
            rid
            for rid in dict.fromkeys([*self._new_features, *self._new_labels])
            if rid not in erase and rid not in added_ids
        ]
        still = pipe.smismember(keys.records(model_id), updates) if updates else []
        rewrite = [rid for rid, has in zip(updates, still, strict=True) if has]

        n_records = int(pipe.scard(keys.records(model_id))) + len(added) - len(erase)
        coef, intercept = spec.checked()
        coef_bytes, coef_spec = encode_array(coef, "coef")
        intercept_bytes, intercept_spec = encode_array(intercept, "intercept")
        now = datetime.now(UTC)
        metadata = spec.metadata(
            model_id=model_id,
            version=version,
            parent=found or None,
            n_records=n_records,
            created_at=now,
            coef_spec=coef_spec,
            intercept_spec=intercept_spec,
            n_features=int(coef.shape[-1]),
        )

        receipts, kept = [], []
        request_ids = list(self._receipts)
        # one round trip for every receipt (the keys share the model's hash tag)
        stored = mget(pipe, [keys.receipt(model_id, r) for r in request_ids]) if request_ids else []
        for request_id, raw in zip(request_ids, stored, strict=True):
            status, reason, n_erased, received_at = self._receipts[request_id]
            existing = None if raw is None else Receipt.model_validate_json(raw)
            if existing is not None and existing.status.final:
                kept.append(existing)
                continue
            outcome: dict[str, Any] = {"method": spec.method}
            outcome.update(self._receipt_details.get(request_id, {}))
            receipts.append(
                next_receipt(
                    existing,
                    request_id=request_id,
                    model_id=model_id,
                    status=status,
                    deadline=self._deadline,
                    now=now,
                    received_at=None if received_at is None else min(received_at, now),
                    reason=reason,
                    version=version,
                    certificate=spec.certificate,
                    budget=spec.budget,
                    n_records=n_erased,
                    **outcome,
                )
            )

        drop_versions: list[int] = []
        expire_versions: list[int] = []
        if self._keep_last is not None or erase or self._retire:
            known = [int(v) for v in pipe.zrange(keys.versions(model_id), 0, -1)]
            if self._keep_last is not None:
                drop_versions = [v for v in known if v <= version - self._keep_last]
            if erase or self._retire:  # versions that learned what is gone are retired
                earlier = [v for v in known if v < version and v not in drop_versions]
                if self._grace is None:
                    drop_versions += earlier
                else:
                    expire_versions = earlier
        drop_checkpoints: list[int] = []
        if self._state is not None and not self._keep_older:
            drop_checkpoints = [int(v) for v in pipe.zrange(keys.checkpoints(model_id), 0, -1)]
        drop_checkpoints = sorted(set(drop_checkpoints) | set(drop_versions))
        return _Plan(
            metadata=metadata,
            coef=coef_bytes,
            intercept=intercept_bytes,
            added=added,
            erase=erase,
            absent=absent,
            receipts=receipts,
            kept=kept,
            drop_versions=drop_versions,
            drop_checkpoints=[v for v in drop_checkpoints if v != version],
            expire_versions=expire_versions,
            rewrite=rewrite,
        )

    def _stage_rewrites(self, pipe: Any, rewrite: list[str]) -> None:
        """Queue the rewritten features and labels of held records (:meth:`update_records`)."""
        keys, model_id = self._keys, self.model_id
        relabelled: dict[str, float] = {}
        for rid in rewrite:
            fields: dict[str, bytes] = {}
            if rid in self._new_features:
                fields["features"] = self._new_features[rid].tobytes()
            if rid in self._new_labels:
                fields["label"] = json.dumps(self._new_labels[rid]).encode()
                if self._relabelled_at is not None:
                    relabelled[rid] = self._relabelled_at
            pipe.hset(keys.record(model_id, rid), mapping=fields)
        if relabelled:
            pipe.hset(keys.relabelled(model_id), mapping=relabelled)

    def _subjects(self, pipe: Any, ids: list[str]) -> list[str | None]:
        """Subject of each record to erase, ``None`` for records the model does not hold."""
        known = self._known_subjects
        if not ids or not all(rid in known for rid in ids):
            return list(read_subjects(pipe, self._keys, self.model_id, ids))
        held = pipe.smismember(self._keys.records(self.model_id), ids)
        return [known[rid] if has else None for rid, has in zip(ids, held, strict=True)]

    def _stage(self, pipe: Any, plan: _Plan) -> None:
        """Queue every write of the plan inside MULTI."""
        keys, model_id, meta = self._keys, self.model_id, plan.metadata
        version = meta.version
        pipe.hset(
            keys.version(model_id, version),
            mapping={
                "meta": meta.model_dump_json(),
                "coef": plan.coef,
                "intercept": plan.intercept,
            },
        )
        pipe.zadd(keys.versions(model_id), {str(version): version})
        pipe.set(keys.current(model_id), version)
        pipe.set(keys.applied_seq(model_id), self._seq if self._seq is not None else meta.seq)
        stage_erase(pipe, keys, model_id, plan.erase)
        if plan.erase:  # an erased record's correction goes with it: its tombstone is due
            pipe.hdel(keys.relabelled(model_id), *plan.erase)
            pipe.hdel(keys.corrections(model_id), *plan.erase)
        self._stage_rewrites(pipe, plan.rewrite)
        if self._tombstones:
            pipe.sadd(keys.tombstones(model_id), *self._tombstones)
        held = {*plan.rewrite, *(r.record_id for r in plan.added)}  # held after this version
        corrections = {r: e for r, e in self._corrections.items() if r in held}
        if corrections:
            pipe.hset(keys.corrections(model_id), mapping=corrections)
        stage_add(pipe, keys, model_id, plan.added)
        if self._events:
            seq = self._seq if self._seq is not None else meta.seq
            pipe.zadd(keys.applied_events(model_id), dict.fromkeys(self._events, seq))
            pipe.zremrangebyrank(keys.applied_events(model_id), 0, -APPLIED_EVENTS_KEPT - 1)
        if self._holdout is not None:
            pipe.delete(keys.holdout(model_id))
            pipe.hset(keys.holdout(model_id), mapping=self._holdout)
        if self._retrain_done:
            pipe.delete(keys.retrain_inflight(model_id), keys.retrain_result(model_id))
        stage_receipts(pipe, keys, plan.receipts, self._retention)
        if self._state is not None:
            stage_checkpoint(pipe, keys, model_id, version, self._state, drop=plan.drop_checkpoints)
        grace = 0 if self._grace is None else max(1, int(self._grace.total_seconds()))
        for old in plan.expire_versions:  # readable by number for the grace period only
            pipe.expire(keys.version(model_id, old), grace)
            pipe.expire(keys.checkpoint(model_id, old), grace)
        for old in plan.drop_versions:
            pipe.delete(keys.version(model_id, old))
            pipe.zrem(keys.versions(model_id), str(old))
            pipe.delete(keys.checkpoint(model_id, old))
            pipe.zrem(keys.checkpoints(model_id), str(old))
        notice = {
            "model_id": model_id,
            "version": str(version),
            "parent": str(meta.parent or ""),
            "method": meta.method,
            "seq": str(meta.seq),
            "created_at": meta.created_at.isoformat(),
        }
        pipe.xadd(keys.events(model_id), notice, maxlen=STREAM_MAXLEN, approximate=True)
        self._notice = notice

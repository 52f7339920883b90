"""The erasure part: a deletion request's data is gone from every store, for good.

For every model the request concerns (its receipts): the receipt is final; no version older
than the receipt's version can be read when that version erased training records (the
publication retires them all); and, when the request is known (its ``DeletionRequested``
event, read from ``unlearn.deletions`` when a broker is given, or passed in), each record id
it names and each record of its subject is absent from the records, the subject index, the
holdout and every kept checkpoint's id list, the request's suppression entries are held, and
on the compacted ``unlearn.records`` topic the last message of each erased record's key
(``model/record``, :func:`pipeline.topics.record_key`) is a tombstone. A record of the
subject (or with a named id) that is held again is accepted only when the records topic
shows it was produced after the request was first processed and after the last lift of an
objection of it (new data, which the pipeline learns); while the objection holds, never.
Without the broker such a record cannot be dated and the check fails.

What the audit cannot see
-------------------------
Which record ids a subject's request erased is not stored anywhere after the fact (a receipt
counts them, it does not list them: listing them would keep the identifiers the erasure
removed). Records loaded by ``unlearn train`` never pass through ``unlearn.records``, so for a
subject's erased training rows the audit checks the subject index, the records' subject
fields and the holdout's subject tokens, not their ids' tombstones. When the version named in
a receipt erased only holdout rows, or records learned and deleted in one batch, nothing was
retired; the audit tells the holdout-only case from a restored old version by the version
metadata's ``deleted_since_fit`` counter (unchanged from its parent when no training record
went). That counter also counts records learned and deleted within one batch, so a version
whose only erasures were such records, with its parent still readable, is reported as a
failure: a false alarm that the model's history explains.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from pipeline.audit.broker import BrokerView, produced_at, read_topics
from pipeline.audit.report import Finding, PartReport, UnknownRequest, first_few
from pipeline.audit.snapshot import Snapshot, find_orphans, read_records
from pipeline.errors import PipelineError
from pipeline.events import DeletionRequested, Receipt, ReceiptStatus
from pipeline.store.codec import decode_state
from pipeline.store.keys import subject_token
from pipeline.store.records import StoredRecord, read_subjects
from pipeline.topics import Topics, record_key
from pipeline.training import load_holdout
from pipeline.unlearning.base import decode_ids

if TYPE_CHECKING:
    from pipeline.store.facade import Store

__all__ = ["erasure_part"]


def _checkpoint_ids(store: Store, model_id: str) -> dict[int, set[str]]:
    """The record ids of every kept checkpoint of a model, by version."""
    out = {}
    for v in store.checkpoints.versions(model_id):
        raw: Any = store.client.hgetall(store.keys.checkpoint(model_id, v))
        if raw:
            state = decode_state(raw)
            out[v] = {str(i) for i in decode_ids(str(state.get("record_ids_json", "lines:")))}
    return out


def _readable_before(store: Store, model_id: str, version: int) -> list[int]:
    """Versions older than ``version`` whose hash or checkpoint can still be read."""
    keys = store.keys
    client: Any = store.client
    pipe = client.pipeline(transaction=False)
    for v in range(1, version):
        pipe.exists(keys.version(model_id, v), keys.checkpoint(model_id, v))
    found = [v for v, n in zip(range(1, version), pipe.execute(), strict=True) if n]
    listed = [int(v) for v in client.zrange(keys.versions(model_id), 0, -1)]
    listed += store.checkpoints.versions(model_id)
    return sorted(set(found) | {v for v in listed if v < version})


def _erased_training(store: Store, model_id: str, version: int) -> bool | None:
    """Whether the publication of ``version`` erased training records, when the metadata
    tells (``deleted_since_fit`` grew from its parent's); None when it cannot."""
    try:
        meta = store.models.metadata(model_id, version)
        parent = store.models.metadata(model_id, version - 1)
    except PipelineError:
        return None
    if meta.method == "retrain" or "deleted_since_fit" not in meta.extra:
        return None
    return int(meta.extra["deleted_since_fit"]) > int(parent.extra.get("deleted_since_fit", 0))


class _ErasureAudit:
    """The erasure checks of one request, model by model."""

    def __init__(
        self,
        store: Store,
        request_id: str,
        requests: list[DeletionRequested],
        topics: BrokerView | None,
        known: Mapping[str, list[StoredRecord]],
        orphans: Mapping[str, list[str]],
    ) -> None:
        self.store = store
        self.request_id = request_id
        self.requests = requests
        self.topics = topics
        self.known = dict(known)  # records already read, by model
        self.orphans = dict(orphans)  # ids of features stored but not held, by model
        self.findings: list[Finding] = []
        seen: Any = store.client.get(store.keys.request_seen(request_id))
        self.seen_at = None if seen is None else float(seen)

    def add(self, model_id: str, check: str, ok: bool | None, detail: str) -> None:
        self.findings.append(Finding(check, ok, detail, model_id))

    @property
    def subjects(self) -> set[str]:
        return {r.subject_id for r in self.requests if r.subject_id is not None}

    @property
    def record_ids(self) -> set[str]:
        return {rid for r in self.requests for rid in (r.record_ids or ())}

    def _scopes(self, req: DeletionRequested, model_id: str) -> list[str]:
        """The suppression scopes of a request that cover ``model_id``."""
        if req.model_ids is None:
            return ["*"]
        return [model_id] if model_id in req.model_ids else []

    def learnable_after(self, model_id: str) -> float | None:
        """From when a record of the request may be learned again by ``model_id``: the
        instant the request was first processed, or the last lift of an objection after it;
        None while an objection of the request's subject holds (never)."""
        if self.seen_at is None:
            return None
        after = self.seen_at
        client: Any = self.store.client
        keys = self.store.keys
        for req in self.requests:
            if req.subject_id is None:
                continue
            token = subject_token(req.subject_id)
            for scope in self._scopes(req, model_id):
                if client.exists(keys.suppression("o", token, scope)):
                    return None
                lift = client.hget(keys.suppression("s", token, scope), "lift")
                if lift is not None:
                    after = max(after, float(lift))
        return after

    def new_data(self, model_id: str, record_id: str) -> bool:
        """The records topic shows this held record was produced when the request allowed
        it to be learned again (after it, and after any objection of it was lifted)."""
        if self.topics is None:
            return False
        last = self.topics.records.get(record_key(model_id, record_id))
        after = self.learnable_after(model_id)
        if last is None or last[0] is None or after is None:
            return False
        produced = produced_at(last[0], last[1])
        return produced is not None and produced > after

    def model(self, receipt: Receipt) -> None:
        model_id = receipt.model_id
        status = receipt.status
        if status is ReceiptStatus.REJECTED:
            self.add(model_id, "receipt", None, f"rejected: {receipt.reason}")
            return
        if not status.final:
            self.add(
                model_id,
                "receipt",
                False,
                f"not applied yet (status {status.value}, due {receipt.due_at.isoformat()})",
            )
            return
        self.add(
            model_id,
            "receipt",
            True,
            f"{status.value} in v{receipt.version}, {receipt.n_records} records",
        )
        if status is not ReceiptStatus.ALREADY_ABSENT and receipt.version is not None:
            self.retired(model_id, receipt.version)
        if self.requests:
            self.absent(model_id)
            self.suppressed(model_id)
            if self.topics is not None:
                self.tombstoned(model_id)

    def retired(self, model_id: str, version: int) -> None:
        readable = _readable_before(self.store, model_id, version)
        if not readable:
            self.add(
                model_id,
                "earlier_versions_retired",
                True,
                f"no version before v{version} can be read",
            )
            return
        erased = _erased_training(self.store, model_id, version)
        if erased is False:
            self.add(
                model_id,
                "earlier_versions_retired",
                True,
                f"v{version} erased no training record (holdout rows or records never "
                f"learned only), so versions {readable} never held the request's data",
            )
            return
        self.add(
            model_id,
            "earlier_versions_retired",
            False,
            f"versions {readable} predate v{version}, which erased the request's training "
            "records, and can still be read (an erasure retires them: restored from a "
            "backup?)",
        )

    def absent(self, model_id: str) -> None:
        store, keys = self.store, self.store.keys
        held = store.records.ids(model_id)
        holdout = load_holdout(store, model_id)
        checkpoints = _checkpoint_ids(store, model_id)
        problems: list[str] = []
        relearned: list[str] = []

        def still_there(rid: str, where: str) -> None:
            if self.new_data(model_id, rid):
                relearned.append(rid)
            else:
                problems.append(f"record {rid!r} is in {where}")

        checked = 0
        for rid in sorted(self.record_ids):
            checked += 1
            exists = bool(store.client.exists(keys.record(model_id, rid)))
            if rid in held or exists:
                still_there(rid, "the records (features stored)" if exists else "the record set")
            elif holdout is not None and rid in holdout.ids:
                problems.append(f"record {rid!r} is in the holdout")
            for v, ids in checkpoints.items():
                if rid in ids and rid not in held:
                    problems.append(f"record {rid!r} is in the checkpoint of v{v}")
        for subject in sorted(self.subjects):
            checked += 1
            indexed = store.records.subject_record_ids(model_id, subject)
            by_field = [r.record_id for r in self.records(model_id) if r.subject_id == subject]
            for rid in sorted(indexed | set(by_field)):
                still_there(rid, "the records of the erased subject")
            for rid in sorted(self.orphan_ids(model_id, subject)):
                problems.append(f"features of record {rid!r} of the erased subject are stored")
            if holdout is not None and subject_token(subject) in holdout.tokens:
                problems.append("the subject has rows in the holdout")
        named = ["the subject's records"] if self.subjects else []
        named += [f"the {len(self.record_ids)} named record(s)"] if self.record_ids else []
        detail = (
            f"{' and '.join(named)} are absent from the records, the subject index, the "
            "holdout and every kept checkpoint"
        )
        if relearned:
            detail += f"; {len(relearned)} held again were produced after the request (new data)"
        if problems:
            detail = "; ".join(sorted(set(problems))[:5]) + (
                f" (and {len(set(problems)) - 5} more)" if len(set(problems)) > 5 else ""
            )
            if self.topics is None:
                detail += (
                    "; if this is new data given after the request, audit with the broker "
                    "(bootstrap=..., or `unlearn audit` without --no-broker) to date it"
                )
        self.add(model_id, "absent", not problems if checked else None, detail)

    def orphan_ids(self, model_id: str, subject: str) -> list[str]:
        """Stored features of records the model does not hold, of this subject."""
        if model_id not in self.orphans:
            held = self.store.records.ids(model_id)
            self.orphans[model_id] = find_orphans(self.store, model_id, held)
        found = self.orphans[model_id]
        if not found:
            return []
        subjects = read_subjects(self.store.client, self.store.keys, model_id, found)
        return [rid for rid, s in zip(found, subjects, strict=True) if s == subject]

    def records(self, model_id: str) -> list[StoredRecord]:
        """The records a model holds (read once)."""
        if model_id not in self.known:
            ids = sorted(self.store.records.ids(model_id))
            self.known[model_id] = read_records(self.store, model_id, ids)[0]
        return self.known[model_id]

    def suppressed(self, model_id: str) -> None:
        keys = self.store.keys
        client: Any = self.store.client
        missing = 0
        for req in self.requests:
            wanted = [("s", req.subject_id)] if req.subject_id is not None else []
            wanted += [("r", rid) for rid in req.record_ids or ()]
            for scope in self._scopes(req, model_id):
                for kind, value in wanted:
                    key = keys.suppression(kind, subject_token(value), scope)
                    if not client.hexists(key, req.request_id):
                        missing += 1
        self.add(
            model_id,
            "suppressed",
            missing == 0,
            "the request's suppression entries are held: data produced before it is not "
            "learned again"
            if missing == 0
            else f"{missing} suppression entries of the request are missing: a backlogged "
            "record of it could be learned again",
        )

    def tombstoned(self, model_id: str) -> None:
        assert self.topics is not None
        keys: set[bytes] = {record_key(model_id, rid) for rid in self.record_ids}
        prefix = record_key(model_id, "")
        for key, (_value, _ts, subjects) in self.topics.records.items():
            if key.startswith(prefix) and subjects & self.subjects:
                keys.add(key)
        pending = set(self.store.records.unsent_tombstones(model_id))
        open_keys: list[str] = []
        waiting = 0
        for key in sorted(keys):
            last = self.topics.records.get(key)
            rid = key[len(prefix) :].decode()
            if last is None or last[0] is None:
                continue  # never on the topic (trained from a file), or tombstoned
            if self.new_data(model_id, rid):
                continue
            if rid in pending:
                waiting += 1
            open_keys.append(rid)
        on_topic = [k for k in keys if k in self.topics.records]
        detail = (
            f"the last message of each of the request's {len(on_topic)} record keys on the "
            "records topic is a tombstone (or new data)"
            if on_topic
            else "none of the request's records is on the records topic (records loaded by "
            "`unlearn train` never are): nothing left to tombstone"
        )
        if open_keys:
            detail = (
                f"{len(open_keys)} erased records still have their features as the last "
                f"message on the records topic: {first_few(open_keys)}"
                + (
                    f" ({waiting} awaiting the worker's next batch)"
                    if waiting
                    else " (and none awaits a resend)"
                )
            )
        self.add(model_id, "tombstoned", not open_keys, detail)


def erasure_part(
    store: Store,
    request_id: str,
    snap: Snapshot,
    orphans: Mapping[str, list[str]],
    *,
    request: DeletionRequested | None,
    bootstrap: str | None,
    topics: Topics,
    kafka_config: Mapping[str, Any] | None,
) -> PartReport:
    receipts = store.receipts.get(request_id)
    if not receipts:
        raise UnknownRequest(request_id)
    models = {r.model_id for r in receipts}
    seen = None
    if bootstrap is not None:
        seen = read_topics(bootstrap, topics, request_id, models, kafka_config or {})
    requests = [request] if request is not None else list(seen.requests if seen else [])
    requests = [r for r in requests if r.request_id == request_id]
    checks = _ErasureAudit(
        store, request_id, requests, seen, {snap.model_id: snap.records}, orphans
    )
    if request is None and bootstrap is None:
        checks.findings.append(
            Finding(
                "request_event",
                None,
                "the request's subject and record ids are on unlearn.deletions, not in Redis: "
                "give the broker to check that they are absent and tombstoned",
            )
        )
    elif not requests:
        checks.findings.append(
            Finding(
                "request_event",
                None,
                f"no DeletionRequested of {request_id!r} on {topics.deletions} (kept 400 "
                "days): its ids cannot be checked",
            )
        )
    for receipt in receipts:
        checks.model(receipt)
    figures = {
        "models": sorted(models),
        "statuses": {r.model_id: r.status.value for r in receipts},
        "request_event_found": bool(requests),
        "broker": bootstrap is not None,
    }
    return PartReport("erasure", tuple(checks.findings), figures)

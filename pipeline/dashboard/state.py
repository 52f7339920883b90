"""What the status page reads from Redis: models over their versions, open deletions, audits.

Every read goes through the store's own readers (:class:`~pipeline.store.ModelRegistry`,
:class:`~pipeline.store.ReceiptStore`, :func:`pipeline.audit.latest_report`) and
:class:`~pipeline.store.keys.KeySpace`; no key is spelled here. What leaves this module is
JSON for the page, and it never carries a subject id, a record id or a feature:

* :func:`models_state`: per model, the current version and its history (records,
  certificate against budget, holdout score overall and per class, how each version was
  made and, for a merged refit, why), the retrain in flight, the open deletions and the
  oldest one's age against the legal deadline, and the verdicts of the last stored audit;
* :func:`workers_state`: the workers' status keys (pid, metrics port, partitions);
* :func:`receipts_of_request` and :func:`receipts_of_subject`: "is this person
  forgotten, in which version, with what guarantee". A subject is looked up by its token
  (:func:`~pipeline.store.keys.subject_token`, SHA-256), which the page computes in the
  browser: the subject id itself never reaches the server. The token finds the requests
  that named the subject through its suppression entries (``{zs:<token>}:supp:<scope>``,
  request id -> instant, written before any of the requests' receipts could be final),
  and each request's receipts through the request index.
"""

from __future__ import annotations

import json
import re
import time
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pipeline.errors import PipelineError
from pipeline.events import Receipt

if TYPE_CHECKING:
    from pipeline.store import Store

__all__ = [
    "HISTORY_LIMIT",
    "models_state",
    "receipts_of_request",
    "receipts_of_subject",
    "workers_state",
]

HISTORY_LIMIT = 200
"""Newest versions per model plotted (the store keeps ``UNLEARN_KEEP_VERSIONS``)."""

_TOKEN = re.compile(r"^[0-9a-f]{32}$")
_SCOPE_ALL = "*"  # a request that named no model suppresses in every model
_LIFT = b"lift"  # the field of a suppression entry that is an instant, not a request id


def _version_row(meta: Any) -> dict[str, Any]:
    from pipeline.training import class_scores
    from pipeline.unlearning.kinds import kind_named

    score_name = kind_named(meta.kind).score
    retrain = meta.extra.get("retrain") if meta.method == "retrain" else None
    return {
        "version": meta.version,
        "method": meta.method,
        "n_records": meta.n_records,
        "certificate": meta.certificate,
        "budget": meta.budget,
        "score_name": score_name,
        "score": meta.holdout_metrics.get(score_name),
        "class_scores": class_scores(meta.holdout_metrics),
        "created_at": meta.created_at.timestamp(),
        "retrain_reason": retrain.get("reason") if isinstance(retrain, dict) else None,
    }


def _audit(store: Store, model_id: str) -> dict[str, Any] | None:
    from pipeline.audit import latest_report

    try:
        report = latest_report(store, model_id)
    except (PipelineError, ValueError, KeyError):  # unreadable: shown as such
        return {"error": "the stored audit report cannot be read"}
    if report is None:
        return None
    return {
        "version": report.version,
        "verdict": report.verdict,
        "audited_at": report.audited_at.timestamp(),
        "request_audited": report.request_id is not None,
        # verdicts and check names only: a finding's detail may name a record id
        "parts": [
            {
                "part": p.part,
                "verdict": p.verdict,
                "failed": sorted({f.check for f in p.findings if f.ok is False}),
            }
            for p in report.parts
        ],
    }


def models_state(store: Store, legal_deadline_s: float) -> list[dict[str, Any]]:
    """Every model's state for the page (see the module docstring), sorted by id."""
    from pipeline.retraining import Retraining

    retraining = Retraining(store)
    now = time.time()
    out = []
    for model_id in store.models.models():
        history = store.models.history(model_id, HISTORY_LIMIT)
        if not history:  # being created, or retired meanwhile: next refresh
            continue
        current = history[0]
        pending = store.receipts.pending(model_id)
        oldest = pending[0][1].timestamp() if pending else None
        flight = retraining.in_flight(model_id)
        out.append(
            {
                "model_id": model_id,
                "kind": current.kind,
                "current": _version_row(current),
                "versions": [_version_row(m) for m in reversed(history)],
                "retrain_in_flight": None
                if flight is None
                else {
                    "reason": flight.get("reason"),
                    "progress": float(flight.get("progress", 0.0)),
                },
                "pending": len(pending),
                "oldest_pending_age_s": None if oldest is None else max(0.0, now - oldest),
                "legal_deadline_s": legal_deadline_s,
                "audit": _audit(store, model_id),
            }
        )
    return out


def workers_state(store: Store) -> list[dict[str, Any]]:
    """The running workers, from their status keys (which expire 30 s after the last)."""
    client: Any = store.client
    out = []
    for key in client.scan_iter(match=store.keys.worker("*")):
        raw = client.get(key)
        if raw is None:  # expired between the scan and the read
            continue
        status = json.loads(raw)
        name = key.decode().rsplit(":", 1)[-1]
        out.append(
            {
                "name": name,
                "pid": status.get("pid"),
                "metrics_port": status.get("metrics_port"),
                "assigned_partitions": status.get("assigned_partitions"),
                "updated_at": status.get("updated_at"),
            }
        )
    return sorted(out, key=lambda w: str(w["name"]))


def _receipt_row(r: Receipt) -> dict[str, Any]:
    def ts(moment: datetime | None) -> float | None:
        return None if moment is None else moment.timestamp()

    return {
        "request_id": r.request_id,
        "model_id": r.model_id,
        "status": r.status.value,
        "final": r.status.final,
        "version": r.version,
        "method": r.method,
        "n_records": r.n_records,
        "certificate": r.certificate,
        "budget": r.budget,
        "received_at": ts(r.received_at),
        "completed_at": ts(r.completed_at),
        "due_at": ts(r.due_at),
        "overdue": not r.status.final and r.due_at < datetime.now(UTC),
    }


def receipts_of_request(store: Store, request_id: str) -> list[dict[str, Any]]:
    """Every model's receipt of one deletion request (empty: unknown, or not yet seen)."""
    return [_receipt_row(r) for r in store.receipts.get(request_id)]


def receipts_of_subject(store: Store, token: str) -> list[dict[str, Any]]:
    """The receipts of every request that named the subject whose token is ``token``.

    Parameters
    ----------
    token : str
        :func:`~pipeline.store.keys.subject_token` of the subject id: 32 lowercase hex.

    Raises
    ------
    InvalidInput
        ``token`` is not 32 lowercase hex characters.
    """
    from pipeline.errors import InvalidInput

    if not _TOKEN.match(token):
        msg = f"subject token {token[:40]!r} is not 32 lowercase hex characters (SHA-256)"
        raise InvalidInput(msg)
    client: Any = store.client
    scopes = [_SCOPE_ALL, *store.models.models()]
    pipe = client.pipeline(transaction=False)  # one entry per scope, each its own slot
    for scope in scopes:
        pipe.hkeys(store.keys.suppression("s", token, scope))
    request_ids = sorted(
        {field.decode() for fields in pipe.execute() for field in fields if field != _LIFT}
    )
    rows = [row for rid in request_ids for row in receipts_of_request(store, rid)]
    return sorted(rows, key=lambda r: (r["received_at"] or 0.0, r["model_id"]))

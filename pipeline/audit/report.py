"""The audit's report: findings, a verdict per part and overall, stored with the version.

A :class:`Finding` is one check (passed, failed, or not checked); a :class:`PartReport`
groups a part's findings and figures; an :class:`AuditReport` is the parts of one audit of
one version. Reports are stored as JSON in the model's ``audits`` hash, one field per held
version (``KeySpace.audits``); the reader role may read them (:mod:`pipeline.store.access`).
Reports never name a subject, and name a record id only where the audit found it still held.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from pipeline.errors import InvalidInput, PipelineError

if TYPE_CHECKING:
    from pipeline.store.facade import Store

__all__ = [
    "PARTS",
    "AuditReport",
    "Finding",
    "PartReport",
    "UnknownRequest",
    "Verdict",
    "latest_report",
    "load_report",
    "save_report",
]

Verdict = Literal["pass", "fail", "skipped"]
PARTS = ("certificate", "integrity", "erasure", "membership", "disparity")


class UnknownRequest(PipelineError):
    """A request id with no receipt: never received, or its receipts expired."""

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        msg = (
            f"no receipt of request {request_id!r}: it was never received, or its receipts "
            "expired (UNLEARN_RECEIPT_RETENTION_DAYS); check the id, e.g. with "
            f"`unlearn receipt {request_id}`"
        )
        super().__init__(msg)


# -- the report -----------------------------------------------------------------------------
@dataclass(frozen=True)
class Finding:
    """One check: ``ok`` True (passed), False (failed) or None (could not be checked).

    ``model_id`` names the model an erasure check was about (a request spans models).
    """

    check: str
    ok: bool | None
    detail: str
    model_id: str | None = None

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"check": self.check, "ok": self.ok, "detail": self.detail}
        if self.model_id is not None:
            out["model_id"] = self.model_id
        return out


@dataclass(frozen=True)
class PartReport:
    """The findings and figures of one part of an audit.

    The verdict is ``"fail"`` if any finding failed, ``"pass"`` if at least one passed and
    none failed, ``"skipped"`` when nothing could be checked.
    """

    part: str
    findings: tuple[Finding, ...] = ()
    figures: dict[str, Any] = field(default_factory=dict)

    @property
    def verdict(self) -> Verdict:
        return combine(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "verdict": self.verdict,
            "findings": [f.to_dict() for f in self.findings],
            "figures": jsonable(self.figures),
        }


def combine(oks: Iterable[bool | None]) -> Verdict:
    values = list(oks)
    if any(v is False for v in values):
        return "fail"
    return "pass" if any(v is True for v in values) else "skipped"


@dataclass(frozen=True)
class AuditReport:
    """An audit of one model version (and, optionally, one deletion request).

    Attributes
    ----------
    model_id, version : str, int
        The version audited (the current one when the audit started).
    audited_at : datetime
    request_id : str or None
    parts : tuple of PartReport
        ``certificate``, ``integrity``, ``erasure``, ``membership``.
    seconds : float
        How long the audit took.
    """

    model_id: str
    version: int
    audited_at: datetime
    parts: tuple[PartReport, ...]
    request_id: str | None = None
    seconds: float = 0.0

    @property
    def verdict(self) -> Verdict:
        """``"fail"`` if any part failed, ``"pass"`` if one passed and none failed."""
        verdicts = [p.verdict for p in self.parts]
        if "fail" in verdicts:
            return "fail"
        return "pass" if "pass" in verdicts else "skipped"

    def part(self, name: str) -> PartReport:
        """The part called ``name`` (one of :data:`PARTS`)."""
        for p in self.parts:
            if p.part == name:
                return p
        msg = f"no audit part {name!r}: the parts are {[p.part for p in self.parts]}"
        raise InvalidInput(msg)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_id": self.model_id,
            "version": self.version,
            "request_id": self.request_id,
            "audited_at": self.audited_at.isoformat(),
            "seconds": self.seconds,
            "verdict": self.verdict,
            "parts": [p.to_dict() for p in self.parts],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), allow_nan=False)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AuditReport:
        """Inverse of :meth:`to_dict` (verdicts are recomputed from the findings)."""
        parts = tuple(
            PartReport(
                part=p["part"],
                findings=tuple(
                    Finding(f["check"], f["ok"], f["detail"], f.get("model_id"))
                    for f in p["findings"]
                ),
                figures=dict(p.get("figures", {})),
            )
            for p in data["parts"]
        )
        return cls(
            model_id=data["model_id"],
            version=int(data["version"]),
            audited_at=datetime.fromisoformat(data["audited_at"]),
            parts=parts,
            request_id=data.get("request_id"),
            seconds=float(data.get("seconds", 0.0)),
        )


def jsonable(value: Any) -> Any:
    """Figures as JSON: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [jsonable(v) for v in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def first_few(items: Iterable[str], k: int = 3) -> str:
    listed = sorted(items)
    shown = ", ".join(repr(i) for i in listed[:k])
    return shown + (f" and {len(listed) - k} more" if len(listed) > k else "")


def save_report(store: Store, report: AuditReport) -> None:
    """Store the report under its version; drop reports of versions no longer held."""
    key = store.keys.audits(report.model_id)
    client: Any = store.client
    held = {int(v) for v in client.zrange(store.keys.versions(report.model_id), 0, -1)}
    stale = [f for f in client.hkeys(key) if int(f) not in held and int(f) != report.version]
    pipe = client.pipeline(transaction=True)
    pipe.hset(key, str(report.version), report.to_json())
    if stale:
        pipe.hdel(key, *stale)
    pipe.execute()


def load_report(store: Store, model_id: str, version: int) -> AuditReport | None:
    """The last audit report stored for a version, or None."""
    raw: Any = store.client.hget(store.keys.audits(model_id), str(int(version)))
    return None if raw is None else AuditReport.from_dict(json.loads(raw))


def latest_report(store: Store, model_id: str) -> AuditReport | None:
    """The report of the newest audited version of a model, or None.

    One ``HGETALL`` (a report per held version): a command the reader role may send.
    """
    raw: Any = store.client.hgetall(store.keys.audits(model_id))
    if not raw:
        return None
    newest = max(raw, key=int)
    return AuditReport.from_dict(json.loads(raw[newest]))

r"""An independent audit of a published model: did forgetting work, and is the model what it says?

A privacy officer, an auditor or a regulator asks for evidence, not for a number the pipeline
wrote about itself. :func:`audit` reads what is stored (Redis, and the broker's topics for the
request's audit trail and the tombstones), never the worker's in-memory engine, recomputes
what can be recomputed and compares it with what the pipeline recorded. It returns an
:class:`AuditReport` with a verdict per part and overall, stores the report's JSON with the
version (``KeySpace.audits``) and is what ``unlearn audit MODEL [--request ID]`` prints.

Parts
-----
``certificate``
    Guo, Goldstein, Hannun and van der Maaten, "Certified Data Removal from Machine Learning
    Models" (ICML 2020), Theorem 3: a released model :math:`w^-` is
    :math:`(\epsilon, \delta)`-certified when the gradient residual of the perturbed objective
    on the data it holds, :math:`u = \nabla L_b(w^-; D')`, has
    :math:`\lVert u\rVert \le \epsilon' = \sigma\epsilon / \sqrt{2 \ln(1.5/\delta)}`. The
    audit recomputes :math:`u` from the stored records :math:`(x_i, y_i)`, the *published*
    coefficients and the objective's parameters saved in the version's checkpoint
    (:math:`\lambda`, b, ``fit_intercept``, the one-vs-rest classes): for each problem k,

    .. math::

        u_k = \sum_i -y_{ik}\,\sigma(-y_{ik}\,\tilde x_i^\top w_k)\,\tilde x_i
              + \lambda n\, w_k + b_k, \qquad \text{residual} = \sum_k \lVert u_k\rVert

    (:func:`pipeline.unlearning.loss.gradient`; :math:`\tilde x_i` is :math:`x_i` with a 1
    appended when the model fits an intercept; one-vs-rest sums the K norms, as the engine
    does). The recorded certificate must be an upper bound of it, up to round-off: each
    coordinate of :math:`u_k` sums :math:`N = n + d + 2` terms, so two evaluations in
    float64 differ by at most :math:`2\gamma_N S_k`, with
    :math:`S_k = \sum_i |r_{ik}|\,\lVert\tilde x_i\rVert + \lambda n \lVert w_k\rVert
    + \lVert b_k\rVert` and :math:`\gamma_N = N u / (1 - N u)` (Higham, *Accuracy and
    Stability of Numerical Algorithms*, sec. 3.1). The recorded certificate must also be
    within the budget recomputed from the checkpoint's :math:`\sigma, \epsilon, \delta`.
    Ridge: :math:`u = \tilde X^\top(\tilde X w - y) + \alpha P w + b` (P leaves the
    intercept unpenalised); its recorded certificate is the residual of the normal equations
    kept in memory, so the allowance also covers the round-off of the accumulated
    :math:`\tilde X^\top \tilde X` and :math:`\tilde X^\top y`.

``integrity``
    The published coefficients equal the coefficients in the checkpoint saved with that
    version, bit for bit (a coefficient changed after publication shows here, and in the
    certificate); the version's ``n_records`` equals the records held, the checkpoint's
    record ids are exactly the held ids, every held id has its features and a label of the
    model's classes, and no features are stored for a record the model does not hold (a
    ``SCAN`` of the model's record keys: it walks the whole keyspace).

``erasure`` (with a request id)
    For every model the request concerns (its receipts): the receipt is final; no version
    older than the receipt's version can be read when that version erased training records
    (the publication retires them all; see below); and, when the request is known (its
    ``DeletionRequested`` event, read from ``unlearn.deletions`` when a broker is given, or
    passed in), each record id it names and each record of its subject is absent from the
    records, the subject index, the holdout and every kept checkpoint's id list, the
    request's suppression entries are held, and on the compacted ``unlearn.records`` topic
    the last message of each erased record's key (``model/record``,
    :func:`pipeline.topics.record_key`) is a tombstone. A record of the subject (or with a
    named id) that is held again is accepted only when the records topic shows it was
    produced after the request was first processed and after the last lift of an objection
    of it (new data, which the pipeline learns); while the objection holds, never. Without
    the broker such a record cannot be dated and the check fails.

``membership`` (only where the erased features are still known: tests and benchmarks)
    The loss-threshold membership-inference attack of Yeom, Giacomelli, Fredrikson and Jha,
    "Privacy Risk in Machine Learning: Analyzing the Connection to Overfitting" (CSF 2018):
    the adversary calls a record a member when its loss is below a threshold :math:`\tau`;
    over all thresholds its ROC AUC at separating the erased records E from never-seen
    records U is

    .. math::

        \mathrm{AUC} = P\bigl(\ell(w; e) < \ell(w; u)\bigr)
                       + \tfrac12 P\bigl(\ell(w; e) = \ell(w; u)\bigr),
        \qquad e \in E,\ u \in U,

    the Mann-Whitney statistic :math:`U / (|E|\,|U|)` (:func:`loss_threshold_auc`). The
    erased records must look no more "member" under the published model than under a model
    refitted from scratch on the held records with the same objective and b:
    :math:`\mathrm{AUC}_{\rm published} - \mathrm{AUC}_{\rm retrained} \le` ``tolerance``
    (0.02 by default). **Limitation:** the pipeline deletes the erased records' features,
    so a live model cannot be audited this way; :func:`membership` takes the arrays, and
    tests and benchmarks call it (``audit(..., erased=(X, y))`` adds it to a report). The
    per-example likelihood-ratio attack (LiRA, Carlini et al. 2022) is not implemented.

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
Reports never name a subject, and name a record id only where the audit found it still held.

Also here, the feature-injection test of Izzo, Smart, Chaudhuri and Zou, "Approximate Data
Deletion from Machine Learning Models" (AISTATS 2021): :func:`feature_injection`.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Hashable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy.stats import rankdata

from pipeline.errors import InvalidInput, PipelineError, UnknownModel
from pipeline.events import DeletionRequested, Receipt, ReceiptStatus, RecordAdded, decode_event
from pipeline.store.codec import StateValue, decode_state
from pipeline.store.keys import subject_token
from pipeline.store.models import UnknownVersion
from pipeline.store.records import StoredRecord, read_subjects
from pipeline.store.versions import ModelVersion
from pipeline.topics import Topics, record_key
from pipeline.training import Holdout, load_holdout
from pipeline.unlearning import LogisticUnlearner, RidgeUnlearner, certify
from pipeline.unlearning.base import decode_ids
from pipeline.unlearning.loss import class_probabilities, gradient, gradient_terms

if TYPE_CHECKING:
    from pipeline.metrics import Metrics
    from pipeline.store.facade import Store

__all__ = [
    "PARTS",
    "AuditReport",
    "Finding",
    "InjectionResult",
    "LinearModel",
    "PartReport",
    "Residual",
    "UnknownRequest",
    "audit",
    "feature_injection",
    "inject_feature",
    "latest_report",
    "load_report",
    "loss_threshold_auc",
    "membership",
    "membership_from_store",
    "recompute_residual",
]

Array = NDArray[np.float64]
Verdict = Literal["pass", "fail", "skipped"]
PARTS = ("certificate", "integrity", "erasure", "membership")
MEMBERSHIP_TOLERANCE = 0.02
"""How much more "member" the erased records may look under the published model than
under a retrained one (AUC points): the issue's target."""
_CHUNK = 1000
_SNAPSHOT_TRIES = 5
_TOPIC_TIMEOUT = 120.0


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
        return _combine(f.ok for f in self.findings)

    @property
    def failures(self) -> list[Finding]:
        return [f for f in self.findings if f.ok is False]

    def to_dict(self) -> dict[str, Any]:
        return {
            "part": self.part,
            "verdict": self.verdict,
            "findings": [f.to_dict() for f in self.findings],
            "figures": _jsonable(self.figures),
        }


def _combine(oks: Iterable[bool | None]) -> Verdict:
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


def _jsonable(value: Any) -> Any:
    """Figures as JSON: numpy scalars to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [_jsonable(v) for v in list(value)]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


# -- reading one consistent state -----------------------------------------------------------
@dataclass
class _Snapshot:
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


def _read_records(store: Store, model_id: str, ids: Sequence[str]) -> tuple[list, list[str]]:
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


def _snapshot(store: Store, model_id: str) -> _Snapshot:
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
        records, missing = _read_records(store, model_id, ids)
        holdout = load_holdout(store, model_id)
        if store.models.current_version(model_id) == current:
            return _Snapshot(version, state, ids, records, missing, holdout)
    msg = (
        f"model {model_id!r} kept publishing new versions while the audit read it "
        f"({_SNAPSHOT_TRIES} tries): run the audit again when its worker is less busy"
    )
    raise PipelineError(msg)


# -- the certificate ------------------------------------------------------------------------
@dataclass(frozen=True)
class Residual:
    """The recomputed gradient residual, per problem, and its round-off allowance."""

    norms: Array
    tolerance: Array

    @property
    def total(self) -> float:
        return float(self.norms.sum())

    @property
    def total_tolerance(self) -> float:
        return float(self.tolerance.sum())


def _gamma(n_terms: float) -> float:
    """Higham's :math:`\\gamma_N = N u / (1 - N u)` for a sum of N float64 terms."""
    nu = float(n_terms) * certify.UNIT_ROUNDOFF
    return nu / max(1.0 - nu, 0.5)


def _state_float(state: Mapping[str, StateValue], name: str) -> float:
    value = state.get(name)
    if not isinstance(value, int | float):
        msg = f"checkpoint has no number {name!r} (found {value!r}): not written by this engine"
        raise InvalidInput(msg)
    return float(value)


def _classes(state: Mapping[str, StateValue]) -> list[Any]:
    return list(json.loads(str(state["classes_json"])))


def _label_index(labels: Sequence[Any], classes: Sequence[Any]) -> NDArray[np.int64]:
    """Index of each label in ``classes``; raises :class:`InvalidInput` for another label."""
    where = {c: i for i, c in enumerate(classes)}
    out = np.empty(len(labels), dtype=np.int64)
    for i, label in enumerate(labels):
        k = where.get(label)
        if k is None:
            msg = f"label {label!r} is not one of the model's classes {list(classes)!r}"
            raise InvalidInput(msg)
        out[i] = k
    return out


def _stacked(coef: Array, intercept: Array, fit_intercept: bool) -> Array:
    """Published coefficients as the engine's ``W`` of shape (K, d + fit_intercept)."""
    W = np.atleast_2d(np.asarray(coef, dtype=np.float64))
    if fit_intercept:
        W = np.hstack([W, np.asarray(intercept, dtype=np.float64).reshape(-1, 1)])
    return W


def recompute_residual(
    state: Mapping[str, StateValue],
    coef: ArrayLike,
    intercept: ArrayLike,
    X: ArrayLike,
    labels: Sequence[Any],
) -> Residual:
    r"""The gradient residual of the perturbed objective at ``coef``, from the records.

    Parameters
    ----------
    state : mapping
        An engine checkpoint (``state_dict()``): only the objective's parameters are read
        (``kind``, ``lam`` or ``alpha``, ``fit_intercept``, ``classes_json``, b as ``B`` or
        ``b``, and for ridge the counts behind the round-off allowance), never the cached
        curvature, weights or certificate.
    coef, intercept : array_like
        The coefficients to certify (the published ones), shapes as a published version.
    X : array_like of shape (n, d)
        The records held, as stored.
    labels : sequence
        Their labels (class labels for logistic, targets for ridge).

    Returns
    -------
    Residual
        :math:`\lVert u_k\rVert` per problem (one for binary logistic and ridge) and its
        round-off allowance (see the module docstring).

    Raises
    ------
    InvalidInput
        A label is not one of the checkpoint's classes, or shapes do not match.
    """
    kind = state.get("kind")
    fit_intercept = bool(state["fit_intercept"])
    Xr = np.asarray(X, dtype=np.float64).reshape(len(labels), -1)
    n = Xr.shape[0]
    Xa = np.hstack([Xr, np.ones((n, 1))]) if fit_intercept else Xr
    row_norms = np.linalg.norm(Xa, axis=1)
    width = Xa.shape[1]
    if kind == "logistic":
        lam = _state_float(state, "lam")
        classes = _classes(state)
        K = 1 if len(classes) == 2 else len(classes)
        B = np.asarray(state["B"], dtype=np.float64).reshape(K, width)
        W = _stacked(np.asarray(coef, dtype=np.float64), np.asarray(intercept), fit_intercept)
        if W.shape != B.shape:
            msg = f"coefficients of shape {W.shape} do not fit the checkpoint's b {B.shape}"
            raise InvalidInput(msg)
        idx = _label_index(labels, classes)
        if K == 1:
            Y = np.where(idx == 1, 1.0, -1.0)[:, None]
        else:
            Y = np.where(idx[:, None] == np.arange(K)[None, :], 1.0, -1.0)
        G = gradient(Xa, Y, W, B, lam)
        R = gradient_terms(Xa @ W.T, Y)
        S = (
            np.abs(R).T @ row_norms
            + lam * n * np.linalg.norm(W, axis=1)
            + np.linalg.norm(B, axis=1)
        )
        tol = 2.0 * _gamma(n + width + 2) * S
        return Residual(np.linalg.norm(G, axis=1), tol)
    if kind == "ridge":
        alpha = _state_float(state, "alpha")
        b = np.asarray(state["b"], dtype=np.float64).reshape(width)
        w = _stacked(np.asarray(coef, dtype=np.float64), np.asarray(intercept), fit_intercept)[0]
        y = np.asarray(labels, dtype=np.float64)
        penalty = np.full(width, alpha)
        if fit_intercept:
            penalty[-1] = 0.0
        res = Xa @ w - y
        g = Xa.T @ res + penalty * w + b
        S = float(np.abs(res) @ row_norms + alpha * np.linalg.norm(w) + np.linalg.norm(b))
        # the recorded residual is of X'X and X'y accumulated over every addition and removal
        C = float(row_norms.max(initial=0.0))
        terms = _state_float(state, "n_appended") + len(
            decode_ids(str(state.get("forgotten_ids_json", "lines:")))
        )
        N = terms + width
        ymax = float(np.abs(y).max(initial=0.0))
        accumulated = N * C * C * float(np.linalg.norm(w)) + N * C * ymax
        tol = 2.0 * _gamma(N + n) * (S + accumulated)
        return Residual(np.array([np.linalg.norm(g)]), np.array([tol]))
    msg = f"checkpoint kind {kind!r} is not 'logistic' or 'ridge'"
    raise InvalidInput(msg)


def _budget_of(state: Mapping[str, StateValue]) -> float:
    return certify.budget(
        _state_float(state, "sigma"), _state_float(state, "epsilon"), _state_float(state, "delta")
    )


def _records_usable(snap: _Snapshot) -> tuple[Array, list[Any]] | None:
    """The held records' features and labels, or None if some are unreadable."""
    d = snap.version.metadata.n_features
    if snap.missing or any(r.features.shape != (d,) for r in snap.records):
        return None
    X = np.stack([r.features for r in snap.records]) if snap.records else np.empty((0, d))
    return X, [r.label for r in snap.records]


def _certificate_part(snap: _Snapshot) -> PartReport:
    meta = snap.version.metadata
    where = f"model {snap.model_id!r} v{meta.version}"
    if snap.federated:
        return PartReport(
            "certificate",
            (
                Finding(
                    "checkpoint",
                    None,
                    f"{where} is federated: its objective's state lives in the coordinating "
                    "worker's memory, not in a checkpoint, so the residual cannot be recomputed",
                ),
            ),
        )
    if snap.state is None:
        return PartReport(
            "certificate",
            (
                Finding(
                    "checkpoint",
                    False,
                    f"{where} has no engine checkpoint, so its objective (lambda, b) is "
                    "unknown and its certificate cannot be checked; every publication saves "
                    "one: it was deleted",
                ),
            ),
        )
    state = snap.state
    findings: list[Finding] = []
    budget = _budget_of(state)
    figures: dict[str, Any] = {
        "recorded_certificate": meta.certificate,
        "recorded_budget": meta.budget,
        "budget": budget,
        "n_records": len(snap.records),
        "kind": state.get("kind"),
    }
    if meta.budget is None or not math.isclose(meta.budget, budget, rel_tol=1e-12, abs_tol=0.0):
        findings.append(
            Finding(
                "budget",
                False,
                f"{where} records budget {meta.budget!r}, but the checkpoint's sigma, epsilon "
                f"and delta give {budget:.6g}",
            )
        )
    else:
        findings.append(
            Finding(
                "budget",
                True,
                f"recorded budget {budget:.6g} = sigma epsilon / sqrt(2 ln(1.5 / delta)) of "
                "the checkpoint's parameters",
            )
        )
    usable = _records_usable(snap)
    if usable is None:
        findings.append(
            Finding(
                "residual",
                None,
                "some held records are unreadable (see integrity): residual not recomputed",
            )
        )
        return PartReport("certificate", tuple(findings), figures)
    X, labels = usable
    if not labels:  # an emptied model: w = 0 depends on no record, certificate 0
        zero = not np.any(snap.version.coef) and not np.any(snap.version.intercept)
        findings.append(
            Finding(
                "empty_model",
                bool(zero and meta.certificate in (0.0, None)),
                "the model holds no record: its coefficients must be 0 and its certificate 0"
                + ("" if zero else f"; found non-zero coefficients in {where}"),
            )
        )
        return PartReport("certificate", tuple(findings), figures)
    try:
        residual = recompute_residual(state, snap.version.coef, snap.version.intercept, X, labels)
    except InvalidInput as exc:
        findings.append(Finding("residual", False, f"{where}: {exc}"))
        return PartReport("certificate", tuple(findings), figures)
    figures |= {
        "residual": residual.total,
        "residual_per_problem": residual.norms.tolist(),
        "roundoff_allowance": residual.total_tolerance,
    }
    recorded = meta.certificate
    if recorded is None:
        findings.append(Finding("upper_bound", None, f"{where} records no certificate"))
    else:
        bound = recorded + residual.total_tolerance
        findings.append(
            Finding(
                "upper_bound",
                residual.total <= bound,
                f"recomputed residual {residual.total:.6g} "
                + ("<=" if residual.total <= bound else ">")
                + f" recorded certificate {recorded:.6g} (+ round-off "
                f"{residual.total_tolerance:.2g})",
            )
        )
    if state.get("kind") == "ridge" and budget == 0.0:
        findings.append(
            Finding(
                "within_budget",
                None,
                "ridge without perturbation (sigma = 0): a removal re-solves the normal "
                "equations exactly; no (epsilon, delta) budget applies",
            )
        )
    elif budget == 0.0:
        findings.append(
            Finding(
                "within_budget",
                False,
                f"{where} has sigma = 0: certification is off, its removals carry no "
                "(epsilon, delta) guarantee (train with sigma > 0)",
            )
        )
    else:
        worst = max(residual.total, recorded or 0.0)
        findings.append(
            Finding(
                "within_budget",
                worst <= budget,
                f"certificate {worst:.6g} "
                + ("<=" if worst <= budget else ">")
                + f" budget {budget:.6g}",
            )
        )
    return PartReport("certificate", tuple(findings), figures)


# -- integrity ------------------------------------------------------------------------------
def _checkpoint_coefficients(state: Mapping[str, StateValue]) -> tuple[Array, Array]:
    """The coefficients a checkpoint holds, shaped as the published version's."""
    d = int(_state_float(state, "n_features_in"))
    fit_intercept = bool(state["fit_intercept"])
    if state.get("kind") == "logistic":
        W = np.asarray(state["W"], dtype=np.float64)
        K = W.shape[0]
        coef = W[0, :d] if K == 1 else W[:, :d]
        intercept = W[:, -1] if fit_intercept else np.zeros(K)
        return coef, intercept.reshape(()) if K == 1 else intercept
    w = np.asarray(state["w"], dtype=np.float64)
    return w[:d], np.asarray(float(w[-1]) if fit_intercept else 0.0)


def _orphans(store: Store, model_id: str, held: set[str]) -> list[str]:
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


def _first(items: Iterable[str], k: int = 3) -> str:
    listed = sorted(items)
    shown = ", ".join(repr(i) for i in listed[:k])
    return shown + (f" and {len(listed) - k} more" if len(listed) > k else "")


def _integrity_part(snap: _Snapshot, orphans: list[str]) -> PartReport:
    meta = snap.version.metadata
    where = f"model {snap.model_id!r} v{meta.version}"
    findings: list[Finding] = []
    held = set(snap.ids)
    figures: dict[str, Any] = {
        "n_records_recorded": meta.n_records,
        "n_records_held": len(snap.ids),
    }
    findings.append(
        Finding(
            "n_records",
            None if snap.federated else meta.n_records == len(snap.ids),
            f"{where} records n_records = {meta.n_records}; {len(snap.ids)} records are held"
            + (" (federated: the records stay with the clients)" if snap.federated else ""),
        )
    )
    findings.append(
        Finding(
            "records_readable",
            not snap.missing,
            "every held record has its features"
            if not snap.missing
            else f"{len(snap.missing)} held record ids have no features: {_first(snap.missing)}",
        )
    )
    bad_width = [r.record_id for r in snap.records if r.features.shape != (meta.n_features,)]
    if bad_width:
        findings.append(
            Finding(
                "feature_count",
                False,
                f"{len(bad_width)} records do not have {meta.n_features} features: "
                f"{_first(bad_width)}",
            )
        )
    figures["orphan_features"] = len(orphans)
    findings.append(
        Finding(
            "no_orphan_features",
            not orphans,
            "no features are stored for records the model does not hold"
            if not orphans
            else f"features of {len(orphans)} records the model does not hold are stored: "
            f"{_first(orphans)} (erased data written back?)",
        )
    )
    if snap.federated:
        findings.append(
            Finding(
                "checkpoint",
                None,
                f"{where} is federated: no checkpoint to compare its coefficients with",
            )
        )
        return PartReport("integrity", tuple(findings), figures)
    state = snap.state
    if state is None:
        findings.append(
            Finding("checkpoint", False, f"{where} has no engine checkpoint: it was deleted")
        )
        return PartReport("integrity", tuple(findings), figures)
    kind_ok = state.get("kind") == meta.kind
    findings.append(
        Finding(
            "kind",
            kind_ok,
            f"version kind {meta.kind!r}, checkpoint kind {state.get('kind')!r}",
        )
    )
    if meta.kind == "logistic" and kind_ok:
        classes = _classes(state)
        findings.append(
            Finding(
                "classes",
                list(meta.classes or []) == classes,
                f"version classes {meta.classes!r}, checkpoint classes {classes!r}",
            )
        )
        unknown = [r.record_id for r in snap.records if r.label not in set(classes)]
        if unknown:
            findings.append(
                Finding(
                    "labels",
                    False,
                    f"{len(unknown)} held records have a label outside {classes!r}: "
                    f"{_first(unknown)}",
                )
            )
    if kind_ok:
        coef, intercept = _checkpoint_coefficients(state)
        pub_coef, pub_intercept = snap.version.coef, snap.version.intercept
        same = (
            coef.shape == pub_coef.shape
            and intercept.shape == pub_intercept.shape
            and np.array_equal(coef, pub_coef)
            and np.array_equal(intercept, pub_intercept)
        )
        if same:
            detail = "published coefficients equal the checkpoint's, bit for bit"
        elif coef.shape != pub_coef.shape or intercept.shape != pub_intercept.shape:
            detail = (
                f"published coefficients have shapes {pub_coef.shape}, {pub_intercept.shape}; "
                f"the checkpoint's {coef.shape}, {intercept.shape}"
            )
        else:
            gap = max(
                float(np.abs(coef - pub_coef).max(initial=0.0)),
                float(np.abs(intercept - pub_intercept).max(initial=0.0)),
            )
            detail = (
                f"published coefficients differ from those saved with {where} by up to "
                f"{gap:.3g}: changed after publication"
            )
            figures["coefficient_max_difference"] = gap
        findings.append(Finding("coefficients", same, detail))
    saved = [str(i) for i in decode_ids(str(state.get("record_ids_json", "lines:")))]
    figures["n_records_checkpoint"] = len(saved)
    extra, lacking = set(saved) - held, held - set(saved)
    findings.append(
        Finding(
            "checkpoint_records",
            not extra and not lacking and len(saved) == len(held),
            "the checkpoint's record ids are exactly the held records"
            if not extra and not lacking
            else f"the checkpoint lists {len(extra)} ids not held ({_first(extra)}) and misses "
            f"{len(lacking)} held ids ({_first(lacking)})",
        )
    )
    return PartReport("integrity", tuple(findings), figures)


# -- erasure --------------------------------------------------------------------------------
@dataclass
class _Topics:
    """The broker's view: the request's events and the records topic's last messages."""

    requests: list[DeletionRequested]
    # record key -> (last value or None for a tombstone, broker timestamp ms, subjects seen)
    records: dict[bytes, tuple[bytes | None, int, set[str]]]


def _read_topic(
    bootstrap: str, topic: str, config: Mapping[str, Any], timeout: float = _TOPIC_TIMEOUT
) -> list[tuple[bytes | None, bytes | None, int]]:
    """Every message of ``topic`` (key, value, timestamp ms), from the beginning to the end
    offsets seen at the start."""
    from kafka import KafkaConsumer, TopicPartition

    consumer = KafkaConsumer(
        bootstrap_servers=bootstrap,
        enable_auto_commit=False,
        group_id=None,
        **dict(config),
    )
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            msg = (
                f"topic {topic!r} does not exist on {bootstrap}: check UNLEARN_TOPIC_PREFIX "
                "and UNLEARN_KAFKA_BOOTSTRAP (or audit from Redis only)"
            )
            raise PipelineError(msg)
        tps = [TopicPartition(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        out: list[tuple[bytes | None, bytes | None, int]] = []
        deadline = time.monotonic() + timeout
        while True:
            waiting = [tp for tp in tps if consumer.position(tp) < end[tp]]
            if not waiting:
                return out
            if time.monotonic() > deadline:
                msg = (
                    f"reading {topic!r} took longer than {timeout:g} s ({len(out)} messages "
                    "read): is the broker reachable and the topic readable?"
                )
                raise PipelineError(msg)
            for batch in consumer.poll(timeout_ms=500).values():
                out.extend((m.key, m.value, int(m.timestamp)) for m in batch)
    finally:
        consumer.close()


def _read_topics(
    bootstrap: str, topics: Topics, request_id: str, models: set[str], config: Mapping[str, Any]
) -> _Topics:
    requests = []
    # the id as JSON writes it (escaped quotes and backslashes; \\uXXXX or raw non-ASCII)
    needles = {
        json.dumps(request_id)[1:-1].encode(),
        json.dumps(request_id, ensure_ascii=False)[1:-1].encode(),
    }
    for _key, value, _ts in _read_topic(bootstrap, topics.deletions, config):
        if value is None or not any(n in value for n in needles):
            continue
        try:
            event = decode_event(value, DeletionRequested)
        except PipelineError:
            continue  # a dead-lettered message
        if event.request_id == request_id:
            requests.append(event)
    prefixes = tuple(record_key(m, "") for m in models)
    records: dict[bytes, tuple[bytes | None, int, set[str]]] = {}
    for key, value, ts in _read_topic(bootstrap, topics.records, config):
        if key is None or not key.startswith(prefixes):
            continue
        _old, _old_ts, subjects = records.get(key, (None, 0, set()))
        if value is not None:
            try:
                subjects.add(decode_event(value, RecordAdded).subject_id)
            except PipelineError:
                pass  # a refused record: dead-lettered, its key tombstoned
        records[key] = (value, ts, subjects)
    return _Topics(requests, records)


def _produced_at(value: bytes, broker_ms: int) -> float | None:
    """When a ``RecordAdded`` was produced: the earlier of its ``ts`` and the broker's."""
    try:
        event = decode_event(value, RecordAdded)
    except PipelineError:
        return None
    return min(event.ts.timestamp(), broker_ms / 1000.0)


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
        topics: _Topics | None,
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
        produced = _produced_at(last[0], last[1])
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
            self.orphans[model_id] = _orphans(self.store, model_id, held)
        found = self.orphans[model_id]
        if not found:
            return []
        subjects = read_subjects(self.store.client, self.store.keys, model_id, found)
        return [rid for rid, s in zip(found, subjects, strict=True) if s == subject]

    def records(self, model_id: str) -> list[StoredRecord]:
        """The records a model holds (read once)."""
        if model_id not in self.known:
            ids = sorted(self.store.records.ids(model_id))
            self.known[model_id] = _read_records(self.store, model_id, ids)[0]
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
                f"message on the records topic: {_first(open_keys)}"
                + (
                    f" ({waiting} awaiting the worker's next batch)"
                    if waiting
                    else " (and none awaits a resend)"
                )
            )
        self.add(model_id, "tombstoned", not open_keys, detail)


def _erasure_part(
    store: Store,
    request_id: str,
    snap: _Snapshot,
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
        seen = _read_topics(bootstrap, topics, request_id, models, kafka_config or {})
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


# -- membership -----------------------------------------------------------------------------
@dataclass(frozen=True)
class LinearModel:
    """A linear model's published coefficients, enough to score records' losses.

    ``coef`` has shape (d,) (binary logistic, ridge) or (K, d) (one-vs-rest); ``classes``
    are the logistic model's labels, in the columns' order.
    """

    kind: Literal["logistic", "ridge"]
    coef: Array
    intercept: Array
    classes: list[Any] | None = None

    @classmethod
    def from_version(cls, version: ModelVersion) -> LinearModel:
        meta = version.metadata
        return cls(meta.kind, version.coef, version.intercept, meta.classes)

    @classmethod
    def from_engine(cls, engine: LogisticUnlearner | RidgeUnlearner) -> LinearModel:
        if isinstance(engine, LogisticUnlearner):
            coef = engine.coef_
            intercept = engine.intercept_
            return cls(
                "logistic",
                coef,
                intercept[0] if coef.ndim == 1 else intercept,
                engine.classes_.tolist(),
            )
        return cls("ridge", engine.coef_, np.asarray(engine.intercept_))

    def losses(self, X: ArrayLike, y: ArrayLike) -> Array:
        """Per-record loss: cross-entropy of the true class (logistic; one-vs-rest with the
        normalised sigmoids the model predicts with) or squared error (ridge)."""
        Xa = np.asarray(X, dtype=np.float64)
        scores = Xa @ np.asarray(self.coef).T + np.asarray(self.intercept)
        if self.kind == "ridge":
            return np.asarray((scores - np.asarray(y, dtype=np.float64)) ** 2, dtype=np.float64)
        probs = class_probabilities(scores)
        idx = _label_index(list(np.asarray(y).tolist()), self.classes or [])
        return np.asarray(-np.log(np.clip(probs[np.arange(len(idx)), idx], 1e-300, 1.0)))


def loss_threshold_auc(member_losses: ArrayLike, other_losses: ArrayLike) -> float:
    r"""ROC AUC of Yeom et al.'s loss-threshold attack: "member" when the loss is low.

    :math:`P(\ell_m < \ell_o) + \tfrac12 P(\ell_m = \ell_o)` over pairs, from average ranks
    (Mann-Whitney U over :math:`n_m n_o`). 0.5 is chance; 1 separates them perfectly.
    """
    m = np.asarray(member_losses, dtype=np.float64).ravel()
    o = np.asarray(other_losses, dtype=np.float64).ravel()
    if m.size == 0 or o.size == 0:
        msg = f"need records on both sides: {m.size} candidates, {o.size} never-seen records"
        raise InvalidInput(msg)
    ranks = rankdata(np.concatenate([-m, -o]))  # high score = low loss = "member"
    u = float(ranks[: m.size].sum()) - m.size * (m.size + 1) / 2.0
    return u / (m.size * o.size)


def membership(
    published: LinearModel,
    retrained: LinearModel,
    X_erased: ArrayLike,
    y_erased: ArrayLike,
    X_unseen: ArrayLike,
    y_unseen: ArrayLike,
    tolerance: float = MEMBERSHIP_TOLERANCE,
) -> PartReport:
    """The membership part: does the published model remember the erased records more than
    a model retrained without them?

    Parameters
    ----------
    published, retrained : LinearModel
        The model after the erasure, and the reference fitted from scratch on the records
        it holds (same objective and b: :func:`membership_from_store` builds it).
    X_erased, y_erased : array_like
        The erased records' features and labels (known only to tests and benchmarks: the
        pipeline deletes them).
    X_unseen, y_unseen : array_like
        Records neither model ever trained on (e.g. the holdout).
    tolerance : float
        Largest admitted ``auc_published - auc_retrained``.

    Returns
    -------
    PartReport
        Figures ``auc_published``, ``auc_retrained``, ``gap``; one finding.
    """
    pub = loss_threshold_auc(
        published.losses(X_erased, y_erased), published.losses(X_unseen, y_unseen)
    )
    ref = loss_threshold_auc(
        retrained.losses(X_erased, y_erased), retrained.losses(X_unseen, y_unseen)
    )
    gap = pub - ref
    ok = gap <= tolerance
    detail = (
        f"loss-threshold attack AUC on the erased records: {pub:.4f} under the published "
        f"model, {ref:.4f} under a retrained one (gap {gap:+.4f}, "
        + ("within" if ok else "over")
        + f" {tolerance:g})"
    )
    figures = {
        "auc_published": pub,
        "auc_retrained": ref,
        "gap": gap,
        "tolerance": tolerance,
        "n_erased": int(np.asarray(y_erased).shape[0]),
        "n_unseen": int(np.asarray(y_unseen).shape[0]),
    }
    return PartReport("membership", (Finding("loss_threshold", ok, detail),), figures)


def _retrained(snap: _Snapshot) -> LinearModel:
    """A model fitted from scratch on the held records with the checkpoint's objective."""
    if snap.state is None:
        msg = (
            f"model {snap.model_id!r} v{snap.version.version} has no checkpoint: the "
            "membership reference needs its objective (lambda, b)"
        )
        raise InvalidInput(msg)
    usable = _records_usable(snap)
    if usable is None:
        msg = f"model {snap.model_id!r} has unreadable records: run the integrity audit"
        raise InvalidInput(msg)
    X, labels = usable
    ids = [r.record_id for r in snap.records]
    cls = LogisticUnlearner if snap.state.get("kind") == "logistic" else RidgeUnlearner
    engine = cls.from_state_dict(snap.state, X, np.asarray(labels), ids)
    engine.refit(warm_start=False)
    return LinearModel.from_engine(engine)


def _membership_of(
    snap: _Snapshot,
    erased: tuple[ArrayLike, ArrayLike],
    unseen: tuple[ArrayLike, ArrayLike] | None,
    tolerance: float,
) -> PartReport:
    if unseen is None:
        if snap.holdout is None or not snap.holdout.ids:
            msg = (
                f"model {snap.model_id!r} has no holdout: pass never-seen records as unseen=(X, y)"
            )
            raise InvalidInput(msg)
        unseen = (snap.holdout.X, snap.holdout.y)
    return membership(
        LinearModel.from_version(snap.version),
        _retrained(snap),
        erased[0],
        erased[1],
        unseen[0],
        unseen[1],
        tolerance,
    )


def membership_from_store(
    store: Store,
    model_id: str,
    X_erased: ArrayLike,
    y_erased: ArrayLike,
    X_unseen: ArrayLike | None = None,
    y_unseen: ArrayLike | None = None,
    tolerance: float = MEMBERSHIP_TOLERANCE,
) -> PartReport:
    """:func:`membership` of the model's current version, against a model refitted from
    scratch on its held records with the checkpoint's objective; never-seen records default
    to the model's holdout."""
    unseen = None if X_unseen is None or y_unseen is None else (X_unseen, y_unseen)
    return _membership_of(_snapshot(store, model_id), (X_erased, y_erased), unseen, tolerance)


# -- the audit ------------------------------------------------------------------------------
def audit(
    store: Store,
    model_id: str,
    request_id: str | None = None,
    bootstrap: str | None = None,
    topic_prefix: str = "",
    *,
    kafka_config: Mapping[str, Any] | None = None,
    request: DeletionRequested | None = None,
    erased: tuple[ArrayLike, ArrayLike] | None = None,
    unseen: tuple[ArrayLike, ArrayLike] | None = None,
    save: bool = True,
    metrics: Metrics | None = None,
) -> AuditReport:
    """Audit the current version of ``model_id`` (and a deletion request) from stored state.

    Parameters
    ----------
    store : Store
        A writer's store (the audit saves its report; ``save=False`` only reads).
    model_id : str
    request_id : str, optional
        Also audit this deletion request's erasure, in every model its receipts name.
    bootstrap : str, optional
        The broker: read the request's event on ``unlearn.deletions`` and the tombstones on
        ``unlearn.records``. Without it the erasure part checks what Redis shows.
    topic_prefix : str
        ``UNLEARN_TOPIC_PREFIX``.
    kafka_config : mapping, optional
        Security options for kafka-python (``Settings.kafka_config()``).
    request : DeletionRequested, optional
        The request event, when the caller has it (instead of reading the topic).
    erased, unseen : (X, y), optional
        The erased records' features and labels, and never-seen records (default: the
        holdout): adds the membership part. Tests and benchmarks only.
    save : bool
        Store the report's JSON with the version (``KeySpace.audits``).
    metrics : Metrics, optional
        Set the ``unlearn_audit_*`` gauges of this process.

    Returns
    -------
    AuditReport

    Raises
    ------
    UnknownModel, UnknownRequest
        Nothing stored under that model or request id.
    """
    start = time.perf_counter()
    audited_at = datetime.now(UTC)
    snap = _snapshot(store, model_id)
    orphans = _orphans(store, model_id, set(snap.ids))
    parts = [_certificate_part(snap), _integrity_part(snap, orphans)]
    if request_id is not None:
        parts.append(
            _erasure_part(
                store,
                request_id,
                snap,
                {snap.model_id: orphans},
                request=request,
                bootstrap=bootstrap,
                topics=Topics(topic_prefix),
                kafka_config=kafka_config,
            )
        )
    else:
        parts.append(
            PartReport(
                "erasure",
                (Finding("request", None, "no request given: audit one with --request ID"),),
            )
        )
    if erased is not None:
        parts.append(_membership_of(snap, erased, unseen, MEMBERSHIP_TOLERANCE))
    else:
        parts.append(
            PartReport(
                "membership",
                (
                    Finding(
                        "loss_threshold",
                        None,
                        "needs the erased records' features, which the pipeline deleted: "
                        "tests and benchmarks run it (pipeline.audit.membership)",
                    ),
                ),
            )
        )
    report = AuditReport(
        model_id=model_id,
        version=snap.version.version,
        audited_at=audited_at,
        parts=tuple(parts),
        request_id=request_id,
        seconds=time.perf_counter() - start,
    )
    if save:
        _save(store, report)
    if metrics is not None:
        metrics.audited(report)
    return report


def _save(store: Store, report: AuditReport) -> None:
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
    """The report of the newest audited version of a model, or None."""
    client: Any = store.client
    fields = [int(f) for f in client.hkeys(store.keys.audits(model_id))]
    return load_report(store, model_id, max(fields)) if fields else None


# -- the feature-injection test -------------------------------------------------------------
def inject_feature(
    X: ArrayLike,
    y: ArrayLike,
    doomed: Sequence[int],
    *,
    value: float = 1.0,
    label: Hashable | None = None,
) -> tuple[Array, NDArray[Any]]:
    """``X`` with a feature appended that is ``value`` on the ``doomed`` rows and 0 elsewhere.

    Every row is then divided by one factor, the largest row norm if it exceeds 1, so that
    the rows stay in the unit ball the certificate assumes. With ``label`` the doomed rows
    get that label (a copy of ``y``), so that only the injected feature explains them.

    Returns
    -------
    X_injected : ndarray of shape (n, d + 1)
    y_injected : ndarray of shape (n,)
    """
    Xa = np.asarray(X, dtype=np.float64)
    labels = np.array(y, copy=True)
    rows = np.asarray(list(doomed), dtype=np.intp)
    if rows.size == 0 or rows.size >= Xa.shape[0]:
        msg = f"doomed names {rows.size} of {Xa.shape[0]} rows: name some rows, not all"
        raise InvalidInput(msg)
    if label is not None:
        labels[rows] = label
    injected = np.zeros((Xa.shape[0], 1))
    injected[rows] = value
    Xi = np.hstack([Xa, injected])
    Xi /= max(1.0, float(np.linalg.norm(Xi, axis=1).max()))
    return Xi, labels


@dataclass(frozen=True)
class InjectionResult:
    r"""What the feature-injection test measured (weights are L2 norms over the classes).

    Attributes
    ----------
    trained : float
        Weight on the injected feature after training with the doomed records.
    retrained : float
        Weight after retraining from scratch without them (same objective and b).
    perturbation : float
        :math:`\lVert b_j\rVert / (\lambda n')`, what the retrained weight must be (0
        when :math:`\sigma = 0`).
    after : dict of str to float
        Weight after forgetting the doomed records, per method, and ``"retrain"``.
    residual : dict of str to float
        :math:`\lVert w_j - w_j^{\rm retrain}\rVert / \lVert w_j^{\rm trained} -
        w_j^{\rm retrain}\rVert`: the share of what the doomed records put on the feature
        that is left (0 is perfect, 1 is nothing forgotten).
    raw : dict of str to float
        :math:`\lVert w_j\rVert / \lVert w_j^{\rm trained}\rVert`, Izzo et al.'s figure
        (equal to ``residual`` when :math:`\sigma = 0`).
    reported : dict of str to str
        The step each method reported taking (its last batch's).
    certificate : dict of str to float
        The certificate each method's model reports afterwards (``budget`` is the budget).
    budget : float
    n_records, n_removed, batches : int
    """

    trained: float
    retrained: float
    perturbation: float
    after: dict[str, float]
    residual: dict[str, float]
    raw: dict[str, float]
    reported: dict[str, str]
    certificate: dict[str, float]
    budget: float
    n_records: int
    n_removed: int
    batches: int


def feature_injection(
    X: ArrayLike,
    y: ArrayLike,
    doomed: Sequence[int],
    *,
    params: Mapping[str, Any] | None = None,
    value: float = 1.0,
    label: Hashable | None = None,
    batch: int | None = None,
    methods: Sequence[str] = ("fisher", "influence"),
    variants: Mapping[str, Mapping[str, Any]] | None = None,
) -> InjectionResult:
    r"""The feature-injection test of Izzo, Smart, Chaudhuri and Zou (AISTATS 2021).

    A feature is appended that is ``value`` on the ``doomed`` records and 0 on every other
    one (:func:`inject_feature`; with ``label`` the doomed records get that label, so that
    only the injected feature explains them and training puts a large weight on it). The
    model is trained, the doomed records are forgotten (at once, or in batches of
    ``batch``) with each of ``methods``, and the weight left on the feature is compared
    with the trained weight and with a retrain.

    Why a retrain's weight is not 0: the feature is 0 on every remaining record, so the
    remaining objective's gradient in that coordinate is :math:`\lambda n' w_j + b_j` and
    the retrained weight is :math:`w_j^* = -b_j / (\lambda n')`, the perturbation's doing
    (Guo et al.'s b; 0 when :math:`\sigma = 0`, Izzo et al.'s setting). So the figure
    compared with the target is the share left of what the records put there,
    :math:`\lVert w_j - w_j^*\rVert / \lVert w_j^{\rm trained} - w_j^*\rVert`.

    What it tests: once the last doomed record is gone, the remaining data's Hessian is
    :math:`\lambda n'` in that coordinate and decoupled from the others, so a Newton step
    on the remaining objective (``fisher``) lands on :math:`w_j^*` to round-off whatever
    happened before. An ``influence`` step (Guo et al., eq. 3) assumes the model it starts
    from is optimal and carries the residual of earlier steps over: removed in one batch it
    misses by the fit's tolerance over :math:`\lambda n'`, but in several batches each
    step is taken while doomed records remain (the Hessian is not block-diagonal, the
    margins on the injected feature are large) and what those approximate steps leave
    stays on the feature: a large part of it (benchmarks in ``BENCHMARKS.md``).

    Parameters
    ----------
    X, y : array_like
        Features (rows of norm at most 1 preferred) and labels.
    doomed : sequence of int
        Rows that get the injected feature and are then forgotten.
    params : mapping, optional
        :class:`~pipeline.unlearning.LogisticUnlearner` parameters (``method`` is set per
        run).
    value : float
        The injected feature's value on the doomed rows.
    label : optional
        Label given to the doomed rows.
    batch : int, optional
        Forget in batches of this size (default: one batch).
    methods : sequence of str
        Removal methods to run.
    variants : mapping, optional
        More runs, by name: parameter changes applied to the same fitted model (its
        checkpoint), e.g. ``{"exact": {"certificate": "exact"}}``; each forgets with its
        default method.

    Returns
    -------
    InjectionResult
    """
    Xi, labels = inject_feature(X, y, doomed, value=value, label=label)
    rows = np.asarray(list(doomed), dtype=np.intp)
    ids = list(range(Xi.shape[0]))
    base = dict(params or {})
    base.pop("method", None)
    model = LogisticUnlearner(**base).fit(Xi, labels, ids=ids)
    state = model.state_dict(include_records=True)
    step = batch or rows.size

    def weight(m: LogisticUnlearner) -> Array:
        return np.atleast_2d(m.coef_)[:, -1].copy()

    def forget(m: LogisticUnlearner, method: str | None) -> str:
        taken = ""
        for start in range(0, rows.size, step):
            taken = m.forget(rows[start : start + step].tolist(), method=method).method
        return taken

    trained = weight(model)
    reference = LogisticUnlearner.from_state_dict(state)
    forget(reference, None)
    reference.refit(warm_start=False)
    retrained = weight(reference)
    B = np.asarray(state["B"], dtype=np.float64)
    perturbation = float(np.linalg.norm(B[:, Xi.shape[1] - 1])) / (
        reference.lam * reference.n_records_
    )
    after: dict[str, Array] = {"retrain": retrained}
    reported = {"retrain": "retrain"}
    certificate = {"retrain": reference.certificate_}
    runs: dict[str, tuple[Mapping[str, Any], str | None]] = {m: ({}, m) for m in methods}
    runs |= {name: (changes, None) for name, changes in (variants or {}).items()}
    for name, (changes, method) in runs.items():
        copy = LogisticUnlearner.from_state_dict({**state, **changes})
        reported[name] = forget(copy, method)
        after[name] = weight(copy)
        certificate[name] = copy.certificate_
    scale = float(np.linalg.norm(trained - retrained))
    size = float(np.linalg.norm(trained))

    def share(v: Array, ref: Array, norm: float) -> float:
        return float(np.linalg.norm(v - ref)) / norm if norm > 0 else math.nan

    return InjectionResult(
        trained=size,
        retrained=float(np.linalg.norm(retrained)),
        perturbation=perturbation,
        after={k: float(np.linalg.norm(v)) for k, v in after.items()},
        residual={k: share(v, retrained, scale) for k, v in after.items()},
        raw={k: share(v, np.zeros_like(v), size) for k, v in after.items()},
        reported=reported,
        certificate=certificate,
        budget=model.budget_,
        n_records=int(Xi.shape[0]),
        n_removed=int(rows.size),
        batches=math.ceil(rows.size / step),
    )

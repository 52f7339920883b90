"""The integrity part: the published version is what its checkpoint and records say.

The published coefficients equal the coefficients in the checkpoint saved with that version,
bit for bit (a coefficient changed after publication shows here, and in the certificate);
the version's ``n_records`` equals the records held, the checkpoint's record ids are exactly
the held ids, every held id has its features and a label of the model's classes, no
features are stored for a record the model does not hold (a ``SCAN`` of the model's record
keys: it walks the whole keyspace), and the feature columns the checkpoint says are
forgotten are 0 in the coefficients and in every held record.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.audit.certificate import checkpoint_classes, state_float
from pipeline.audit.report import Finding, PartReport, first_few
from pipeline.audit.snapshot import Snapshot
from pipeline.errors import InvalidInput
from pipeline.store.codec import StateValue
from pipeline.unlearning.base import decode_ids
from pipeline.unlearning.kinds import kind_named, kind_of_state

__all__ = ["COEFFICIENTS", "checkpoint_coefficients", "integrity_part"]

Array = NDArray[np.float64]


def checkpoint_coefficients(state: Mapping[str, StateValue]) -> tuple[Array, Array]:
    """The coefficients a checkpoint holds, shaped as the published version's.

    Raises
    ------
    InvalidInput
        The checkpoint's kind is not registered, or the audit does not know its fields.
    """
    kind = kind_of_state(state)
    read = COEFFICIENTS.get(kind.name)
    if read is None:
        msg = f"the audit cannot read the coefficients of a {kind.name!r} checkpoint"
        raise InvalidInput(msg)
    return read(state, int(state_float(state, "n_features_in")), bool(state["fit_intercept"]))


def _logistic_coefficients(
    state: Mapping[str, StateValue], d: int, fit_intercept: bool
) -> tuple[Array, Array]:
    W = np.asarray(state["W"], dtype=np.float64)  # (K, d + fit_intercept)
    K = W.shape[0]
    coef = W[0, :d] if K == 1 else W[:, :d]
    intercept = W[:, -1] if fit_intercept else np.zeros(K)
    return coef, intercept.reshape(()) if K == 1 else intercept


def _ridge_coefficients(
    state: Mapping[str, StateValue], d: int, fit_intercept: bool
) -> tuple[Array, Array]:
    w = np.asarray(state["w"], dtype=np.float64)  # (d + fit_intercept,)
    return w[:d], np.asarray(float(w[-1]) if fit_intercept else 0.0)


#: Where each kind's checkpoint keeps its coefficients, by kind name: the engines' saved
#: fields, read directly (the audit does not rebuild an engine to compare bits). The kind
#: registry (:data:`pipeline.unlearning.kinds.KINDS`) does not describe them.
COEFFICIENTS: dict[str, Callable[[Mapping[str, StateValue], int, bool], tuple[Array, Array]]] = {
    "logistic": _logistic_coefficients,
    "ridge": _ridge_coefficients,
}


def integrity_part(snap: Snapshot, orphans: list[str]) -> PartReport:
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
            else f"{len(snap.missing)} held record ids have no features: {first_few(snap.missing)}",
        )
    )
    bad_width = [r.record_id for r in snap.records if r.features.shape != (meta.n_features,)]
    if bad_width:
        findings.append(
            Finding(
                "feature_count",
                False,
                f"{len(bad_width)} records do not have {meta.n_features} features: "
                f"{first_few(bad_width)}",
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
            f"{first_few(orphans)} (erased data written back?)",
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
    kind_ok = state.get("kind") == meta.kind and meta.kind in COEFFICIENTS
    findings.append(
        Finding(
            "kind",
            kind_ok,
            f"version kind {meta.kind!r}, checkpoint kind {state.get('kind')!r}",
        )
    )
    if kind_ok and kind_named(meta.kind).classifier:
        classes = checkpoint_classes(state)
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
                    f"{first_few(unknown)}",
                )
            )
    if kind_ok:
        coef, intercept = checkpoint_coefficients(state)
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
        findings.extend(_forgotten_columns(snap, state, pub_coef))
    saved = [str(i) for i in decode_ids(str(state.get("record_ids_json", "lines:")))]
    figures["n_records_checkpoint"] = len(saved)
    extra, lacking = set(saved) - held, held - set(saved)
    findings.append(
        Finding(
            "checkpoint_records",
            not extra and not lacking and len(saved) == len(held),
            "the checkpoint's record ids are exactly the held records"
            if not extra and not lacking
            else f"the checkpoint lists {len(extra)} ids not held ({first_few(extra)}) and misses "
            f"{len(lacking)} held ids ({first_few(lacking)})",
        )
    )
    return PartReport("integrity", tuple(findings), figures)


def _forgotten_columns(
    snap: Snapshot, state: Mapping[str, StateValue], coef: Array
) -> list[Finding]:
    """The feature columns the checkpoint says are forgotten are 0 in the published
    coefficients and in every held record (a value written back shows here)."""
    raw = state.get("forgotten_features")
    columns = [] if raw is None else [int(c) for c in np.asarray(raw).reshape(-1)]
    if not columns:
        return []
    used = bool(np.any(np.asarray(coef)[..., columns]))
    stored = [r.record_id for r in snap.records if np.any(r.features[columns])]
    shown = ", ".join(map(str, columns[:10])) + (" ..." if len(columns) > 10 else "")
    if not used and not stored:
        detail = f"forgotten columns {shown}: 0 in the coefficients and in every held record"
    else:
        detail = (
            f"forgotten columns {shown}: "
            + ("the published coefficients use them; " if used else "")
            + (
                f"{len(stored)} held records store values in them ({first_few(stored)})"
                if stored
                else "no held record stores values in them"
            )
        )
    return [Finding("forgotten_features", not used and not stored, detail)]

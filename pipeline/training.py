"""A model's first version: load a table of records, fit, publish version 1 with its state.

``unlearn train MODEL --data FILE`` calls :func:`load_table` and :func:`train_model`:

* the file is a CSV with a header row, or an ``.npz`` holding ``X`` and ``y`` (and
  optionally ``subjects`` and ``ids``);
* a ``holdout`` fraction of the rows (chosen at random, or by ``seed``) is kept apart,
  never trained on, and stored with the model: the retrain policy watches the accuracy on
  it;
* the engine's perturbation b is drawn from the operating system's entropy unless a seed
  is given (a fixed seed voids the certified guarantee: tests only);
* the training rows go to the record store and version 1 (method ``"fit"``), its engine
  checkpoint and the holdout are written in ONE transaction, so a worker never sees a
  model without its records.
"""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import InvalidInput, PipelineError
from pipeline.events import ID_PATTERN, MAX_ID
from pipeline.store.codec import decode_state, encode_state
from pipeline.store.facade import Store
from pipeline.store.keys import subject_token
from pipeline.store.publication import PublishResult
from pipeline.store.records import StoredRecord, index_subjects
from pipeline.store.versions import ModelSpec
from pipeline.unlearning import LogisticUnlearner, RidgeUnlearner
from pipeline.unlearning.kinds import kind_named, kind_of

_ID = re.compile(ID_PATTERN)

__all__ = [
    "Engine",
    "Holdout",
    "Table",
    "build_engine",
    "engine_kind",
    "engine_spec",
    "class_scores",
    "split_rows",
    "holdout_score",
    "load_holdout",
    "load_table",
    "train_model",
]

Engine = LogisticUnlearner | RidgeUnlearner
#: A model kind's name, one of :data:`pipeline.unlearning.kinds.KINDS`.
Kind = str
"""A model kind's name in the registry (:data:`pipeline.unlearning.kinds.KINDS`), as a
published version records it."""


@dataclass(frozen=True)
class Table:
    """Rows to train on: features, labels, subject and record ids (strings), and the
    features' names when the file had a header (a CSV)."""

    X: NDArray[np.float64]
    y: NDArray[Any]
    subjects: list[str]
    ids: list[str]
    feature_names: list[str] | None = None

    def __len__(self) -> int:
        return len(self.ids)

    def check_ids(self) -> None:
        """Raise unless every record and subject id could be named by an event.

        A deletion request names ids as the event schema allows them (1 to ``MAX_ID``
        characters, no control characters or braces: ``pipeline.events.ID_PATTERN``); a
        row stored under any other id could never be deleted.

        Raises
        ------
        InvalidInput
            Names the first bad id, its row and column.
        """
        for column, values in (("record id", self.ids), ("subject id", self.subjects)):
            for row, value in enumerate(values):
                text = str(value)
                if len(text) <= MAX_ID and _ID.match(text):
                    continue
                msg = (
                    f"row {row}: {column} {text[:40]!r}{'...' if len(text) > 40 else ''} "
                    f"({len(text)} characters) cannot be named by a deletion request: ids "
                    f"must be 1-{MAX_ID} characters without control characters or braces"
                )
                raise InvalidInput(msg)


@dataclass(frozen=True)
class Holdout:
    """A model's holdout set: features, labels, record id and subject token of each row.

    Holdout rows are data about people too: an erasure of their subject or of their record
    id removes them (:meth:`without`), whether or not the subject has training rows.
    """

    X: NDArray[np.float64]
    y: NDArray[Any]
    tokens: list[str]
    ids: list[str]

    def rows_of(self, subject_ids: set[str], record_ids: set[str]) -> list[int]:
        """Indices of the rows of these subjects or with these record ids."""
        gone = {subject_token(s) for s in subject_ids}
        return [
            i
            for i, (t, r) in enumerate(zip(self.tokens, self.ids, strict=True))
            if t in gone or r in record_ids
        ]

    def without(
        self, subject_ids: set[str], record_ids: set[str], *, zero: Sequence[int] = ()
    ) -> Holdout | None:
        """The holdout minus those rows, and with the columns ``zero`` set to 0 (forgotten
        feature columns); ``None`` if it holds none of those rows and values."""
        drop = set(self.rows_of(subject_ids, record_ids))
        columns = list(zero)
        if not drop and not (columns and self.X[:, columns].any()):
            return None
        keep = [i for i in range(len(self.ids)) if i not in drop]
        X = self.X[keep]
        X[:, columns] = 0.0
        return Holdout(X, self.y[keep], [self.tokens[i] for i in keep], [self.ids[i] for i in keep])

    def fields(self) -> dict[str, bytes]:
        """Redis hash fields (the checkpoint encoding: raw arrays and a manifest)."""
        y = self.y.astype(np.float64) if self.y.dtype.kind == "f" else self.y.astype(np.int64)
        state = {
            "X": self.X,
            "y": y,
            "tokens_json": json.dumps(self.tokens),
            "ids_json": json.dumps(self.ids),
        }
        return encode_state(state)


def _label_array(values: list[str]) -> NDArray[Any]:
    """Labels from text: integers if they all are, else floats, else strings."""
    for kind in (int, float):
        try:
            return np.array([kind(v) for v in values])
        except ValueError:
            continue
    return np.array(values)


def load_table(
    path: str | Path,
    *,
    label_column: str = "label",
    subject_column: str | None = None,
    id_column: str | None = None,
) -> Table:
    """Read training rows from a CSV (header row) or an ``.npz`` file.

    Parameters
    ----------
    path : path
        ``.csv``: one column per feature plus the label (and subject, id) columns.
        ``.npz``: arrays ``X`` (n, d) and ``y`` (n,), optional ``subjects`` and ``ids``.
    label_column, subject_column, id_column : str
        Column names in a CSV (``subject_column`` also names an array in an ``.npz``).
        Without subjects every record is its own subject; ids default to ``r0, r1, ...``.

    Raises
    ------
    InvalidInput
        The file is missing, of another type, or its columns are not as described.
    """
    file = Path(path)
    if not file.is_file():
        msg = f"data file {str(file)!r} does not exist"
        raise InvalidInput(msg)
    subjects: list[str] | None = None
    ids: list[str] | None = None
    names: list[str] | None = None
    if file.suffix == ".npz":
        with np.load(file, allow_pickle=False) as data:
            if "X" not in data.files or "y" not in data.files:
                msg = f"{file} must hold arrays 'X' and 'y' (it has {sorted(data.files)})"
                raise InvalidInput(msg)
            X = np.asarray(data["X"], dtype=np.float64)
            y = np.asarray(data["y"])
            name = subject_column or "subjects"
            if name in data.files:
                subjects = [str(s) for s in data[name]]
            elif subject_column:
                msg = f"{file} has no array {subject_column!r} (it has {sorted(data.files)})"
                raise InvalidInput(msg)
            if "ids" in data.files:
                ids = [str(i) for i in data["ids"]]
    elif file.suffix == ".csv":
        X, y, subjects, ids, names = _read_csv(file, label_column, subject_column, id_column)
    else:
        msg = f"data file {file.name!r}: use a .csv (with a header row) or an .npz file"
        raise InvalidInput(msg)
    if X.ndim != 2 or y.ndim != 1 or len(y) != len(X) or len(X) == 0:
        msg = f"{file}: need X of shape (n, d) and y of shape (n,), got {X.shape} and {y.shape}"
        raise InvalidInput(msg)
    if not np.isfinite(X).all():
        row = int(np.flatnonzero(~np.isfinite(X).all(axis=1))[0])
        msg = f"{file}: row {row} has NaN or infinite features; clean the file first"
        raise InvalidInput(msg)
    ids = ids or [f"r{i}" for i in range(len(y))]
    if len(set(ids)) != len(ids):
        msg = f"{file}: record ids are not unique"
        raise InvalidInput(msg)
    if names is not None and len(set(names)) != len(names):
        names = None  # a duplicated header cannot name a column: indices only
    return Table(X=X, y=y, subjects=subjects or list(ids), ids=ids, feature_names=names)


def _read_csv(
    file: Path, label_column: str, subject_column: str | None, id_column: str | None
) -> tuple[NDArray[np.float64], NDArray[Any], list[str] | None, list[str] | None, list[str]]:
    with open(file, newline="", encoding="utf-8") as handle:
        rows = list(csv.reader(handle))
    if len(rows) < 2:
        msg = f"{file}: need a header row and at least one data row"
        raise InvalidInput(msg)
    header = [h.strip() for h in rows[0]]
    for name in (label_column, subject_column, id_column):
        if name is not None and name not in header:
            shown = ", ".join(header[:6]) + (
                f", ... ({len(header)} columns)" if len(header) > 6 else ""
            )
            msg = f"{file}: no column {name!r} in the header ({shown})"
            raise InvalidInput(msg)
    special = {label_column, subject_column, id_column} - {None}
    feature_cols = [i for i, h in enumerate(header) if h not in special]
    body = rows[1:]
    try:
        X = np.array([[float(r[i]) for i in feature_cols] for r in body], dtype=np.float64)
    except (ValueError, IndexError) as exc:
        msg = f"{file}: feature columns must be numbers on every row ({exc})"
        raise InvalidInput(msg) from None
    y = _label_array([r[header.index(label_column)] for r in body])
    subjects = None if subject_column is None else [r[header.index(subject_column)] for r in body]
    ids = None if id_column is None else [r[header.index(id_column)] for r in body]
    return X, y, subjects, ids, [header[i] for i in feature_cols]


def build_engine(kind: Kind, **params: Any) -> Engine:
    """A fresh unlearner of ``kind`` with the given hyperparameters (the registry,
    :mod:`pipeline.unlearning.kinds`)."""
    engine: Engine = kind_named(kind).build(**params)
    return engine


def engine_kind(engine: Engine) -> Kind:
    """The registry name of an engine's kind."""
    return kind_of(engine).name


def holdout_score(engine: Engine, holdout: Holdout | None) -> dict[str, float]:
    """Holdout metrics of the engine: ``accuracy`` (logistic) or ``r2`` (ridge) first,
    then, for a classifier, the accuracy on each class's rows, ``accuracy[<label>]``
    (the bias watch: who the model now fails, not only how many)."""
    if holdout is None or len(holdout.tokens) == 0:
        return {}
    kind = kind_of(engine)
    if not kind.classifier:
        return {kind.score: float(engine.score(holdout.X, holdout.y))}
    predicted = np.asarray(engine.predict(holdout.X))
    truth = np.asarray(holdout.y)
    hits = predicted == truth
    out = {"accuracy": float(hits.mean())}
    for label in np.unique(truth):
        out[f"accuracy[{label}]"] = float(hits[truth == label].mean())
    return out


def class_scores(metrics: Mapping[str, float]) -> dict[str, float]:
    """The per-class accuracies of :func:`holdout_score`'s metrics, by label."""
    return {
        key[len("accuracy[") : -1]: value
        for key, value in metrics.items()
        if key.startswith("accuracy[") and key.endswith("]")
    }


def load_holdout(store: Store, model_id: str) -> Holdout | None:
    """The model's holdout set, or ``None`` if it has none."""
    fields: Any = store.client.hgetall(store.keys.holdout(model_id))
    if not fields:
        return None
    state = decode_state(fields)
    X = np.asarray(state["X"], dtype=np.float64)
    tokens, ids = json.loads(str(state["tokens_json"])), json.loads(str(state["ids_json"]))
    return Holdout(X, np.asarray(state["y"]), tokens, ids)


def engine_spec(
    engine: Engine,
    *,
    method: str,
    seq: int,
    holdout_metrics: dict[str, float],
    extra: dict[str, Any],
) -> ModelSpec:
    """The registry's view of the engine's current coefficients."""
    kind = engine_kind(engine)
    classes = kind_of(engine).classes(engine)
    intercept = np.asarray(engine.intercept_, dtype=np.float64)
    coef = np.asarray(engine.coef_, dtype=np.float64)
    if coef.ndim == 1:
        intercept = intercept.reshape(-1)[:1].reshape(())
    budget = float(engine.budget_)
    return ModelSpec(
        kind=kind,
        coef=coef,
        intercept=intercept,
        method=method,
        seq=seq,
        classes=classes,
        certificate=float(engine.certificate_),
        budget=budget,
        n_records=engine.n_records_,
        holdout_metrics=holdout_metrics,
        extra=extra,
    )


def split_rows(
    n: int, holdout: float, seed: int | None
) -> tuple[NDArray[np.intp], NDArray[np.intp]]:
    """Row indices of the holdout and of the training rows, each sorted.

    ``seed`` None: fresh entropy from the operating system.
    """
    order = np.random.default_rng(seed).permutation(n)
    n_hold = int(round(holdout * n))
    return np.sort(order[:n_hold]), np.sort(order[n_hold:])


def train_model(
    store: Store,
    model_id: str,
    table: Table,
    *,
    kind: Kind = "logistic",
    holdout: float = 0.2,
    seed: int | None = None,
    params: dict[str, Any] | None = None,
    split_seed: int | None = None,
) -> tuple[Engine, PublishResult]:
    """Fit a new model on ``table`` and publish it as version 1.

    Parameters
    ----------
    store : Store
    model_id : str
        Must not exist yet.
    table : Table
    kind : str
        A model kind of :data:`pipeline.unlearning.kinds.KINDS` (logistic or ridge).
    holdout : float
        Fraction of rows kept apart for the retrain policy's accuracy check (0: none).
    seed : int, optional
        None (the default): the holdout split is random and the engine draws its
        perturbation b from the operating system's entropy, secret, as Guo et al.'s
        certificate requires (the checkpoint keeps b and records no seed). An int seeds the
        holdout split and, unless ``params`` gives its own ``seed``, b: reproducible, which
        voids the certified guarantee (tests and benchmarks only).
    params : dict, optional
        Hyperparameters of the engine (``lam``, ``sigma``, ``fit_intercept``, ...).
    split_seed : int, optional
        Seed of the holdout split alone (default: ``seed``), so that a caller can use
        the same split (:func:`split_rows`) without fixing b.

    Raises
    ------
    PipelineError
        The model exists already, or the data or parameters are invalid.
    """
    if store.models.current_version(model_id):
        msg = (
            f"model {model_id!r} exists already (version "
            f"{store.models.current_version(model_id)}): train under a new id, or ask for a "
            f"full refit with `unlearn retrain {model_id}`"
        )
        raise PipelineError(msg)
    if not 0 <= holdout < 1:
        msg = f"holdout fraction must be in [0, 1), got {holdout}"
        raise InvalidInput(msg)
    table.check_ids()
    hold, train = split_rows(len(table), holdout, seed if split_seed is None else split_seed)
    n_hold = len(hold)
    engine = build_engine(kind, **{"seed": seed, **(params or {})})
    ids = [table.ids[i] for i in train]
    engine.fit(table.X[train], table.y[train], ids=ids)
    held_out = (
        Holdout(
            table.X[hold],
            table.y[hold],
            [subject_token(table.subjects[i]) for i in hold],
            [table.ids[i] for i in hold],
        )
        if n_hold
        else None
    )
    metrics = holdout_score(engine, held_out)
    baseline = {"version": 1, "score": next(iter(metrics.values()), None), "n_records": len(ids)}
    spec = engine_spec(
        engine,
        method="fit",
        seq=0,
        holdout_metrics=metrics,
        extra={
            "last_fit": baseline,
            "first_fit": {"version": 1, "class_scores": class_scores(metrics)},
            "deleted_since_fit": 0,
            # a feature removal may name columns by these (pipeline.plan)
            **({"feature_names": list(table.feature_names)} if table.feature_names else {}),
        },
    )
    records = [
        StoredRecord(
            record_id=table.ids[i],
            subject_id=table.subjects[i],
            features=table.X[i],
            label=table.y[i].item(),
        )
        for i in train
    ]
    if held_out is not None:  # so that an erasure of a holdout-only subject finds the model
        index_subjects(store.client, store.keys, model_id, [table.subjects[i] for i in hold])
    pub = store.models.publication(model_id, 0).set_model(spec).add_records(records)
    pub.applied_seq(0).checkpoint(engine.state_dict())
    if held_out is not None:
        pub.replace_holdout(held_out.fields())
    return engine, pub.commit()

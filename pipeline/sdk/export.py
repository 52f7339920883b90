"""Portable copies of a model version, for consumers that do not read Redis or Python.

``unlearn model export MODEL [--version N] --format json|npz --output PATH`` writes one
of two formats, both described in ``docs/model-format.md``:

* ``json``: ``{"format": "unlearn.model", "format_version": 1, "metadata": {...},
  "coef": [...], "intercept": ...}``; ``metadata`` is the version's stored metadata
  (JSON Schema ``docs/schemas/model/VersionMetadata.json``), ``coef`` and ``intercept``
  nested lists shaped as ``metadata.coef_spec.shape`` / ``intercept_spec.shape`` (a
  0-d intercept is a number). Floats are written as the shortest decimal that reads
  back to the same float64, bit for bit. Whole document:
  ``docs/schemas/model/ModelExport.json``.
* ``npz``: a NumPy ``.npz`` (a zip of ``.npy`` files, readable without NumPy's pickle):
  ``coef.npy`` and ``intercept.npy`` (little-endian float64, C order) and
  ``metadata.npy`` (a 0-d byte string: the metadata JSON, UTF-8).

:func:`load_export` reads either back into a :class:`~pipeline.store.versions.ModelVersion`.
Regenerate the JSON Schemas with ``python -m pipeline.sdk.export``.
"""

from __future__ import annotations

import io
import json
import sys
import zipfile
from pathlib import Path
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict

from pipeline.errors import InvalidInput
from pipeline.store.versions import ModelVersion, VersionMetadata

__all__ = [
    "EXPORT_FORMATS",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "MODEL_SCHEMA_DIR",
    "ModelExport",
    "check_export_target",
    "export_bytes",
    "export_document",
    "load_export",
    "model_schemas",
    "render_schema",
]

EXPORT_FORMATS = ("json", "npz")
FORMAT_NAME = "unlearn.model"
FORMAT_VERSION = 1
MODEL_SCHEMA_DIR = Path(__file__).resolve().parents[2] / "docs" / "schemas" / "model"
_DIALECT = "https://json-schema.org/draft/2020-12/schema"
_ARRAY_SPEC: dict[str, Any] = {
    "type": "object",
    "description": (
        "How the raw bytes of the array field are laid out: little-endian IEEE 754 float64 "
        "('<f8'), C (row-major) order, 8 * prod(shape) bytes; shape [] is a single value."
    ),
    "properties": {
        "dtype": {"const": "<f8"},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "maxItems": 2},
    },
    "required": ["dtype", "shape"],
    "additionalProperties": False,
}


class ModelExport(BaseModel):
    """A model version as one JSON document (``unlearn model export --format json``)."""

    model_config = ConfigDict(extra="forbid")

    format: Literal["unlearn.model"]
    format_version: Literal[1]
    metadata: VersionMetadata
    coef: list[float] | list[list[float]]
    intercept: float | list[float]


def export_document(version: ModelVersion) -> dict[str, Any]:
    """The JSON export of ``version`` as a dict (see :class:`ModelExport`)."""
    return {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "metadata": json.loads(version.metadata.model_dump_json()),
        "coef": np.asarray(version.coef, dtype=np.float64).tolist(),
        "intercept": np.asarray(version.intercept, dtype=np.float64).tolist(),
    }


def export_bytes(version: ModelVersion, fmt: str) -> bytes:
    """``version`` encoded as ``fmt`` (``"json"`` or ``"npz"``).

    Raises
    ------
    InvalidInput
        ``fmt`` is not one of :data:`EXPORT_FORMATS`.
    """
    _check_format(fmt)
    if fmt == "json":
        text = json.dumps(export_document(version), allow_nan=False)
        return (text + "\n").encode("utf-8")
    buffer = io.BytesIO()
    np.savez(
        buffer,
        coef=np.array(version.coef, dtype="<f8", order="C"),  # 0-d stays 0-d
        intercept=np.array(version.intercept, dtype="<f8", order="C"),
        metadata=np.array(version.metadata.model_dump_json().encode("utf-8")),
    )
    return buffer.getvalue()


def check_export_target(fmt: str, output: Path | None) -> None:
    """Refuse, before any work, an export that cannot be written.

    Raises
    ------
    InvalidInput
        Unknown format, binary output without a file, or a directory that does not exist.
    """
    _check_format(fmt)
    if output is None:
        if fmt == "npz":
            msg = "--format npz writes a binary file: give --output PATH (e.g. model.npz)"
            raise InvalidInput(msg)
        return
    if output.is_dir():
        msg = f"--output {output} is a directory: give a file path, e.g. {output}/model.{fmt}"
        raise InvalidInput(msg)
    if not output.parent.is_dir():
        msg = f"--output {output}: directory {output.parent} does not exist; create it first"
        raise InvalidInput(msg)


def _check_format(fmt: str) -> None:
    if fmt not in EXPORT_FORMATS:
        msg = f"export format {fmt!r} is not supported: use one of {', '.join(EXPORT_FORMATS)}"
        raise InvalidInput(msg)


def load_export(path: str | Path) -> ModelVersion:
    """Read a file written by :func:`export_bytes` (format told by its content).

    Raises
    ------
    InvalidInput
        The file is neither a JSON nor an ``.npz`` export, or its arrays do not match
        the shapes its metadata records.
    """
    raw = Path(path).read_bytes()
    if zipfile.is_zipfile(io.BytesIO(raw)):
        with np.load(io.BytesIO(raw), allow_pickle=False) as npz:
            if not {"coef", "intercept", "metadata"} <= set(npz.files):
                found = ", ".join(npz.files)
                msg = f"{path}: an .npz export holds coef, intercept and metadata; found {found}"
                raise InvalidInput(msg)
            meta = VersionMetadata.model_validate_json(npz["metadata"].item())
            coef, intercept = npz["coef"], npz["intercept"]
    else:
        try:
            doc = ModelExport.model_validate_json(raw)
        except ValueError as exc:
            msg = f"{path} is not a model export (JSON or .npz): {exc}"
            raise InvalidInput(msg) from None
        meta, coef, intercept = doc.metadata, np.asarray(doc.coef), np.asarray(doc.intercept)
    coef = np.asarray(coef, dtype=np.float64)
    intercept = np.asarray(intercept, dtype=np.float64)
    for name, array, spec in (
        ("coef", coef, meta.coef_spec),
        ("intercept", intercept, meta.intercept_spec),
    ):
        if list(array.shape) != list(spec["shape"]):
            msg = f"{path}: {name} has shape {list(array.shape)}, its metadata says {spec['shape']}"
            raise InvalidInput(msg)
    return ModelVersion(metadata=meta, coef=coef, intercept=intercept)


def model_schemas() -> dict[str, dict[str, Any]]:
    """JSON Schemas (draft 2020-12) of a version's stored metadata and of the JSON export."""
    out: dict[str, dict[str, Any]] = {}
    for cls in (VersionMetadata, ModelExport):
        schema = cls.model_json_schema(mode="serialization")
        meta = schema.get("$defs", {}).get("VersionMetadata", schema)
        for field in ("coef_spec", "intercept_spec"):  # what the store writes, exactly
            meta["properties"][field] = {"title": meta["properties"][field]["title"], **_ARRAY_SPEC}
        out[cls.__name__] = {"$schema": _DIALECT, "$id": f"{cls.__name__}.json", **schema}
    return out


def render_schema(schema: dict[str, Any]) -> str:
    """The exact text of a committed schema file (sorted keys, two-space indent)."""
    return json.dumps(schema, indent=2, sort_keys=True) + "\n"


def _write_schemas(directory: Path) -> None:
    directory.mkdir(parents=True, exist_ok=True)
    for name, schema in model_schemas().items():
        path = directory / f"{name}.json"
        path.write_text(render_schema(schema), encoding="utf-8")
        print(path)


if __name__ == "__main__":
    _write_schemas(Path(sys.argv[1]) if len(sys.argv) > 1 else MODEL_SCHEMA_DIR)

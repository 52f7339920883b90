"""Array and state encoding for Redis: raw little-endian bytes plus a JSON spec, no pickle.

An array is stored as its C-ordered little-endian bytes; its dtype and shape go next to
it as JSON (``{"dtype": "<f8", "shape": [3, 4]}``), so any language can read it back
and nothing executable is ever deserialised. Only ``float64``, ``int64`` and ``bool``
arrays are accepted: the model coefficients and the engine's checkpoint need no more.

A *state* is the engine's flat ``dict[str, ndarray | int | float | str | bool | None]``
(``model.state_dict()``); :func:`encode_state` turns it into Redis hash fields (one
field per array, plus a ``__manifest__`` with the scalars and the array specs).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from pipeline.errors import InvalidInput

__all__ = [
    "MANIFEST_FIELD",
    "StateValue",
    "decode_array",
    "decode_state",
    "encode_array",
    "encode_state",
]

MANIFEST_FIELD = "__manifest__"
StateValue = np.ndarray | int | float | str | bool | None
_ALLOWED = {"f": np.dtype("<f8"), "i": np.dtype("<i8"), "b": np.dtype("|b1")}


def encode_array(array: Any, name: str = "array") -> tuple[bytes, dict[str, Any]]:
    """Encode an array as little-endian bytes and its spec.

    Parameters
    ----------
    array : array_like of float64, int64 or bool
        Any shape, including 0-d. Not modified.
    name : str
        Used in error messages.

    Returns
    -------
    data : bytes
        C-order little-endian bytes.
    spec : dict
        ``{"dtype": str, "shape": list of int}``.
    """
    arr = np.asarray(array)
    kind = arr.dtype.kind
    if kind not in _ALLOWED or arr.dtype.itemsize != _ALLOWED[kind].itemsize:
        msg = (
            f"{name} has dtype {arr.dtype}; only float64, int64 and bool arrays can be "
            "stored: convert it with .astype(np.float64) (or int64)"
        )
        raise InvalidInput(msg)
    target = _ALLOWED[kind]
    data = np.ascontiguousarray(arr, dtype=target).tobytes(order="C")
    return data, {"dtype": target.str, "shape": list(arr.shape)}


def decode_array(data: bytes, spec: Mapping[str, Any], name: str = "array") -> np.ndarray:
    """Rebuild a writable array from :func:`encode_array` output.

    Raises
    ------
    InvalidInput
        The byte count does not match the spec's dtype and shape (corrupt entry).
    """
    dtype = np.dtype(spec["dtype"])
    if dtype.kind not in _ALLOWED:
        msg = f"{name}: stored dtype {dtype} is not one this store writes"
        raise InvalidInput(msg)
    shape = tuple(int(n) for n in spec["shape"])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(data) != expected:
        msg = f"{name}: {len(data)} bytes stored, spec {dtype.str}{list(shape)} needs {expected}"
        raise InvalidInput(msg)
    return np.frombuffer(data, dtype=dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _scalar(name: str, value: Any) -> int | float | str | bool | None:
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        item = value.item()
        if isinstance(item, bool | int | float):
            return item
    msg = (
        f"state entry {name!r} has type {type(value).__name__}; a state holds numpy arrays "
        "and int, float, str, bool or None scalars"
    )
    raise InvalidInput(msg)


def encode_state(state: Mapping[str, StateValue]) -> dict[str, bytes]:
    """Encode an engine state as Redis hash fields.

    Returns
    -------
    dict of str to bytes
        ``__manifest__`` (JSON: ``{"arrays": {name: spec}, "scalars": {name: value}}``)
        and one raw-bytes field per array, named ``a:<name>``.
    """
    arrays: dict[str, dict[str, Any]] = {}
    scalars: dict[str, Any] = {}
    fields: dict[str, bytes] = {}
    for name, value in state.items():
        if not isinstance(name, str) or not name:
            msg = f"state keys must be non-empty strings, got {name!r}"
            raise InvalidInput(msg)
        if isinstance(value, np.ndarray):
            data, spec = encode_array(value, name=f"state entry {name!r}")
            arrays[name] = spec
            fields[f"a:{name}"] = data
        else:
            scalars[name] = _scalar(name, value)
    manifest = {"order": list(state), "arrays": arrays, "scalars": scalars}
    fields[MANIFEST_FIELD] = json.dumps(manifest, allow_nan=True).encode()
    return fields


def decode_state(fields: Mapping[bytes | str, bytes]) -> dict[str, StateValue]:
    """Inverse of :func:`encode_state`: arrays bit-identical, scalars with their types."""
    raw = {k.decode() if isinstance(k, bytes) else k: v for k, v in fields.items()}
    if MANIFEST_FIELD not in raw:
        msg = "checkpoint has no manifest: it was not written by this store"
        raise InvalidInput(msg)
    manifest = json.loads(raw[MANIFEST_FIELD])
    state: dict[str, StateValue] = {}
    for name in manifest["order"]:
        if name in manifest["arrays"]:
            spec = manifest["arrays"][name]
            state[name] = decode_array(raw[f"a:{name}"], spec, name=f"state entry {name!r}")
        else:
            state[name] = manifest["scalars"][name]
    return state

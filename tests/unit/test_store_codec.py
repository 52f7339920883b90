"""Array/state codec and key layout of the Redis store (no Redis needed)."""

from __future__ import annotations

import ast
import pathlib
import re

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from pipeline.errors import InvalidInput
from pipeline.store.codec import decode_array, decode_state, encode_array, encode_state
from pipeline.store.keys import KeySpace, subject_token

ROOT = pathlib.Path(__file__).resolve().parents[2]
KEY_LIKE = re.compile(r":\{[^}]+\}")


@given(
    hnp.arrays(
        dtype=st.sampled_from([np.float64, np.int64, np.bool_, np.dtype(">f8"), np.dtype(">i8")]),
        shape=hnp.array_shapes(min_dims=0, max_dims=4, min_side=0, max_side=5),
    )
)
def test_arrays_round_trip_bit_identically(array: np.ndarray) -> None:
    data, spec = encode_array(array)
    back = decode_array(data, spec)
    assert back.shape == array.shape and back.dtype.kind == array.dtype.kind
    little = array.astype(array.dtype.newbyteorder("<"))
    assert back.tobytes() == little.tobytes()
    assert spec["dtype"] in ("<f8", "<i8", "|b1")


def test_corrupt_or_foreign_arrays_are_refused() -> None:
    data, spec = encode_array(np.arange(4.0))
    with pytest.raises(InvalidInput, match="bytes stored"):
        decode_array(data[:-1], spec)
    with pytest.raises(InvalidInput, match="float32"):
        encode_array(np.zeros(2, dtype=np.float32), "coef")
    with pytest.raises(InvalidInput, match="object"):
        encode_array(np.array([object()]))


def test_state_keeps_order_types_and_values() -> None:
    state = {
        "b": np.eye(2),
        "a": 3,
        "x": 0.1,
        "s": "ovr",
        "flag": False,
        "none": None,
        "np_int": np.int64(7),
    }
    fields = encode_state(state)
    assert all(isinstance(v, bytes) for v in fields.values())
    back = decode_state({k.encode(): v for k, v in fields.items()})
    assert list(back) == list(state)
    assert back["a"] == 3 and type(back["a"]) is int and back["flag"] is False
    assert back["none"] is None and back["np_int"] == 7 and type(back["np_int"]) is int
    np.testing.assert_array_equal(back["b"], np.eye(2))
    with pytest.raises(InvalidInput, match="manifest"):
        decode_state({})
    with pytest.raises(InvalidInput, match="non-empty strings"):
        encode_state({"": 1})


def test_keys_carry_the_model_hash_tag() -> None:
    keys = KeySpace("ns")
    per_model = [
        keys.current("m1"),
        keys.version("m1", 3),
        keys.versions("m1"),
        keys.checkpoint("m1", 3),
        keys.checkpoints("m1"),
        keys.applied_seq("m1"),
        keys.events("m1"),
        keys.channel("m1"),
        keys.record("m1", "r:1"),
        keys.records("m1"),
        keys.subject_records("m1", "a@b.c"),
        keys.receipt("m1", "q"),
        keys.pending("m1"),
    ]
    assert len(set(per_model)) == len(per_model)
    for key in per_model:
        assert key.startswith("ns:{m1}:")
    assert keys.subject_models("a@b.c") == f"ns:{{s:{subject_token('a@b.c')}}}:models"
    assert "a@b.c" not in keys.subject_records("m1", "a@b.c")


@pytest.mark.parametrize("bad", ["", "{m}", "a b", "-x", "m" * 129])
def test_invalid_model_ids_and_namespaces(bad: str) -> None:
    with pytest.raises(InvalidInput, match="model id"):
        KeySpace().current(bad)
    if bad:
        with pytest.raises(InvalidInput):
            KeySpace(bad + "{")


def test_no_key_strings_outside_keys_module() -> None:
    """Key names are spelled only in pipeline/store/keys.py."""
    offenders = []
    for path in (ROOT / "pipeline").rglob("*.py"):
        if path.name == "keys.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.JoinedStr):  # f-string: placeholders become "X"
                parts = [v.value if isinstance(v, ast.Constant) else "X" for v in node.values]
                text = "".join(str(p) for p in parts)
            elif isinstance(node, ast.Constant) and isinstance(node.value, str):
                text = node.value
            else:
                continue
            if text.startswith("unlearn:") or KEY_LIKE.search(text):
                offenders.append(f"{path.relative_to(ROOT)}: {text!r}")
    assert offenders == []

"""Engine checkpoints on a real redis-server: bit-identical round trip, current version."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.errors import InvalidInput
from pipeline.store import ModelSpec, Store


def engine_state(seed: int) -> dict[str, object]:
    rng = np.random.default_rng(seed)
    special = np.array([np.nan, np.inf, -np.inf, -0.0, 5e-324, np.finfo(np.float64).max])
    return {
        "hessian_factor": rng.standard_normal((7, 7)),
        "per_class": rng.standard_normal((3, 5, 5)),
        "fortran": np.asfortranarray(rng.standard_normal((4, 3))),
        "big_endian": rng.standard_normal(6).astype(">f8"),
        "special": special,
        "counts": np.array([np.iinfo(np.int64).min, -1, 0, np.iinfo(np.int64).max]),
        "mask": rng.random(9) > 0.5,
        "scalar_array": np.array(2.5),
        "empty": np.zeros((0, 3)),
        "n_seen": 12345,
        "lam": 1e-3,
        "sigma": np.float64(0.25),
        "kind": "logistic",
        "fitted": True,
        "seed": None,
    }


def assert_identical(got: dict[str, object], want: dict[str, object]) -> None:
    assert list(got) == list(want)
    for name, value in want.items():
        if isinstance(value, np.ndarray):
            out = got[name]
            assert isinstance(out, np.ndarray), name
            assert out.shape == value.shape and out.dtype.kind == value.dtype.kind, name
            assert (
                out.astype(value.dtype.newbyteorder("<")).tobytes()
                == value.astype(value.dtype.newbyteorder("<")).tobytes()
            ), name
            assert out.flags.writeable, name
        else:
            assert got[name] == value and type(got[name]) is type(
                value.item() if isinstance(value, np.generic) else value
            ), name


def spec(seq: int) -> ModelSpec:
    return ModelSpec(kind="ridge", coef=np.ones(3), intercept=0.0, method="fit", seq=seq)


def test_checkpoint_round_trip_is_bit_identical(store: Store) -> None:
    state = engine_state(0)
    store.models.publication("m", 0).set_model(spec(1)).checkpoint(state).commit()
    loaded = store.checkpoints.load("m")
    assert loaded is not None and loaded.version == 1
    assert_identical(loaded.state, state)


def test_load_follows_the_current_version(store: Store) -> None:
    store.models.publication("m", 0).set_model(spec(1)).checkpoint(engine_state(1)).commit()
    store.models.publication("m", 1).set_model(spec(2)).checkpoint(engine_state(2)).commit()
    loaded = store.checkpoints.load("m")
    assert loaded is not None and loaded.version == 2
    assert_identical(loaded.state, engine_state(2))
    assert store.checkpoints.versions("m") == [2]  # older checkpoints are dropped
    assert store.checkpoints.load("m", 1) is None

    store.models.publication("m", 2).set_model(spec(3)).checkpoint(
        engine_state(3), keep_older=True
    ).commit()
    assert store.checkpoints.versions("m") == [2, 3]
    store.models.publish("m", spec(4), 3)  # published without a checkpoint
    assert store.checkpoints.load("m") is None
    assert store.checkpoints.load("m", 3) is not None
    assert store.checkpoints.load("never-published") is None


def test_save_outside_a_publication(store: Store) -> None:
    store.checkpoints.save("m", 1, {"w": np.arange(3.0)})
    loaded = store.checkpoints.load("m", 1)
    assert loaded is not None
    np.testing.assert_array_equal(loaded.state["w"], [0.0, 1.0, 2.0])


def test_unsupported_values_are_refused(store: Store) -> None:
    with pytest.raises(InvalidInput, match="float32"):
        store.checkpoints.save("m", 1, {"w": np.zeros(3, dtype=np.float32)})
    with pytest.raises(InvalidInput, match="list"):
        store.checkpoints.save("m", 1, {"w": [1.0, 2.0]})
    assert store.checkpoints.load("m", 1) is None

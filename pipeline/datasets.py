"""The real datasets used by tests and benchmarks, read from a folder beside the project.

They are never copied into the repository: the folder is ``$UNLEARN_DATASETS`` or, by
default, ``../shared/datasets`` from the project's root. Each ``.npz`` holds ``X`` and ``y``
and, where a standard split exists, ``X_test`` and ``y_test``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from pipeline.errors import ConfigError

__all__ = ["Dataset", "dataset_dir", "guo_preprocess", "load"]

_TEST_FILES = {"mnist_3v8_train": "mnist_3v8_t10k", "mnist_train": "mnist_t10k"}


@dataclass(frozen=True)
class Dataset:
    """A training split and, when there is one, a test split."""

    name: str
    X: NDArray[np.float64]
    y: NDArray[np.int64]
    X_test: NDArray[np.float64] | None
    y_test: NDArray[np.int64] | None


_VARIABLE = "UNLEARN_DATASETS"


def dataset_dir() -> Path:
    """Where the datasets live: ``$UNLEARN_DATASETS``, else ``<project>/../shared/datasets``.

    Raises
    ------
    ConfigError
        Neither exists; the message names both and how to fix it.
    """
    env = os.environ.get(_VARIABLE)
    beside = Path(__file__).resolve().parents[2] / "shared" / "datasets"
    root = Path(env) if env else beside
    if not root.is_dir():
        given = f"{_VARIABLE}={env} is not a folder" if env else f"{_VARIABLE} is not set"
        msg = (
            f"the datasets folder was not found: {given}, and {beside} does not exist; "
            f"set {_VARIABLE} to the folder that holds the project's .npz datasets"
        )
        raise ConfigError(msg)
    return root


def guo_preprocess(X: NDArray[np.generic]) -> NDArray[np.float64]:
    """Pixels to [0, 1], minus 0.5, every row scaled to unit L2 norm (Guo et al., 2020)."""
    Z = X.astype(np.float64) / 255.0 - 0.5
    norms = np.linalg.norm(Z, axis=1, keepdims=True)
    return Z / np.where(norms > 0, norms, 1.0)


def load(name: str, *, preprocess: bool = True) -> Dataset:
    """Load ``<name>.npz`` (e.g. ``"mnist_3v8_train"``) with its test split.

    Image sets are preprocessed with :func:`guo_preprocess` unless ``preprocess=False``.
    """
    root = dataset_dir()
    path = root / f"{name}.npz"
    if not path.exists():
        msg = (
            f"dataset {name!r} not found at {path}; set {_VARIABLE} to the folder "
            "that holds the project's .npz datasets"
        )
        raise ConfigError(msg)
    with np.load(path) as data:
        X, y = data["X"], data["y"].astype(np.int64)
        X_test = data["X_test"] if "X_test" in data.files else None
        y_test = data["y_test"].astype(np.int64) if "y_test" in data.files else None
    test_name = _TEST_FILES.get(name)
    if test_name is not None:
        with np.load(root / f"{test_name}.npz") as data:
            X_test, y_test = data["X"], data["y"].astype(np.int64)
    prep = guo_preprocess if preprocess else (lambda A: A.astype(np.float64))
    return Dataset(
        name=name,
        X=prep(X),
        y=y,
        X_test=None if X_test is None else prep(X_test),
        y_test=y_test,
    )

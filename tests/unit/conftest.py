"""Small real datasets for the engine's unit tests (no network, no services)."""

import numpy as np
import pytest
from sklearn.datasets import load_breast_cancer, load_digits

from pipeline.datasets import load


def _unit_rows(X):
    X = (X - X.mean(axis=0)) / np.where(X.std(axis=0) > 0, X.std(axis=0), 1.0)
    return X / np.linalg.norm(X, axis=1).max()


@pytest.fixture(scope="session")
def cancer():
    """Breast cancer (569 x 30, binary), standardised, rows within the unit ball."""
    X, y = load_breast_cancer(return_X_y=True)
    return _unit_rows(X), y


@pytest.fixture(scope="session")
def digits():
    """Digits (1797 x 64, ten classes), pixels scaled to [0, 1]."""
    X, y = load_digits(return_X_y=True)
    return X / 16.0, y


@pytest.fixture(scope="session")
def mnist_3v8():
    """Guo et al.'s MNIST 3-vs-8 set, preprocessed as in the paper."""
    return load("mnist_3v8_train")

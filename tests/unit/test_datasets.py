"""The real datasets are found where the README says, or the error says how to fix it."""

from __future__ import annotations

import numpy as np
import pytest

from pipeline.datasets import dataset_dir, load
from pipeline.errors import ConfigError


def test_the_variable_names_the_folder(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "tiny.npz", X=rng.random((4, 3)), y=np.array([0, 1, 0, 1]))
    monkeypatch.setenv("UNLEARN_DATASETS", str(tmp_path))
    assert dataset_dir() == tmp_path
    ds = load("tiny", preprocess=False)
    assert ds.X.shape == (4, 3) and ds.y.tolist() == [0, 1, 0, 1] and ds.X_test is None


def test_a_missing_folder_names_both_places_and_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_DATASETS", str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError) as caught:
        load("mnist_3v8_train")
    message = str(caught.value)
    assert "UNLEARN_DATASETS=" in message and "nowhere" in message
    assert "shared/datasets" in message and "set UNLEARN_DATASETS" in message


def test_a_missing_file_names_the_dataset(tmp_path, monkeypatch):
    monkeypatch.setenv("UNLEARN_DATASETS", str(tmp_path))
    with pytest.raises(ConfigError, match="'absent' not found"):
        load("absent")

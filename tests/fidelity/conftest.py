"""The fidelity tier: the engine on the real datasets (``pipeline.datasets``), no services.

The datasets live outside the repository (``../shared/datasets`` or ``$UNLEARN_DATASETS``);
a missing folder is a failure that names both, never a skip.
"""

import pytest

from pipeline.datasets import load


@pytest.fixture(scope="session")
def mnist_3v8():
    """Guo et al.'s MNIST 3-vs-8 set, preprocessed as in the paper."""
    return load("mnist_3v8_train")

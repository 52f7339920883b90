"""A streaming machine-unlearning pipeline: the library.

Importable without a broker. The names here are what an application needs; the engine,
the Redis state, the events and the clients live in the subpackages.
"""

from pipeline.errors import PipelineError
from pipeline.unlearning import LogisticUnlearner, RidgeUnlearner, UpdateReport

__all__ = [
    "LogisticUnlearner",
    "PipelineError",
    "RidgeUnlearner",
    "UpdateReport",
]

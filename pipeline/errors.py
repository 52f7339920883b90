"""The project's exceptions: one root, leaves that carry the data an operator needs.

Every message names the offending value and says how to fix it, so a CLI can print
``str(exc)`` without a traceback and a worker can put it in a dead letter's reason.
"""

from __future__ import annotations

from collections.abc import Hashable

__all__ = [
    "ConfigError",
    "DuplicateRecord",
    "InvalidInput",
    "ModelVersionConflict",
    "NotFitted",
    "PipelineError",
    "SchemaError",
    "UnknownClass",
    "NoEngineCheckpoint",
    "UnknownModel",
    "UnknownRecord",
]


class PipelineError(Exception):
    """Root of every error this project raises on purpose."""


class NotFitted(PipelineError):
    """An unlearner was used before ``fit``."""

    def __init__(self, what: str) -> None:
        msg = f"{what} is not fitted yet: call fit(X, y) first"
        super().__init__(msg)


class InvalidInput(PipelineError):
    """Arrays handed to the engine have the wrong shape, type or values."""


class UnknownRecord(PipelineError):
    """A record id that the model never held."""

    def __init__(self, record_id: Hashable, model: str = "the model") -> None:
        self.record_id = record_id
        msg = (
            f"record {record_id!r} is not in {model}: it was never learned "
            "(check the id, or learn the record before forgetting it)"
        )
        super().__init__(msg)


class DuplicateRecord(PipelineError):
    """A record id that the model already holds was learned again."""

    def __init__(self, record_id: Hashable) -> None:
        self.record_id = record_id
        msg = (
            f"record {record_id!r} is already in the model: forget it first to replace it, "
            "or give the new record a new id"
        )
        super().__init__(msg)


class UnknownClass(PipelineError):
    """A label the model was not fitted with."""

    def __init__(self, label: object, classes: object) -> None:
        self.label = label
        msg = f"label {label!r} is not one of the model's classes {classes!r}: refit to add a class"
        super().__init__(msg)


class UnknownModel(PipelineError):
    """A model id with nothing stored under it."""

    def __init__(self, model_id: str) -> None:
        self.model_id = model_id
        msg = f"model {model_id!r} does not exist: train it first (unlearn train {model_id} ...)"
        super().__init__(msg)


class ModelVersionConflict(PipelineError):
    """Two writers raced to publish the next version of the same model."""

    def __init__(self, model_id: str, expected: int, found: int) -> None:
        self.model_id = model_id
        self.expected = expected
        self.found = found
        msg = (
            f"model {model_id!r}: expected current version {expected}, found {found}; "
            "another writer published first, reload the model and retry"
        )
        super().__init__(msg)


class SchemaError(PipelineError):
    """An event that does not match its schema."""

    def __init__(self, field: str, value: object, reason: str) -> None:
        self.field = field
        self.value = value
        self.reason = reason
        shown = repr(value)
        if len(shown) > 80:
            shown = shown[:77] + "..."
        msg = f"field {field!r} = {shown}: {reason}"
        super().__init__(msg)


class ConfigError(PipelineError):
    """A setting that is missing or out of range."""


class NoEngineCheckpoint(PipelineError):
    """A model published without an engine checkpoint (a federated model, or one written by
    another tool): the worker and the retrainer cannot change it."""

    def __init__(self, model_id: str, version: int) -> None:
        self.model_id = model_id
        msg = (
            f"model {model_id!r} v{version} has no engine checkpoint (a federated model, or one "
            "published outside this pipeline): the worker cannot change it; a federated "
            "model forgets a client or a class (ClientRemoved, ClassRemoved)"
        )
        super().__init__(msg)

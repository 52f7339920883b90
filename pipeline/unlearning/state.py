"""Checkpoint fields, declared where the attribute is declared.

A checkpoint is a flat mapping of names to numpy arrays and JSON scalars
(:mod:`pipeline.store.codec` stores it in Redis). Which attributes it holds is read from the
class's annotations, never from a list kept by hand::

    class ExactCertificate:
        residual: Annotated[Array, Saved()]        # in the checkpoint, as "residual"
        _W: Annotated[Array, Saved()]              # as "W" (leading/trailing "_" dropped)
        classes_: Annotated[NDArray[Any], Saved("classes_json", dump=..., load=...)]
        gram_drift: Annotated[Array, Derived("G (w - w_ref), one product on resume")]

:func:`dump_fields` writes every :class:`Saved` attribute, :func:`load_fields` reads each
back (and raises, naming the key, when one is missing). A :class:`Derived` attribute is
rebuilt from the saved ones when a model resumes, and says how. The checkpoint tests
(``tests/unit/test_checkpoint_params.py``) check that every attribute an engine object holds
is a constructor parameter, :class:`Saved` or :class:`Derived`: a new attribute that is
none of them fails them, which is how a field forgotten by a checkpoint is caught.

Values are converted by their annotated type: ``ndarray`` to a float64 copy (C order), and
``bool``, ``int``, ``float``, ``str`` to that Python type (never a numpy scalar). Any other
type gives its own ``dump`` and ``load``.
"""

from __future__ import annotations

import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from pipeline.errors import InvalidInput

__all__ = [
    "Derived",
    "Saved",
    "StateField",
    "derived_fields",
    "dump_fields",
    "load_fields",
    "saved_fields",
]


@dataclass(frozen=True)
class Saved:
    """Marks an attribute as part of the checkpoint: ``Annotated[T, Saved()]``.

    Parameters
    ----------
    key : str, optional
        Its checkpoint key; by default the attribute's name without leading and trailing
        underscores.
    dump, load : callable, optional
        ``dump(value) -> stored`` and ``load(stored) -> value``, for a type the defaults do
        not cover (arrays, bool, int, float, str).
    """

    key: str | None = None
    dump: Callable[[Any], Any] | None = None
    load: Callable[[Any], Any] | None = None


@dataclass(frozen=True)
class Derived:
    """Marks an attribute that is not saved but rebuilt on resume; ``how`` says from what."""

    how: str


@dataclass(frozen=True)
class StateField:
    """One saved attribute: where it lives, its key, and how it is converted."""

    attr: str
    key: str
    dump: Callable[[Any], Any]
    load: Callable[[Any], Any]


def _array_dump(value: Any) -> np.ndarray:
    return np.array(value, dtype=np.float64)


def _array_load(stored: Any) -> np.ndarray:
    return np.array(stored, dtype=np.float64, order="C")


_DEFAULTS: dict[type, tuple[Callable[[Any], Any], Callable[[Any], Any]]] = {
    np.ndarray: (_array_dump, _array_load),
    bool: (bool, bool),
    int: (int, int),
    float: (float, float),
    str: (str, str),
}


def _markers(cls: type[Any]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every annotated attribute of ``cls`` and its bases: name -> (type, markers)."""
    hints = typing.get_type_hints(cls, include_extras=True)
    out = {}
    for attr, hint in hints.items():
        if typing.get_origin(hint) is Annotated:
            base, *extras = typing.get_args(hint)
            out[attr] = (base, tuple(extras))
    return out


_SAVED: dict[type[Any], tuple[StateField, ...]] = {}


def saved_fields(cls: type[Any]) -> tuple[StateField, ...]:
    """The :class:`Saved` attributes of ``cls`` (bases first, in declaration order)."""
    if cls not in _SAVED:
        _SAVED[cls] = _saved_fields(cls)
    return _SAVED[cls]


def _saved_fields(cls: type[Any]) -> tuple[StateField, ...]:
    fields = []
    for attr, (base, extras) in _markers(cls).items():
        for marker in extras:
            if not isinstance(marker, Saved):
                continue
            origin = typing.get_origin(base) or base
            dump, load = _DEFAULTS.get(origin, (None, None))
            dump, load = marker.dump or dump, marker.load or load
            if dump is None or load is None:
                msg = (
                    f"{cls.__name__}.{attr}: type {base!r} has no default conversion; give "
                    "Saved(dump=..., load=...)"
                )
                raise TypeError(msg)
            fields.append(StateField(attr, marker.key or attr.strip("_"), dump, load))
    return tuple(fields)


def derived_fields(cls: type[Any]) -> dict[str, str]:
    """The :class:`Derived` attributes of ``cls``: name -> how it is rebuilt."""
    return {
        attr: marker.how
        for attr, (_, extras) in _markers(cls).items()
        for marker in extras
        if isinstance(marker, Derived)
    }


def dump_fields(obj: Any, fields: tuple[StateField, ...] | None = None) -> dict[str, Any]:
    """The checkpoint entries of ``obj``'s saved attributes (copies)."""
    fields = saved_fields(type(obj)) if fields is None else fields
    return {f.key: f.dump(getattr(obj, f.attr)) for f in fields}


def load_fields(
    obj: Any,
    state: Mapping[str, Any],
    *,
    what: str,
    fields: tuple[StateField, ...] | None = None,
) -> None:
    """Set ``obj``'s saved attributes from a checkpoint.

    Raises
    ------
    InvalidInput
        A saved attribute's key is missing from ``state`` (named, with ``what`` saying
        whose checkpoint it is).
    """
    fields = saved_fields(type(obj)) if fields is None else fields
    for f in fields:
        if f.key not in state:
            msg = (
                f"{what} checkpoint has no {f.key!r}: it was not written by this version of "
                "the engine; refit the model from its records"
            )
            raise InvalidInput(msg)
        setattr(obj, f.attr, f.load(state[f.key]))

"""Checkpoint fields, declared where the attribute is declared.

A checkpoint is a flat mapping of names to numpy arrays and JSON scalars
(:mod:`pipeline.store.codec` stores it in Redis). Which attributes it holds is read from the
class's annotations, never from a list kept by hand::

    class BoundCertificate(Certificate):
        gram: Annotated[Array, Saved(dump=_symmetric)]      # saved as "gram"
        gram_drift: Annotated[Array, Transient("G (w - w_ref), one product on resume")]

    class LogisticUnlearner(BaseUnlearner):
        _W: Annotated[Array, Saved()]                        # saved as "W"
        _certificate: Annotated[Certificate, Part()]         # saves its own fields

Three markers say what becomes of an attribute:

:class:`Saved`
    written by :func:`dump_fields` under its name without leading and trailing underscores
    (or ``key``), read back by :func:`load_fields`, which names a missing key.
:class:`Part`
    an object that saves its own fields into the same checkpoint (its ``state_dict``).
:class:`Transient`
    not saved: rebuilt from the saved fields on resume, or meaningful only in the process
    that set it; ``why`` says which.

A constructor parameter needs no marker: :meth:`~pipeline.unlearning.base.BaseUnlearner.
get_params` reads the constructor's signature. :func:`undeclared` lists the attributes an
object holds that are none of these; the checkpoint round-trip test
(``tests/unit/test_checkpoint_params.py``) requires it to be empty for every model kind, so
an attribute added without saying what becomes of it fails there, not in a resumed worker.

Values are converted by their annotated type: ``ndarray`` to a float64 copy (C order),
``bool``, ``int``, ``float``, ``str`` to that Python type (never a numpy scalar), and a class
with ``to_array()`` and ``from_array(array)`` through one float64 array. :func:`json_array`
stores an array of labels as JSON text. Any other type, or a field whose stored form depends
on its owner, gives ``dump(owner, value)`` and ``load(owner, stored)``.
"""

from __future__ import annotations

import json
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Annotated, Any

import numpy as np

from pipeline.errors import InvalidInput

__all__ = [
    "Part",
    "Saved",
    "StateField",
    "Transient",
    "declared",
    "dump_fields",
    "json_array",
    "load_fields",
    "saved_fields",
    "undeclared",
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
        ``dump(owner, value) -> stored`` and ``load(owner, stored) -> value``, for a type the
        defaults do not cover (arrays, bool, int, float, str) or a stored form that depends
        on the owner. ``load`` runs after the fields declared before it are set.
    """

    key: str | None = None
    dump: Callable[[Any, Any], Any] | None = None
    load: Callable[[Any, Any], Any] | None = None


@dataclass(frozen=True)
class Part:
    """Marks an attribute holding an object that saves its own fields (``state_dict``)."""


@dataclass(frozen=True)
class Transient:
    """Marks an attribute that is not saved; ``why`` says how it is rebuilt, or why not."""

    why: str


@dataclass(frozen=True)
class StateField:
    """One saved attribute: where it lives, its key, and how it is converted."""

    attr: str
    key: str
    dump: Callable[[Any, Any], Any]
    load: Callable[[Any, Any], Any]


def _convert(to: Callable[[Any], Any]) -> Callable[[Any, Any], Any]:
    return lambda _owner, value: to(value)


_DEFAULTS: dict[type, tuple[Callable[[Any, Any], Any], Callable[[Any, Any], Any]]] = {
    np.ndarray: (
        _convert(lambda v: np.array(v, dtype=np.float64)),
        _convert(lambda v: np.array(v, dtype=np.float64, order="C")),
    ),
    bool: (_convert(bool), _convert(bool)),
    int: (_convert(int), _convert(int)),
    float: (_convert(float), _convert(float)),
    str: (_convert(str), _convert(str)),
}

_MARKERS: dict[type[Any], dict[str, tuple[Any, tuple[Any, ...]]]] = {}
_SAVED: dict[type[Any], tuple[StateField, ...]] = {}


def _markers(cls: type[Any]) -> dict[str, tuple[Any, tuple[Any, ...]]]:
    """Every ``Annotated`` attribute of ``cls`` and its bases: name -> (type, markers)."""
    if cls not in _MARKERS:
        out = {}
        for attr, hint in typing.get_type_hints(cls, include_extras=True).items():
            if typing.get_origin(hint) is Annotated:
                base, *extras = typing.get_args(hint)
                out[attr] = (base, tuple(extras))
        _MARKERS[cls] = out
    return _MARKERS[cls]


def saved_fields(cls: type[Any]) -> tuple[StateField, ...]:
    """The :class:`Saved` attributes of ``cls`` (bases first, in declaration order)."""
    if cls not in _SAVED:
        fields = []
        for attr, (base, extras) in _markers(cls).items():
            for marker in extras:
                if isinstance(marker, Saved):
                    fields.append(_field(cls, attr, base, marker))
        _SAVED[cls] = tuple(fields)
    return _SAVED[cls]


def json_array(key: str) -> Saved:
    """A field holding an array of labels (ints, floats or strings), saved as JSON text."""
    return Saved(
        key,
        dump=lambda _owner, value: json.dumps(np.asarray(value).tolist()),
        load=lambda _owner, text: np.asarray(json.loads(text)),
    )


def _field(cls: type[Any], attr: str, base: Any, marker: Saved) -> StateField:
    dump, load = _DEFAULTS.get(typing.get_origin(base) or base, (None, None))
    if hasattr(base, "to_array") and hasattr(base, "from_array"):
        dump = _convert(lambda v: v.to_array())
        load = _convert(lambda a: base.from_array(np.asarray(a, dtype=np.float64)))
    dump, load = marker.dump or dump, marker.load or load
    if dump is None or load is None:
        msg = (
            f"{cls.__name__}.{attr}: no default conversion for {base!r}; declare it as "
            "Saved(dump=..., load=...)"
        )
        raise TypeError(msg)
    return StateField(attr, marker.key or attr.strip("_"), dump, load)


def declared(cls: type[Any], marker: type[Any]) -> tuple[str, ...]:
    """The attributes of ``cls`` carrying a marker of type ``marker`` (``Part``, ...)."""
    return tuple(
        attr
        for attr, (_, extras) in _markers(cls).items()
        if any(isinstance(m, marker) for m in extras)
    )


def undeclared(obj: Any, params: Iterable[str] = ()) -> list[str]:
    """Attributes ``obj`` holds that are neither ``params`` nor marked :class:`Saved`,
    :class:`Part` or :class:`Transient`: attributes a checkpoint would silently lose."""
    cls = type(obj)
    known = set(params) | {f.attr for f in saved_fields(cls)}
    known |= set(declared(cls, Part)) | set(declared(cls, Transient))
    return sorted(set(vars(obj)) - known)


def dump_fields(obj: Any) -> dict[str, Any]:
    """The checkpoint entries of ``obj``'s saved attributes (copies)."""
    return {f.key: f.dump(obj, getattr(obj, f.attr)) for f in saved_fields(type(obj))}


def load_fields(
    obj: Any,
    state: Mapping[str, Any],
    *,
    what: str,
    fields: tuple[StateField, ...] | None = None,
) -> None:
    """Set ``obj``'s saved attributes (or ``fields`` of them) from a checkpoint.

    Raises
    ------
    InvalidInput
        A saved attribute's key is missing from ``state`` (named, with ``what`` saying
        whose checkpoint it is).
    """
    for f in saved_fields(type(obj)) if fields is None else fields:
        if f.key not in state:
            msg = (
                f"{what} checkpoint has no {f.key!r}: it was not written by this version of "
                "the engine; fit the model again from its records"
            )
            raise InvalidInput(msg)
        setattr(obj, f.attr, f.load(obj, state[f.key]))

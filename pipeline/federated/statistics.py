r"""What the server asks for and what a client answers, and their form on the wire.

A round of the protocol is a :class:`RoundRequest` (the global model ``W`` and what to
compute at it) and one :class:`ClientStatistics` per member client. For K stacked problems
(one per one-vs-rest class, 1 for a binary or ridge model) a client c with rows
:math:`D_c` answers, for every problem k,

.. math::

    g_{ck} = \sum_{i \in D_c} \nabla_w \ell(x_i, y_{ik}; w_k), \qquad
    H_{ck} = \sum_{i \in D_c} \nabla^2_w \ell(x_i, y_{ik}; \bar w_k), \qquad n_c = |D_c|

the loss terms only, with the curvature taken at ``curvature_at`` (:math:`\bar w`, the
model of the round that asked for it, so that every client's curvature describes the same
point); the server adds the regulariser and the perturbation. ``rows_label`` restricts
:math:`D_c` to the rows with that label: the class-k contribution used to remove a class.

On ``unlearn.federated`` one statistics object is K :class:`~pipeline.events.ClientStats`
events (:meth:`ClientStatistics.to_events`), problem k's labelled ``class_label`` = the
class of that one-vs-rest problem (``None`` when there is one problem), its Hessian
row-major. The schema-1 event requires a Hessian and has no field for ``rows_label``, so
gradient-only reports and class-k contributions cannot be published with it yet (see
:meth:`ClientStatistics.to_events`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import numpy as np
from numpy.typing import NDArray

from pipeline.events import ClientStats, Label
from pipeline.federated.errors import FederatedError

__all__ = ["ClientStatistics", "ModelKind", "RoundRequest"]

Array = NDArray[np.float64]
#: A model kind's name (:data:`pipeline.unlearning.kinds.KINDS`) whose entry has a federated
#: server.
ModelKind = str


def _plain(label: Any) -> Label | None:
    """A numpy scalar label as the int, float or str an event carries."""
    if label is None:
        return None
    value = label.item() if isinstance(label, np.generic) else label
    if not isinstance(value, int | float | str):
        msg = f"label {label!r} is not an int, float or str and cannot go into an event"
        raise FederatedError(msg)
    return value


@dataclass(frozen=True, eq=False)
class RoundRequest:
    """What the server asks every member client to compute in one round.

    Attributes
    ----------
    kind : str
        The model kind, whose federated server computes the statistics (the loss:
        logistic with labels in {-1, +1} per problem, or ridge's squared error).
    round : int
        The round the answers must carry.
    W : ndarray of shape (n_problems, n_features)
        The global model at which gradients are taken (a constant last feature when
        ``augment``).
    curvature : bool
        Whether the Hessian contributions are wanted this round.
    curvature_at : ndarray of shape (n_problems, n_features), optional
        Where to take the curvature; ``W`` when None.
    classes : tuple, optional
        Labels the model predicts; a client uses only its rows with these labels (None:
        every row, as for ridge).
    problems : tuple, optional
        The positive label of every logistic problem (one-vs-rest: ``classes``; binary:
        the second class).
    rows_label : int, float or str, optional
        Use only the rows with this label (the class-k contribution of a class removal).
    augment : bool
        Append a constant 1 feature to every row (ridge's intercept).
    """

    kind: ModelKind
    round: int
    W: Array
    curvature: bool
    curvature_at: Array | None = None
    classes: tuple[Label, ...] | None = None
    problems: tuple[Label, ...] | None = None
    rows_label: Label | None = None
    augment: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form (floats round-trip exactly through JSON)."""
        return {
            "kind": self.kind,
            "round": self.round,
            "W": self.W.tolist(),
            "curvature": self.curvature,
            "curvature_at": None if self.curvature_at is None else self.curvature_at.tolist(),
            "classes": None if self.classes is None else [_plain(c) for c in self.classes],
            "problems": None if self.problems is None else [_plain(c) for c in self.problems],
            "rows_label": _plain(self.rows_label),
            "augment": self.augment,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RoundRequest:
        """The request :meth:`to_dict` wrote."""
        at = data.get("curvature_at")
        classes, problems = data.get("classes"), data.get("problems")
        return cls(
            kind=data["kind"],
            round=int(data["round"]),
            W=np.asarray(data["W"], dtype=np.float64),
            curvature=bool(data["curvature"]),
            curvature_at=None if at is None else np.asarray(at, dtype=np.float64),
            classes=None if classes is None else tuple(classes),
            problems=None if problems is None else tuple(problems),
            rows_label=data.get("rows_label"),
            augment=bool(data.get("augment", False)),
        )


@dataclass(frozen=True, eq=False)
class ClientStatistics:
    """One client's answer to a :class:`RoundRequest`.

    Attributes
    ----------
    client_id : str
    round : int
    n : int
        Rows the statistics cover.
    gradient : ndarray of shape (n_problems, n_features)
        Loss-gradient sum at ``W`` (no regulariser, no perturbation).
    hessian : ndarray of shape (n_problems, n_features, n_features), optional
        Loss-Hessian sum at ``curvature_at``; None when the round did not ask for it.
    rows_label : int, float or str, optional
        Set when the statistics cover only the rows with this label.
    """

    client_id: str
    round: int
    n: int
    gradient: Array
    hessian: Array | None = None
    rows_label: Label | None = None

    def check(self, n_problems: int, n_features: int) -> None:
        """Raise :class:`FederatedError` unless the arrays have the model's shapes."""
        K, d = n_problems, n_features
        problems = []
        if self.gradient.shape != (K, d):
            problems.append(f"gradient has shape {self.gradient.shape}, expected {(K, d)}")
        if self.hessian is not None and self.hessian.shape != (K, d, d):
            problems.append(f"hessian has shape {self.hessian.shape}, expected {(K, d, d)}")
        if self.n < 0:
            problems.append(f"n = {self.n} is negative")
        arrays = [self.gradient] if self.hessian is None else [self.gradient, self.hessian]
        if not problems and not all(np.isfinite(a).all() for a in arrays):
            problems.append("the statistics contain NaN or infinity")
        if problems:
            msg = f"client {self.client_id!r}, round {self.round}: " + "; ".join(problems)
            raise FederatedError(msg)

    # -- the wire form --------------------------------------------------------------------
    def to_events(
        self, model_id: str, problem_labels: Sequence[Any] | None = None
    ) -> list[ClientStats]:
        """The K ``ClientStats`` events (schema 1) that carry these statistics.

        Parameters
        ----------
        model_id : str
        problem_labels : sequence of length n_problems, optional
            The class of every one-vs-rest problem (its ``class_label``); None for a
            single problem.

        Raises
        ------
        FederatedError
            For statistics that schema 1 cannot carry: without a Hessian (gradient-only
            rounds) or restricted to one label's rows (class removal).
        """
        if self.hessian is None or self.rows_label is not None:
            msg = (
                f"client {self.client_id!r}, round {self.round}: ClientStats (schema 1) needs "
                "a Hessian and has no field for rows_label; gradient-only reports and class-k "
                "contributions wait for the schema change (hessian optional, rows_label)"
            )
            raise FederatedError(msg)
        K = self.gradient.shape[0]
        now = datetime.now(UTC)
        labels: list[Any] = [None] * K if problem_labels is None else list(problem_labels)
        if len(labels) != K:
            msg = f"{len(labels)} problem labels for statistics of {K} problems"
            raise FederatedError(msg)
        return [
            ClientStats(
                event_id=f"{model_id}:{self.client_id}:{self.round}:{k}",
                model_id=model_id,
                client_id=self.client_id,
                round=self.round,
                n=self.n,
                class_label=_plain(labels[k]),
                gradient=self.gradient[k].tolist(),
                hessian=self.hessian[k].ravel().tolist(),
                ts=now,
            )
            for k in range(K)
        ]

    @classmethod
    def from_events(
        cls, events: Sequence[ClientStats], problem_labels: Sequence[Any] | None = None
    ) -> ClientStatistics:
        """Reassemble the statistics of one client and round from its K events (any order)."""
        if not events:
            msg = "no ClientStats events given"
            raise FederatedError(msg)
        first = events[0]
        key = (first.client_id, first.round, first.n)
        if any((e.client_id, e.round, e.n) != key for e in events):
            msg = f"events of client {first.client_id!r} mix clients, rounds or counts"
            raise FederatedError(msg)
        labels: list[Any] = [None] if problem_labels is None else list(problem_labels)
        by_label = {e.class_label: e for e in events}
        missing = [label for label in labels if _plain(label) not in by_label]
        if missing or len(events) != len(labels):
            msg = (
                f"client {first.client_id!r}, round {first.round}: got {len(events)} events "
                f"for {len(labels)} problems (missing classes: {missing!r})"
            )
            raise FederatedError(msg)
        ordered = [by_label[_plain(label)] for label in labels]
        d = len(ordered[0].gradient)
        if any(len(e.gradient) != d for e in ordered):
            msg = f"client {first.client_id!r}: gradients of different lengths"
            raise FederatedError(msg)
        return cls(
            client_id=first.client_id,
            round=first.round,
            n=first.n,
            gradient=np.array([e.gradient for e in ordered], dtype=np.float64),
            hessian=np.array([e.hessian for e in ordered], dtype=np.float64).reshape(-1, d, d),
        )

"""The federation as the streaming pipeline shares it: its definition and its open round.

A federation is declared once (:meth:`FederationBoard.create`, by the operator who sets
it up): the model id, the model kind and its hyperparameters, the classes, the number of
features and the member clients. The worker that runs the server
(:class:`~pipeline.federated.coordinator.FederatedCoordinator`) reads that definition,
and after every round it posts the next :class:`~pipeline.federated.RoundRequest` (the
global model W and the round number) on the board; clients read it, compute their
statistics locally and publish them as ``ClientStats`` events on ``unlearn.federated``
(:class:`pipeline.sdk.FederatedClient`). When no round is open the board says so; the
released model is then the model's current version in the registry.

Both live in Redis next to the model's other keys, under the same hash tag
(``KeySpace.federation`` and ``KeySpace.federation_round``; see ``docs/redis-keys.md``).

Statistics go on the wire as ``ClientStats`` schema 1, which always carries a Hessian, so
a streaming federation runs plain Newton (every round asks for curvature,
``refresh_above = 0``) and removes a class by asking every client for fresh statistics
over the remaining classes (``class_rows=False``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from pipeline.errors import InvalidInput
from pipeline.federated.errors import FederatedError
from pipeline.federated.server import FederatedServer
from pipeline.federated.statistics import RoundRequest
from pipeline.store import Store
from pipeline.unlearning.kinds import KINDS

__all__ = ["FederationBoard", "FederationSpec", "PostedRound"]


@dataclass(frozen=True)
class FederationSpec:
    """What a federation is: enough for any worker to build its server.

    Attributes
    ----------
    model_id : str
    kind : str
        A model kind with a federated server (:mod:`pipeline.unlearning.kinds`): logistic or
        ridge.
    n_features : int
    members : list of str
        Client ids; every one must report in every round.
    classes : list, optional
        A classifier only (logistic): every class the model predicts.
    params : dict
        Hyperparameters of the kind's server
        (:meth:`~pipeline.federated.server.FederatedServer.stream_params`):
        :class:`~pipeline.federated.FederatedLogistic` (``lam``, ``sigma``, ``epsilon``,
        ``delta``, ``seed``, ``tol``, ``max_rounds``, ``release_below``) or
        :class:`~pipeline.federated.FederatedRidge` (``alpha``, ``fit_intercept``,
        ``sigma``, ...).
    """

    model_id: str
    kind: str
    n_features: int
    members: list[str]
    classes: list[Any] | None = None
    params: dict[str, Any] = field(default_factory=dict)

    def server(self) -> FederatedServer:
        """A fresh server for this federation (raises on unknown parameters)."""
        kind = KINDS.get(self.kind)
        server: type[FederatedServer] | None = None
        if kind is not None and kind.federated is not None:
            server = kind.federated_server()
        allowed = set(server.stream_params()) if server is not None else set()
        unknown = sorted(set(self.params) - allowed)
        if unknown or server is None or not self.members:
            msg = (
                f"federation {self.model_id!r}: kind {self.kind!r}, members {self.members!r}, "
                f"unknown parameters {unknown!r} (allowed: {sorted(allowed)})"
            )
            raise InvalidInput(msg)
        assert kind is not None
        if kind.classifier and self.classes is None:
            msg = f"federation {self.model_id!r}: a {self.kind} federation needs its classes"
            raise InvalidInput(msg)
        return server.for_federation(self.n_features, self.classes, self.params)

    def to_json(self) -> str:
        return json.dumps(
            {
                "model_id": self.model_id,
                "kind": self.kind,
                "n_features": self.n_features,
                "members": list(self.members),
                "classes": self.classes,
                "params": self.params,
            }
        )

    @classmethod
    def from_json(cls, raw: str | bytes) -> FederationSpec:
        data = json.loads(raw)
        return cls(
            model_id=data["model_id"],
            kind=data["kind"],
            n_features=int(data["n_features"]),
            members=list(data["members"]),
            classes=data.get("classes"),
            params=dict(data.get("params") or {}),
        )


@dataclass(frozen=True)
class PostedRound:
    """The open round of a federation: what to compute, and who must answer."""

    request: RoundRequest
    members: list[str]


class FederationBoard:
    """Read and write federations' definitions and open rounds in Redis.

    Parameters
    ----------
    store : Store
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._r: Any = store.client

    def create(self, spec: FederationSpec) -> RoundRequest:
        """Declare a federation and post its first round (W = 0).

        Raises
        ------
        FederatedError
            ``spec.model_id`` is a federation or a published model already.
        InvalidInput
            The definition cannot build a server (kind, classes, parameters).
        """
        server = spec.server()
        server.start(spec.members)
        if self._store.models.current_version(spec.model_id):
            msg = f"model {spec.model_id!r} exists already: choose another id for the federation"
            raise FederatedError(msg)
        if not self._r.set(self._store.keys.federation(spec.model_id), spec.to_json(), nx=True):
            msg = f"federation {spec.model_id!r} exists already"
            raise FederatedError(msg)
        request = server.request()
        self.post(spec.model_id, request, sorted(server.members_))
        return request

    def spec(self, model_id: str) -> FederationSpec | None:
        """The federation's definition, or None if ``model_id`` is not a federation."""
        raw = self._r.get(self._store.keys.federation(model_id))
        return None if raw is None else FederationSpec.from_json(raw)

    def post(self, model_id: str, request: RoundRequest | None, members: list[str]) -> None:
        """Open ``request`` for ``members`` (None: no round is open)."""
        body = {"open": request is not None, "members": members}
        if request is not None:
            body["request"] = request.to_dict()
        self._r.set(self._store.keys.federation_round(model_id), json.dumps(body))

    def posted(self, model_id: str) -> PostedRound | None:
        """The open round, or None when no round is open."""
        raw = self._r.get(self._store.keys.federation_round(model_id))
        if raw is None:
            return None
        body = json.loads(raw)
        if not body.get("open"):
            return None
        return PostedRound(RoundRequest.from_dict(body["request"]), list(body["members"]))

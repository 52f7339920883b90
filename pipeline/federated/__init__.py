"""Federated training and unlearning of the linear models (DESIGN section 8).

Clients keep their rows and send statistics (gradient, curvature, count) for the global
model; the server aggregates them and takes Newton steps on Guo et al.'s perturbed
objective, the same optimum as the centralised unlearners on the union. A client or a
whole class is forgotten by subtracting its statistics and stepping, then certified from
the remaining clients' reports. See :mod:`pipeline.federated.server` for the maths,
:mod:`pipeline.federated.board` and :mod:`pipeline.federated.coordinator` for the
streaming protocol on ``unlearn.federated``.
"""

from pipeline.federated.board import FederationBoard, FederationSpec, PostedRound
from pipeline.federated.client import FederatedClient
from pipeline.federated.coordinator import FederatedCoordinator, decode_federated
from pipeline.federated.errors import FederatedError, RoundMismatch, UnknownClient
from pipeline.federated.logistic import FederatedLogistic
from pipeline.federated.ridge import FederatedRidge
from pipeline.federated.server import FederatedServer
from pipeline.federated.simulation import make_clients, split_non_iid
from pipeline.federated.statistics import ClientStatistics, RoundRequest

__all__ = [
    "ClientStatistics",
    "FederatedClient",
    "FederatedCoordinator",
    "FederatedError",
    "FederatedLogistic",
    "FederatedRidge",
    "FederatedServer",
    "FederationBoard",
    "FederationSpec",
    "PostedRound",
    "RoundMismatch",
    "RoundRequest",
    "UnknownClient",
    "decode_federated",
    "make_clients",
    "split_non_iid",
]

"""What applications import: publish deletions and records, read and follow models.

* :class:`DeletionClient` (application teams): ``request(...)``, ``add_records(...)``.
* :class:`ModelClient` (serving teams, privacy officers): ``get``, ``watch``, ``receipt``.
* :class:`LinearPredictor`: what ``ModelClient.get`` returns (scikit-learn style).
* :class:`ServedModel` (serving teams): the current predictor of a model, swapped in the
  background on each new version; ``predict``, ``version``, ``lag()``.
* :class:`FederatedClient` (federation members): ``answer(model_id)`` publishes the
  client's statistics for the open round.
"""

from pipeline.sdk.deletions import DeletionClient
from pipeline.sdk.federated import FederatedClient
from pipeline.sdk.models import ModelClient
from pipeline.sdk.predictor import LinearPredictor
from pipeline.sdk.serving import Lag, ModelNotReady, ServedModel

__all__ = [
    "DeletionClient",
    "FederatedClient",
    "Lag",
    "LinearPredictor",
    "ModelClient",
    "ModelNotReady",
    "ServedModel",
]

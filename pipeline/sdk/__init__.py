"""What applications import: publish deletions and records, read and follow models.

* :class:`DeletionClient` (application teams): ``request(...)``, ``add_records(...)``.
* :class:`ModelClient` (serving teams, privacy officers): ``get``, ``watch``, ``receipt``.
* :class:`LinearPredictor`: what ``ModelClient.get`` returns (scikit-learn style).
* :class:`FederatedClient` (federation members): ``answer(model_id)`` publishes the
  client's statistics for the open round.
"""

from pipeline.sdk.deletions import DeletionClient
from pipeline.sdk.federated import FederatedClient
from pipeline.sdk.models import ModelClient
from pipeline.sdk.predictor import LinearPredictor

__all__ = ["DeletionClient", "FederatedClient", "LinearPredictor", "ModelClient"]

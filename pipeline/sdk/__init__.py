"""What applications import: publish deletions and records, read and follow models.

* :class:`DeletionClient` (application teams): ``request(...)``, ``add_records(...)``.
* :class:`ModelClient` (serving teams, privacy officers): ``get``, ``watch``, ``receipt``.
* :class:`LinearPredictor`: what ``ModelClient.get`` returns (scikit-learn style).
"""

from pipeline.sdk.deletions import DeletionClient
from pipeline.sdk.models import ModelClient
from pipeline.sdk.predictor import LinearPredictor

__all__ = ["DeletionClient", "LinearPredictor", "ModelClient"]

"""The unlearning engine: linear models that forget and learn records in batches.

See :mod:`pipeline.unlearning.logistic` (influence and Fisher updates with certified removal)
and :mod:`pipeline.unlearning.ridge` (exact removal); :mod:`pipeline.unlearning.certify`
holds the budget and the bounds, :mod:`pipeline.unlearning.perturbation` the secret b;
:mod:`pipeline.unlearning.features` and :mod:`pipeline.unlearning.labels` forget feature
columns and correct labels (``forget_features``, ``relabel``).
"""

from pipeline.unlearning.certify import budget, worst_case_bound
from pipeline.unlearning.logistic import LogisticUnlearner
from pipeline.unlearning.report import EMPTIED, UpdateReport
from pipeline.unlearning.ridge import RidgeUnlearner

__all__ = [
    "EMPTIED",
    "LogisticUnlearner",
    "RidgeUnlearner",
    "UpdateReport",
    "budget",
    "worst_case_bound",
]

"""An independent audit of a published model: did forgetting work, and is the model what it says?

A privacy officer, an auditor or a regulator asks for evidence, not for a number the pipeline
wrote about itself. :func:`audit` reads what is stored (Redis, and the broker's topics for the
request's audit trail and the tombstones), never the worker's in-memory engine, recomputes
what can be recomputed and compares it with what the pipeline recorded. It returns an
:class:`AuditReport` with a verdict per part and overall, stores the report's JSON with the
version (``KeySpace.audits``, readable by the reader role) and is what
``unlearn audit MODEL [--request ID] [--reference]`` prints.

One module per part, each docstring stating its maths and its limits:

============================  ===========================================================
:mod:`~.certificate`          the gradient residual recomputed from the stored records
                              (Guo et al., ICML 2020, Theorem 3), against the recorded
                              certificate and the budget
:mod:`~.integrity`            published coefficients equal to the checkpoint's; record
                              counts and ids consistent; no orphaned features
:mod:`~.erasure`              a request's data absent from every store, earlier versions
                              retired, suppressions held, tombstones last on the topic
                              (:mod:`~.broker` reads the topics)
:mod:`~.membership`           loss-threshold (Yeom et al., 2018) and per-example LiRA
                              (Carlini et al., 2022; :mod:`~.lira`) AUCs on the erased
                              records against a retrained reference
:mod:`~.disparity`            AccErr overall and per class, AccDis on the erased data
                              (Mahadevan & Mathioudakis, 2022), against the reference
:mod:`~.injection`            the feature-injection test (Izzo et al., AISTATS 2021)
============================  ===========================================================

:mod:`~.snapshot` reads one consistent state of a model, :mod:`~.reference` holds the linear
models compared and refits the reference, :mod:`~.report` the report and its storage, and
:mod:`~.auditor` runs the parts.
"""

from pipeline.audit.auditor import audit
from pipeline.audit.certificate import Residual, recompute_residual
from pipeline.audit.disparity import DISPARITY_TOLERANCE, disparity
from pipeline.audit.injection import InjectionResult, feature_injection, inject_feature
from pipeline.audit.lira import ShadowSetup, roc_auc
from pipeline.audit.membership import (
    MEMBERSHIP_TOLERANCE,
    loss_threshold_auc,
    membership,
    membership_from_store,
)
from pipeline.audit.reference import LinearModel
from pipeline.audit.report import (
    PARTS,
    AuditReport,
    Finding,
    PartReport,
    UnknownRequest,
    latest_report,
    load_report,
)

__all__ = [
    "DISPARITY_TOLERANCE",
    "MEMBERSHIP_TOLERANCE",
    "PARTS",
    "AuditReport",
    "Finding",
    "InjectionResult",
    "LinearModel",
    "PartReport",
    "Residual",
    "ShadowSetup",
    "UnknownRequest",
    "audit",
    "disparity",
    "feature_injection",
    "inject_feature",
    "latest_report",
    "load_report",
    "loss_threshold_auc",
    "membership",
    "membership_from_store",
    "recompute_residual",
    "roc_auc",
]

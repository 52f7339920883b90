r"""The logistic unlearner's three certificates, each an object that owns its state.

A certificate knows, after every update, an upper bound of the gradient residual
:math:`\lVert \nabla L_b(w; D')\rVert` per problem that Guo et al.'s Theorem 3 constrains
(:mod:`pipeline.unlearning.certify` states the theorem, the budget and the bounds):

:class:`ExactCertificate` (``"exact"``)
    measures the residual after every update (two passes over the records, ``O(n d)``), and
    keeps only it.

:class:`BoundCertificate` (``"bound"``)
    adds to the residual known at the last fit a per-step increment,
    :func:`~pipeline.unlearning.certify.residual_growth` with Guo et al.'s Taylor term, that
    costs ``O(K d^2)`` and no pass over the records. It keeps what the increment needs: the
    Gram matrix :math:`G = X'^\top X'` of the held records and a bound of its spectral norm
    (both maintained by the batches' rows), the reference point :math:`w_{ref}` where the
    cached curvature weights' errors were last known, those errors, the drift
    :math:`w - w_{ref}` as a path length and as the product :math:`G (w - w_{ref})`, and
    the count of terms whose round-off the matrices hold.

:class:`AdaptiveCertificate` (``"adaptive"``, the default)
    is the bound with the tighter Taylor term, plus a measurement (and, with ``fisher``, a
    corrective Newton step) whenever the running value passes ``measure_above`` of the
    budget; it also counts the measurements the cached curvature's staleness forced, and
    rebuilds the curvature when they have cost about as much as a rebuild.

The model (:class:`Host`: :class:`~pipeline.unlearning.logistic.LogisticUnlearner`) takes
the steps and calls the certificate at fixed points: :meth:`Certificate.before_step`,
:meth:`Certificate.fisher_rhs`, :meth:`Certificate.after_step`, and the bookkeeping hooks
:meth:`Certificate.curvature_rebuilt`, :meth:`Certificate.removed`,
:meth:`Certificate.learned`. Each certificate saves and restores its own fields
(:mod:`pipeline.unlearning.state`). The residual is always per problem, shape (K, d); the
certificate is the sum of the K norms (one-vs-rest).
"""

from pipeline.unlearning.certificates.adaptive import AdaptiveCertificate
from pipeline.unlearning.certificates.base import Certificate, Host
from pipeline.unlearning.certificates.bound import BoundCertificate
from pipeline.unlearning.certificates.exact import ExactCertificate

__all__ = [
    "CERTIFICATE_CLASSES",
    "AdaptiveCertificate",
    "BoundCertificate",
    "Certificate",
    "ExactCertificate",
    "Host",
]

#: The certificate class of each ``certificate=`` value (the default first).
CERTIFICATE_CLASSES: dict[str, type[Certificate]] = {
    cls.kind: cls for cls in (AdaptiveCertificate, ExactCertificate, BoundCertificate)
}

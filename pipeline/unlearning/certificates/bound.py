r"""The ``"bound"`` certificate: Guo et al.'s accumulated bound, for a cached curvature."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, ClassVar, Self

import numpy as np
from numpy.typing import NDArray

from pipeline.unlearning import certify
from pipeline.unlearning._blas import single_thread
from pipeline.unlearning.certificates.base import Certificate, Host
from pipeline.unlearning.curvature import rank_update, symmetric_product, symmetrize
from pipeline.unlearning.loss import curvature_weights, margins
from pipeline.unlearning.state import Saved, Transient, load_fields, saved_fields

__all__ = ["BoundCertificate"]

Array = NDArray[np.float64]


def _symmetric(_certificate: BoundCertificate, gram: Array) -> Array:
    """The Gram matrix whole (BLAS keeps one triangle current between updates)."""
    out = np.array(gram, dtype=np.float64)
    symmetrize(out)
    return out


class BoundCertificate(Certificate):
    """Guo et al.'s accumulated bound, made valid for a cached curvature.

    Attributes
    ----------
    gram : ndarray of shape (d, d)
        :math:`G = X'^\\top X'` over the held records (one triangle current).
    spectral : float
        An upper bound of :math:`\\lVert X'\\rVert_2`.
    roundoff_terms : float
        Record terms accumulated in ``gram`` (and so in the younger curvature) since it was
        built: their round-off is charged by
        :func:`~pipeline.unlearning.certify.roundoff_allowance`.
    wref : ndarray of shape (K, d)
        The reference point: where the curvature weights' errors were last known.
    drift : ndarray of shape (K,)
        The path length of w since ``wref``.
    weight_error, err_norm : ndarray of shape (K,)
        The largest and the 2-norm of the cached weights' errors at ``wref`` (and of the
        weights learned since, against ``wref``).
    gram_drift : ndarray of shape (K, d)
        :math:`G (w - w_{ref})`, kept from batch to batch.
    gram_drift_error : ndarray of shape (K,)
        A bound of :math:`\\lVert G (w - w_{ref}) -` ``gram_drift`` :math:`\\rVert`.
    """

    kind = "bound"
    #: The Taylor term of :func:`~pipeline.unlearning.certify.residual_growth`.
    taylor: ClassVar[str] = "guo"

    gram: Annotated[Array, Saved(dump=_symmetric)]
    spectral: Annotated[float, Saved()]
    roundoff_terms: Annotated[float, Saved()]
    wref: Annotated[Array, Saved()]
    drift: Annotated[Array, Saved()]
    weight_error: Annotated[Array, Saved()]
    err_norm: Annotated[Array, Saved()]
    gram_drift: Annotated[Array, Transient("gram @ (w - wref), one product on resume")]
    gram_drift_error: Annotated[Array, Transient("round-off allowance times ||w - wref||")]

    def __init__(self, n_problems: int, width: int) -> None:
        super().__init__(n_problems, width)
        self.gram = np.zeros((width, width))
        self.spectral = 0.0
        self.roundoff_terms = 0.0
        self.weight_error = np.zeros(n_problems)
        self.err_norm = np.zeros(n_problems)
        self.restart_drift(np.zeros((n_problems, width)))

    def restart_drift(self, W: Array) -> None:
        """Take ``W`` as the reference point ``wref``: the drift ``w - wref`` and its product
        with the Gram matrix restart at 0."""
        K = W.shape[0]
        self.wref = W.copy()
        self.drift = np.zeros(K)
        self.gram_drift = np.zeros_like(W)
        self.gram_drift_error = np.zeros(K)

    def note_weight_errors(self, host: Host, Z: Array) -> None:
        """The cached weights' errors at the current model, from a measurement's margins
        ``Z`` (``O(n K)``): the bound's staleness terms restart here
        (:func:`~pipeline.unlearning.certify.residual_growth`)."""
        present = host._fitted_records().weights > 0
        errors = np.abs(curvature_weights(Z[present]) - host._cref[present])
        if errors.size:
            self.weight_error = errors.max(axis=0)
            self.err_norm = np.sqrt(np.einsum("ik,ik->k", errors, errors))
        else:
            self.weight_error = np.zeros(host._K)
            self.err_norm = np.zeros(host._K)
        self.restart_drift(host._W)

    def curvature_rebuilt(self, host: Host, *, gram: bool) -> None:
        """The weights are exact at w again. ``gram`` also rebuilds the Gram matrix and the
        spectral bound (``O(n d^2)``, at a fit); otherwise they stay as maintained: the Gram
        matrix does not depend on w (its round-off stays counted) and the spectral bound
        only loosens when records leave."""
        rec = host._fitted_records()
        self.weight_error = np.zeros(host._K)
        self.err_norm = np.zeros(host._K)
        self.restart_drift(host._W)
        if gram:
            self.gram = rec.X.T @ rec.X
            self.spectral = certify.spectral_upper_bound(self.gram)
            self.roundoff_terms = float(rec.n_records)
        else:
            self.roundoff_terms = max(self.roundoff_terms, float(rec.n_records))

    def features_dropped(self, host: Host, columns: NDArray[np.intp]) -> None:
        """The Gram matrix loses the columns' rows and columns (exact: those entries of
        :math:`X'^\\top X'` are 0 now); the spectral bound stays an upper bound (zeroing
        columns does not widen :math:`\\lVert X'\\rVert_2`)."""
        self.gram[columns, :] = 0.0
        self.gram[:, columns] = 0.0

    def settle(self, host: Host) -> None:
        """Rebuild the curvature at the fitted model unless Newton's last step just did.

        The bound charges every batch for the cached weights' distance from the true ones;
        weights taken a few Newton steps before the optimum cost more there (on MNIST 3 vs
        8, half the budget per batch of 100) than one more ``O(n d^2)`` pass costs the fit.
        """
        if not np.array_equal(self.wref, host._W):
            host._recompute_curvature()

    def removed(self, host: Host, n_rows: int) -> None:
        self.roundoff_terms += n_rows

    def learned(self, host: Host, X: Array, weights: Array) -> None:
        """The new rows' weights are exact at w; against ``wref`` they are off by a known
        amount, and they widen :math:`\\lVert X'\\rVert_2` by at most their norm."""
        self.roundoff_terms += X.shape[0]
        errors = np.abs(curvature_weights(margins(X, self.wref)) - weights)
        self.err_norm = np.sqrt(self.err_norm**2 + (errors**2).sum(axis=0))
        self.weight_error = np.maximum(self.weight_error, errors.max(axis=0))
        self.spectral = float(np.sqrt(self.spectral**2 + float((X * X).sum())))

    def before_step(self, host: Host) -> bool:
        """``drift_tol = 0`` is Guo et al.'s algorithm: the exact Hessian at w, rebuilt
        before any batch once w has moved."""
        if host.drift_tol == 0 and self.drift.any():
            host._recompute_curvature()
            return True
        return False

    def fisher_rhs(self, host: Host, delta: Array) -> Array | None:
        """A Fisher step on the remaining data's gradient: ``r - delta`` when the residual
        is known, else one pass over the records."""
        return self.residual - delta if self.residual_known else host._gradient(host._W)

    def after_step(
        self,
        host: Host,
        W_old: Array,
        step: Array,
        solve_residual: Array,
        rhs: Array,
        newton: bool,
        batch: Array,
        sign: float,
    ) -> bool:
        """Add the step's bound to the certificate (a Fisher step starts from 0, an
        influence step carries the old certificate over), then :meth:`respond`."""
        carried = np.zeros(host._K) if newton else self.cert
        increments, mismatch = self.bound_step(host, W_old, step, solve_residual, batch, sign)
        self.cert = carried + increments
        self.residual_known = False
        self.drift += np.linalg.norm(step, axis=1)
        return self.respond(host, increments, mismatch)

    def respond(self, host: Host, increments: Array, mismatch: Array) -> bool:
        """Recompute the curvature when its staleness made more than ``drift_tol`` of a
        problem's increment; returns whether it did."""
        if (mismatch > host.drift_tol * increments).any():
            host._recompute_curvature()
            return True
        return False

    def bound_step(
        self,
        host: Host,
        W_old: Array,
        step: Array,
        solve_residual: Array,
        batch: Array,
        sign: float,
    ) -> tuple[Array, Array]:
        """Bound, per problem, how much the step grew the residual; returns the bound and
        the part of it due to the cached curvature's staleness.

        The batch's rows B first enter (``sign=+1``) or leave (``-1``) the Gram matrix G.
        The bound is :func:`~pipeline.unlearning.certify.residual_growth` with this
        certificate's Taylor term; ``O(K d^2)``, no pass over records. Its ``||X'v||`` takes
        one product with G. Its ``||X'D||``, ``D = w - w_ref``, comes from ``G D``, kept
        from batch to batch instead of recomputed: B changes it by ``B^T B D`` (``O(m d)``),
        the step by ``G v``, the product just taken. ``gram_drift_error`` bounds
        ``||G D - gram_drift||`` (exact G and D): it adds up the round-off of every update,
        see the comments below.
        """
        rec = host._fitted_records()
        C = rec.max_norm
        K, d = host._K, host._width
        u = certify.UNIT_ROUNDOFF
        roundoff = certify.roundoff_allowance(self.roundoff_terms, C, host.lam * rec.n_records, d)
        D = W_old - self.wref
        with single_thread():
            rank_update(self.gram, batch, sign)
            self.gram_drift += sign * ((D @ batch.T) @ batch)
            Gv = symmetric_product(self.gram, step)
        step_norm, D_norm = np.linalg.norm(step, axis=1), np.linalg.norm(D, axis=1)
        # B^T B D sums m terms (within the round-off allowance of m terms, per unit of ||D||);
        # adding it rounds by u of the sum
        batch_roundoff = certify.roundoff_allowance(batch.shape[0], C, 0.0, d)
        self.gram_drift_error += batch_roundoff * D_norm + u * np.linalg.norm(
            self.gram_drift, axis=1
        )
        # ||X'v||^2 <= v.Gv + roundoff ||v||^2 (the matrix's and the products' round-off), and
        # likewise for D, with the kept product's error on top: + ||D|| gram_drift_error
        Xv = np.sqrt(np.maximum(np.einsum("kd,kd->k", step, Gv), 0.0) + roundoff * step_norm**2)
        XD = np.sqrt(
            np.maximum(np.einsum("kd,kd->k", D, self.gram_drift), 0.0)
            + roundoff * D_norm**2
            + D_norm * self.gram_drift_error
        )
        inc, mismatch = np.empty(K), np.empty(K)
        for k in range(K):
            inc[k], mismatch[k] = certify.residual_growth(
                C=C,
                Xv_norm=float(Xv[k]),
                XD_norm=float(XD[k]),
                err_norm=float(self.err_norm[k]),
                err_max=float(self.weight_error[k]),
                spectral=self.spectral,
                solve_residual=float(solve_residual[k]),
                step_norm=float(step_norm[k]),
                roundoff=roundoff,
                taylor=self.taylor,
            )
        self.gram_drift += Gv
        # Gv is within roundoff ||v|| of the exact product (as the bound's own products are);
        # rounding w + v moves D by up to u ||w + v||, which G scales by up to ||X'||_2^2;
        # the addition rounds by u of the sum
        self.gram_drift_error += roundoff * step_norm + u * (
            self.spectral**2 * np.linalg.norm(host._W, axis=1)
            + np.linalg.norm(self.gram_drift, axis=1)
        )
        return inc, mismatch

    # -- checkpoints ----------------------------------------------------------------------
    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any], host: Host) -> Self:
        """Restore the bound; from a checkpoint written under ``"exact"`` (which keeps none
        of it: a model resumed under another certificate), start it at the current model
        instead (:meth:`start`)."""
        own = set(_keys(BoundCertificate)) - set(_keys(Certificate))
        if not own.isdisjoint(state.keys()):
            return super().from_state_dict(state, host)
        certificate = cls(host._K, host._width)
        load_fields(
            certificate, state, what=f"{cls.kind!r} certificate", fields=saved_fields(Certificate)
        )
        certificate.start(host)
        return certificate

    def start(self, host: Host) -> None:
        """The bound's state built from the records at the current model: the Gram matrix
        (``O(n d^2)``), and the weights' errors measured here (``O(n d K)``). The round-off
        the curvature gathered since it was last rebuilt is not known: every record
        appended counts twice (in and out), an upper bound of the terms it can hold."""
        rec = host._fitted_records()
        self.gram = rec.X.T @ rec.X
        self.spectral = certify.spectral_upper_bound(self.gram)
        self.roundoff_terms = 2.0 * rec.n_appended
        _, Z = host._gradient_and_margins(host._W)
        self.note_weight_errors(host, Z)

    def restore(self, host: Host) -> None:
        """``G (w - w_ref)`` for a resumed model, from one product (within ``roundoff`` of
        exact per unit of ``||w - w_ref||``, as in :meth:`bound_step`)."""
        D = host._W - self.wref
        self.gram_drift = np.zeros_like(D)
        self.gram_drift_error = np.zeros(host._K)
        if D.any():
            rec = host._fitted_records()
            with single_thread():
                self.gram_drift = symmetric_product(self.gram, D)
            roundoff = certify.roundoff_allowance(
                self.roundoff_terms, rec.max_norm, host.lam * rec.n_records, host._width
            )
            self.gram_drift_error = roundoff * np.linalg.norm(D, axis=1)


def _keys(cls: type[Any]) -> list[str]:
    return [f.key for f in saved_fields(cls)]

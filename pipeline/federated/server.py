r"""The federated server: global Newton steps over aggregated client statistics.

Clients report, at the global model :math:`W` of a round, their loss-gradient sums
:math:`g_{ck}`, counts :math:`n_c` and, when the round asks for it, their curvature sums
:math:`H_{ck}` (:mod:`pipeline.federated.statistics`). With :math:`n = \sum_c n_c` and the
model's diagonal regulariser :math:`P` (:math:`\lambda n I` for logistic, Guo et al., ICML
2020, eq. 2; :math:`\alpha\,\mathrm{diag}(1, \dots, 1, 0)` for ridge) the server forms, per
problem k (one-vs-rest: one d x d matrix per class, never a (K d) x (K d) one),

.. math::

    \nabla L_b(w_k) = \sum_c g_{ck} + P w_k + b_k, \qquad
    \tilde H_k = \sum_c H_{ck} + P, \qquad
    w_k \leftarrow w_k - t_k \tilde H_k^{-1} \nabla L_b(w_k)

the gradient exactly (it is the gradient of the centralised objective on the union of the
clients' rows, so the federated optimum *is* the centralised one) and the curvature from
the last round that asked for it. A step is accepted when the next round shows the
gradient norm fell (the Newton direction always descends :math:`\lVert\nabla L_b\rVert^2`
when the curvature is current); otherwise :math:`t_k` is halved. Curvature is asked for
again when a step contracted the gradient norm by less than ``refresh_above`` (0: every
round, plain Newton), as the centralised engine recomputes its cached curvature. Training
stops when every problem's gradient norm is at most ``tol * n``.

**Client removal** subtracts the client's stored contribution (its last gradient, at the
released model, and its curvature, at the point every other client's was taken):
:math:`\nabla L_b(w; D \setminus D_c)` is then exact with no communication, and one Newton
step on it is Guo et al.'s removal step (the influence step plus the correction of the
released model's residual). The remaining clients' next reports refresh it (steps as
above) until the certificate below is at most ``release_below`` of the budget (as the
centralised engine's ``measure_above``; the distance to the exact optimum is then at most
certificate / (lambda n) by strong convexity) or the gradient norm is under ``tol * n``.
A fit ends, by default, with one round that takes the curvature at the released model, so
that a removal's step uses the exact Hessian there, as in Guo et al. **Class removal** drops the
class's one-vs-rest problem and subtracts the class-k contribution every client reports
for the other problems (its rows of that class, gradient at :math:`w`, curvature at the
same point as the stored curvature), then refreshes in the same way; without class-k
reports (``class_rows=False``, as on the wire, where schema 1 has no field for them) the
first round instead asks every client for fresh statistics, gradient and curvature, over
the remaining classes' rows, which leave the class out by construction. Both release a model
whose certificate is :math:`\sum_k \lVert \nabla L_b(w_k; D')\rVert` computed from the
remaining clients' reports *at the released model*: the gradient-residual certificate of
Guo et al. (Theorem 3), compared with :func:`pipeline.unlearning.certify.budget`.

This is the exact-statistics end of federated unlearning: FedEraser (Liu et al., IWQoS
2021) re-calibrates the clients' stored updates over several rounds, and Wu et al. (2022,
"Federated Unlearning with Knowledge Distillation") correct the global model server-side;
for the convex models here the stored statistics make the removal step exact and a round
or two of fresh reports certify it.
"""

from __future__ import annotations

import inspect
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any, ClassVar, Literal, Self

import numpy as np
from numpy.typing import NDArray
from scipy.linalg import cho_factor, cho_solve

from pipeline.errors import InvalidInput
from pipeline.federated.client import FederatedClient
from pipeline.federated.errors import FederatedError, RoundMismatch, UnknownClient
from pipeline.federated.statistics import ClientStatistics, ModelKind, RoundRequest
from pipeline.unlearning import certify
from pipeline.unlearning.perturbation import check_seed, draw_perturbation
from pipeline.unlearning.report import UpdateReport

__all__ = ["Clients", "FederatedServer"]

Array = NDArray[np.float64]
Clients = Mapping[str, FederatedClient] | Iterable[FederatedClient]
Phase = Literal["idle", "rounds", "class"]


@dataclass
class _Contribution:
    """A client's stored statistics: gradient at the current W, curvature at W_curv."""

    n: int
    G: Array
    H: Array | None


def _as_mapping(clients: Clients) -> dict[str, FederatedClient]:
    if isinstance(clients, Mapping):
        return dict(clients)
    return {c.client_id: c for c in clients}


class FederatedServer(ABC):
    """The round protocol, the Newton steps and the removals; subclasses give the model.

    Drive it with :meth:`request` / :meth:`receive` / :meth:`advance` (one round each),
    or in-process with :meth:`fit`, :meth:`forget_client` and :meth:`forget_class`.
    """

    kind: ModelKind
    _quadratic = False
    #: Constructor parameters a streamed federation (:meth:`for_federation`) does not take
    #: from its definition, with the value it uses instead.
    _stream_fixed: ClassVar[dict[str, Any]] = {}

    def __init__(
        self,
        *,
        sigma: float,
        epsilon: float,
        delta: float,
        seed: int | None,
        tol: float,
        max_rounds: int,
        refresh_above: float,
        curvature_at_release: bool = True,
        release_below: float = 0.5,
    ) -> None:
        if not (sigma >= 0 and epsilon > 0 and 0 < delta < 1):
            msg = f"need sigma >= 0, epsilon > 0, 0 < delta < 1; got {sigma}, {epsilon}, {delta}"
            raise InvalidInput(msg)
        if not (tol > 0 and max_rounds > 0 and 0 <= refresh_above < 1 and release_below >= 0):
            msg = (
                f"need tol > 0, max_rounds > 0, 0 <= refresh_above < 1, release_below >= 0; got "
                f"{tol}, {max_rounds}, {refresh_above}, {release_below}"
            )
            raise InvalidInput(msg)
        self.sigma, self.epsilon, self.delta = float(sigma), float(epsilon), float(delta)
        self.seed = check_seed(seed)
        self.tol, self.max_rounds = float(tol), int(max_rounds)
        self.refresh_above = float(refresh_above)
        self.curvature_at_release = bool(curvature_at_release)
        self.release_below = float(release_below)
        self.budget_ = certify.budget(self.sigma, self.epsilon, self.delta)
        self.members_: set[str] = set()
        self.round_ = 0
        self.rounds_ = 0
        self.curvature_rounds_ = 0
        self.last_rounds_ = 0
        self.last_curvature_rounds_ = 0
        self.converged_ = False
        self.history_: list[tuple[int, float, float]] = []
        self._phase: Phase = "idle"
        self._released: Array | None = None
        self._rows_label: Any = None
        self._final_curvature = False
        self._removal = False
        self._n_before: int | None = None

    # -- building one from a federation's definition ----------------------------------------
    @classmethod
    def stream_params(cls) -> tuple[str, ...]:
        """The hyperparameters a federation's definition may set
        (:class:`~pipeline.federated.board.FederationSpec` ``params``): the constructor's,
        read from its signature, except ``classes``, ``n_features`` and those the stream
        fixes."""
        names = inspect.signature(cls.__init__).parameters
        skip = {"self", "classes", "n_features", *cls._stream_fixed}
        return tuple(name for name in names if name not in skip)

    @classmethod
    def for_federation(
        cls, n_features: int, classes: Sequence[Any] | None, params: Mapping[str, Any]
    ) -> Self:
        """A fresh server for a federation's definition (``classes`` None for a regressor)."""
        return cls.build(n_features, classes, **{**params, **cls._stream_fixed})

    @classmethod
    @abstractmethod
    def build(cls, n_features: int, classes: Sequence[Any] | None, **params: Any) -> Self:
        """A fresh server with these hyperparameters (``classes``: every class predicted,
        or None for a regressor)."""

    @staticmethod
    @abstractmethod
    def client_statistics(
        client_id: str, X: Array, y: NDArray[Any], request: RoundRequest
    ) -> ClientStatistics:
        """One client's statistics for ``request``, from its rows that the request covers
        (``X`` of shape (n, n_features), ``y`` of shape (n,)): the kind's loss gradient,
        and curvature when asked, summed over the rows."""

    # -- what a model provides ------------------------------------------------------------
    @property
    @abstractmethod
    def coef_(self) -> Array:
        """The released coefficients, shape (n_features,) or (n_classes, n_features)."""

    @property
    @abstractmethod
    def intercept_(self) -> Array | float:
        """The released intercept, shape () or (n_classes,)."""

    def remove_class(self, label: Any, *, class_rows: bool = True) -> None:
        """Drop class ``label``'s problem (a classifier's server overrides this).

        Raises
        ------
        FederatedError
            This kind is a regressor: it has no classes to remove.
        """
        msg = f"a {self.kind} federation has no classes to remove"
        raise FederatedError(msg)

    @property
    @abstractmethod
    def _shape(self) -> tuple[int, int]:
        """(n_problems, n_features) of the stacked parameters."""

    @abstractmethod
    def _penalty(self, n: int) -> Array:
        """Diagonal of the regulariser's Hessian for n rows, shape (n_features,)."""

    @abstractmethod
    def _request_fields(self) -> dict[str, Any]:
        """The model's part of every round request (classes, problems, augment)."""

    # -- state ------------------------------------------------------------------------------
    @property
    def n_records_(self) -> int:
        """Rows the model was trained on, summed over member clients."""
        return sum(c.n for c in self._contrib.values()) if self._released is not None else 0

    @property
    def updating(self) -> bool:
        """True while a fit or a removal waits for rounds (:meth:`request` is open)."""
        return self._phase != "idle"

    @property
    def problem_labels(self) -> list[Any] | None:
        """The class of every stacked problem (one-vs-rest), None for a single problem."""
        return None

    @property
    def certificate_(self) -> float:
        """Gradient residual of the released model, summed over problems."""
        self._W_released()
        return float(self._cert.sum())

    def _W_released(self) -> Array:
        if self._released is None:
            msg = f"{type(self).__name__} has no released model yet: call fit(clients) first"
            raise FederatedError(msg)
        return self._released

    def _draw_perturbation(self) -> Array:
        """b ~ N(0, sigma^2 I), drawn as the centralised unlearners draw it: from the
        operating system's entropy unless ``seed`` is given (then the same b as a
        centralised model with that seed; tests only)."""
        return draw_perturbation(self.sigma, self._shape, self.seed)

    # -- the round protocol -----------------------------------------------------------------
    def start(self, client_ids: Iterable[str]) -> None:
        """Begin training from scratch (W = 0) with these member clients."""
        ids = {str(c) for c in client_ids}
        if not ids:
            msg = "a federation needs at least one client"
            raise FederatedError(msg)
        K, d = self._shape
        self.members_ = ids
        self._W = np.zeros((K, d))
        self._B = self._draw_perturbation()
        self._W_curv: Array | None = None
        self._H_sum: Array | None = None
        self._factors: list[Any] | None = None
        self._contrib: dict[str, _Contribution] = {}
        self._pending: dict[str, ClientStatistics] = {}
        self._released = None
        self._new_operation(removal=False)
        self._begin("rounds")
        self._need_curvature = True
        self._final_curvature = self.curvature_at_release and not self._quadratic

    def _begin(self, phase: Phase) -> None:
        self._phase = phase
        self._anchor: Array | None = None
        self._r_anchor = np.zeros(self._W.shape[0])
        self._S = np.zeros_like(self._W)
        self._t = np.ones(self._W.shape[0])

    def _new_operation(self, removal: bool) -> None:
        self.last_rounds_ = self.last_curvature_rounds_ = 0
        self._removed = 0
        self._removal = removal
        self.history_ = []

    def request(self) -> RoundRequest:
        """What every member client must compute for the current round."""
        if self._phase == "idle":
            msg = "no round is open: call fit/start, or remove a client or a class first"
            raise FederatedError(msg)
        class_phase = self._phase == "class"
        return RoundRequest(
            kind=self.kind,
            round=self.round_,
            W=self._W.copy(),
            curvature=self._need_curvature or class_phase,
            curvature_at=self._W_curv.copy() if class_phase and self._W_curv is not None else None,
            rows_label=self._rows_label if class_phase else None,
            **self._request_fields(),
        )

    def receive(self, stats: ClientStatistics) -> bool:
        """Take one client's answer to the current request; False if it was a redelivery.

        Raises :class:`UnknownClient` for a non-member, :class:`RoundMismatch` for another
        round, :class:`FederatedError` for wrong shapes or a missing Hessian.
        """
        if stats.client_id not in self.members_:
            raise UnknownClient(stats.client_id, self.members_)
        if stats.round != self.round_:
            raise RoundMismatch(stats.client_id, self.round_, stats.round)
        if stats.client_id in self._pending:
            return False
        stats.check(*self._shape)
        wanted = self.request()
        if wanted.curvature and stats.hessian is None:
            msg = f"client {stats.client_id!r}, round {self.round_}: the round asked for a Hessian"
            raise FederatedError(msg)
        if stats.rows_label != wanted.rows_label:
            msg = (
                f"client {stats.client_id!r}: statistics for rows {stats.rows_label!r}, "
                f"the round asked for {wanted.rows_label!r}"
            )
            raise FederatedError(msg)
        if not wanted.curvature:
            stats = replace(stats, hessian=None)  # every stored curvature describes one point
        self._pending[stats.client_id] = stats
        return True

    def missing(self) -> list[str]:
        """Member clients whose report for the current round has not arrived."""
        return sorted(self.members_ - set(self._pending))

    def advance(self) -> bool:
        """Close the round once every member has reported; True when a model is released."""
        if self.missing():
            msg = f"round {self.round_} still waits for clients {self.missing()!r}"
            raise FederatedError(msg)
        reports, self._pending = self._pending, {}
        curvature = self.request().curvature
        self.round_ += 1
        self.rounds_ += 1
        self.last_rounds_ += 1
        if curvature:
            self.curvature_rounds_ += 1
            self.last_curvature_rounds_ += 1
        if self._phase == "class":
            for cid, s in reports.items():
                c = self._contrib[cid]
                assert c.H is not None and s.hessian is not None
                c.n, c.G, c.H = c.n - s.n, c.G - s.gradient, c.H - s.hessian
            self._removed += sum(s.n for s in reports.values())
            self._curvature_changed()
            self._begin("rounds")
            return self._evaluate()
        for cid, s in reports.items():
            old = self._contrib.get(cid)
            H = s.hessian if curvature else (old.H if old is not None else None)
            self._contrib[cid] = _Contribution(s.n, s.gradient, H)
        if self._n_before is not None:  # a refresh after a class removal: count what left
            self._removed = self._n_before - sum(c.n for c in self._contrib.values())
            self._n_before = None
        if curvature:
            self._W_curv = self._W.copy()
            self._curvature_changed()
        return self._evaluate()

    # -- the Newton iteration ---------------------------------------------------------------
    def _curvature_current(self) -> bool:
        return self._W_curv is not None and bool(np.array_equal(self._W_curv, self._W))

    def _curvature_changed(self) -> None:
        self._H_sum = None
        self._factors = None

    def _gradient(self) -> Array:
        n = sum(c.n for c in self._contrib.values())
        G = sum((c.G for c in self._contrib.values()), np.zeros_like(self._W))
        return G + self._penalty(n)[None, :] * self._W + self._B

    def _solve(self, k: int, g: Array) -> Array:
        if self._factors is None:
            self._factors = [None] * self._W.shape[0]
        if self._factors[k] is None:
            if self._H_sum is None:
                Hs = [c.H for c in self._contrib.values()]
                if any(H is None for H in Hs):
                    msg = "no curvature reported yet: the first round must ask for it"
                    raise FederatedError(msg)
                H_sum = np.zeros(self._W.shape + (self._W.shape[1],))
                for H in Hs:
                    H_sum += H
                self._H_sum = H_sum
            n = sum(c.n for c in self._contrib.values())
            H = self._H_sum[k] + np.diag(self._penalty(n))
            try:
                self._factors[k] = cho_factor(H, lower=False, check_finite=False)
            except np.linalg.LinAlgError:
                msg = f"aggregated curvature of problem {k} is not positive definite"
                raise FederatedError(msg) from None
        return np.asarray(cho_solve(self._factors[k], g, check_finite=False))

    def _evaluate(self, depth: int = 0) -> bool:
        """Test the reported point, accept or shorten each problem's step, take the next."""
        g = self._gradient()
        r = np.linalg.norm(g, axis=1)
        n = sum(c.n for c in self._contrib.values())
        self.history_.append((self.round_, float(r.max()), float(r.sum())))
        done = r <= self.tol * max(n, 1)
        if self._anchor is None:
            accept = np.ones_like(done)
            ratio = np.zeros_like(r)
            self._anchor = self._W.copy()
        else:
            accept = done | (r < self._r_anchor) | (self._t < 1e-6)
            ratio = r / np.maximum(self._r_anchor, 1e-300)
        if done.all() and self._final_curvature and not self._curvature_current():
            self._final_curvature = False  # one more round: curvature at the released model
            self._need_curvature = True
            return False
        certified = (
            self._removal
            and self.budget_ > 0
            and float(r.sum()) <= self.release_below * self.budget_
        )
        if done.all() or certified or self.last_rounds_ >= self.max_rounds or depth > 5:
            self._released = self._W.copy()
            self._cert = r
            self.converged_ = bool(done.all())
            self._phase = "idle"
            return True
        W_old = self._W.copy()
        for k in range(self._W.shape[0]):
            if accept[k]:
                self._anchor[k], self._r_anchor[k] = self._W[k], r[k]
                self._S[k] = 0.0 if done[k] else self._solve(k, g[k])
                self._t[k] = 1.0
            else:
                self._t[k] *= 0.5
        self._W = self._anchor - self._t[:, None] * self._S
        stalled = accept & ~done & (ratio > self.refresh_above)
        self._need_curvature = not self._quadratic and (
            self.refresh_above == 0 or bool(stalled.any()) or not accept.all()
        )
        if self._quadratic:  # the gradient at the new point follows from the statistics
            step = self._W - W_old
            for c in self._contrib.values():
                assert c.H is not None
                c.G = c.G + np.einsum("kij,kj->ki", c.H, step)
            return self._evaluate(depth + 1)
        return False

    # -- removals -----------------------------------------------------------------------------
    def remove_client(self, client_id: str) -> None:
        """Subtract the client's contribution and take the Newton step on the rest.

        Opens refresh rounds for the remaining clients (none for ridge: the step is exact).
        """
        self._require_released()
        if client_id not in self.members_:
            raise UnknownClient(client_id, self.members_)
        if len(self.members_) == 1:
            msg = f"client {client_id!r} is the only member: nothing would remain to train on"
            raise FederatedError(msg)
        self._new_operation(removal=True)
        self.members_ = self.members_ - {client_id}
        self._removed = self._contrib.pop(client_id).n
        self._curvature_changed()
        self._begin("rounds")
        self._evaluate()

    def _require_released(self) -> None:
        if self._phase != "idle":
            msg = f"an update is in progress (round {self.round_}): finish its rounds first"
            raise FederatedError(msg)
        self._W_released()

    # -- in-process drivers -------------------------------------------------------------------
    def run(self, clients: Clients) -> UpdateReport:
        """Run rounds with these client objects until a model is released.

        Returns the report of the operation in progress (fit or removal); its ``seconds``
        cover these rounds only.
        """
        start = time.perf_counter()
        by_id = _as_mapping(clients)
        absent = sorted(self.members_ - set(by_id))
        if absent:
            msg = f"member clients {absent!r} were not given"
            raise FederatedError(msg)
        while self._phase != "idle":
            req = self.request()
            for cid in sorted(self.members_):
                self.receive(by_id[cid].statistics(req))
            self.advance()
        return self.last_report(time.perf_counter() - start)

    def fit(self, clients: Clients) -> Self:
        """Train from scratch over these clients; returns self (see :attr:`fit_report_`)."""
        by_id = _as_mapping(clients)
        self.start(by_id)
        self.fit_report_ = self.run(by_id)
        return self

    def forget_client(self, client_id: str, clients: Clients) -> UpdateReport:
        """Forget one client: subtract, step, refresh with the remaining ``clients``."""
        start = time.perf_counter()
        self.remove_client(client_id)
        return replace(self.run(clients), seconds=time.perf_counter() - start)

    _removal_method = "newton"

    def last_report(self, seconds: float = 0.0) -> UpdateReport:
        """The report of the last fit or removal, once released (``seconds`` as given)."""
        if self.updating:
            msg = f"the update in progress (round {self.round_}) has not been released yet"
            raise FederatedError(msg)
        method = self._removal_method if self._removal else "fit"
        cert = self.certificate_
        on = self.budget_ > 0
        return UpdateReport(
            method=method,
            n_removed=self._removed,
            n_added=0,
            certificate=cert,
            budget=self.budget_,
            retrain_recommended=bool(on and cert > self.budget_),
            seconds=seconds,
            certified=bool(on and cert <= self.budget_),
            certificate_kind="exact",
            curvature_recomputed=self.last_curvature_rounds_ > 0,
            n_records=self.n_records_,
        )

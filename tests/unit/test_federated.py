"""Federated statistics, protocol and removals on small real data (digits, cancer, diabetes).

The MNIST and Fashion-MNIST figures are in test_federated_mnist.py and
test_federated_class.py.
"""

import json

import numpy as np
import pytest
from sklearn.datasets import load_diabetes

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput, UnknownClass
from pipeline.events import ClassRemoved, ClientStats, DeletionRequested, decode_event, encode_event
from pipeline.federated import (
    ClientStatistics,
    FederatedClient,
    FederatedError,
    FederatedLogistic,
    FederatedRidge,
    FederationSpec,
    RoundMismatch,
    RoundRequest,
    UnknownClient,
    decode_federated,
    make_clients,
    split_non_iid,
)
from pipeline.intake import Message, Rejected
from pipeline.unlearning.loss import curvature_weights, gradient

LAM = 1e-2  # digits and cancer are small: a larger lambda keeps the problems well conditioned
SEED = 0  # the same b for the federated and the centralised models compared (tests only)


def _rel(a, b):
    return np.linalg.norm(a - b) / np.linalg.norm(b)


@pytest.fixture(scope="module")
def digit_clients(digits):
    X, y = digits
    parts = split_non_iid(y, 5, seed=3)
    return X, y, parts, make_clients(X, y, parts)


def _fit(clients, classes, d, **kw):
    return FederatedLogistic(classes, d, lam=LAM, seed=SEED, **kw).fit(clients)


# -- the statistics ------------------------------------------------------------------------
def test_split_is_a_skewed_partition(digits):
    _, y = digits
    parts = split_non_iid(y, 10, seed=3)
    allrows = np.concatenate(parts)
    assert np.array_equal(np.sort(allrows), np.arange(len(y)))  # disjoint, covers every row
    for p in parts:
        top2 = np.sort(np.bincount(y[p], minlength=10))[-2:].sum() / len(p)
        assert top2 > 0.5  # 10 classes, IID would give ~0.2


def test_client_statistics_sum_to_the_centralised_gradient_and_hessian(digit_clients):
    """sum_c g_c + lam n W + b is the centralised gradient; sum_c H_c + lam n I the Hessian."""
    X, y, _parts, clients = digit_clients
    classes = np.arange(10)
    rng = np.random.default_rng(0)
    W, Wc, B = rng.normal(size=(3, 10, X.shape[1]))
    req = RoundRequest(
        kind="logistic",
        round=0,
        W=W,
        curvature=True,
        curvature_at=Wc,
        classes=tuple(classes),
        problems=tuple(classes),
    )
    stats = [c.statistics(req) for c in clients.values()]
    n = sum(s.n for s in stats)
    assert n == len(y)
    G = sum(s.gradient for s in stats) + LAM * n * W + B
    Y = np.where(y[:, None] == classes[None, :], 1.0, -1.0)
    np.testing.assert_allclose(G, gradient(X, Y, W, B, LAM), rtol=1e-12, atol=1e-10)
    H = sum(s.hessian for s in stats)
    C = curvature_weights(X @ Wc.T)
    for k in (0, 7):
        np.testing.assert_allclose(H[k], (X * C[:, k : k + 1]).T @ X, rtol=1e-12, atol=1e-12)


def test_statistics_round_trip_through_client_stats_events(digit_clients):
    X, _y, _parts, clients = digit_clients
    client = clients["client-0"]
    classes = tuple(range(10))
    req = RoundRequest("logistic", 4, np.zeros((10, X.shape[1])), True, None, classes, classes)
    stats = client.statistics(req)
    events = stats.to_events("digits", classes)
    assert len(events) == 10 and {e.class_label for e in events} == set(classes)
    wire = [decode_event(encode_event(e), ClientStats) for e in reversed(events)]
    back = ClientStatistics.from_events(wire, classes)
    assert (back.client_id, back.round, back.n) == ("client-0", 4, stats.n)
    np.testing.assert_array_equal(back.gradient, stats.gradient)
    np.testing.assert_array_equal(back.hessian, stats.hessian)
    with pytest.raises(FederatedError, match="missing classes"):
        ClientStatistics.from_events(wire[:9], classes)


def test_round_request_round_trips_through_json(digit_clients):
    X, _y, _parts, clients = digit_clients
    fed = FederatedLogistic(np.arange(10), X.shape[1], lam=LAM, seed=SEED)
    fed.start(clients)
    req = fed.request()
    back = RoundRequest.from_dict(json.loads(json.dumps(req.to_dict())))
    np.testing.assert_array_equal(back.W, req.W)
    assert (back.round, back.curvature, back.classes, back.problems) == (
        req.round,
        req.curvature,
        req.classes,
        req.problems,
    )
    for cid in ("client-0", "client-4"):  # a client answers the decoded request identically
        a, b = clients[cid].statistics(req), clients[cid].statistics(back)
        np.testing.assert_array_equal(a.gradient, b.gradient)
        np.testing.assert_array_equal(a.hessian, b.hessian)


def test_decoding_the_federated_topic():
    def msg(value):
        return Message("t.unlearn.federated", 0, 7, b"m", value)

    good = ClassRemoved(event_id="e1", model_id="m", class_label=3)
    assert decode_federated(msg(encode_event(good)), max_bytes=10_000) == good
    assert decode_federated(msg(None), max_bytes=10_000) is None
    cases = {
        b"{not json": "malformed_json",
        encode_event(DeletionRequested(request_id="r", subject_id="s")): "wrong_type",
        b'{"type": "ClientStats", "model_id": "m"}': "schema",
        b'{"type": "ClientStats", "event_id": "e", "model_id": "m", "client_id": "c", '
        b'"round": 0, "n": 1, "gradient": [1.0, 2.0], "hessian": [1.0]}': "schema",
        b"x" * 20_000: "oversized",
    }
    for value, reason in cases.items():
        got = decode_federated(msg(value), max_bytes=10_000)
        assert isinstance(got, Rejected) and got.reason == reason, (value[:40], got)


def test_federation_spec_builds_its_server():
    spec = FederationSpec("fed", "logistic", 4, ["a", "b"], [0, 1, 2], {"lam": 0.1})
    back = FederationSpec.from_json(spec.to_json())
    assert back == spec
    server = back.server()
    assert isinstance(server, FederatedLogistic) and server.refresh_above == 0.0
    assert isinstance(FederationSpec("r", "ridge", 3, ["a"]).server(), FederatedRidge)
    with pytest.raises(InvalidInput, match="unknown parameters \\['alpha'\\]"):
        FederationSpec("fed", "logistic", 4, ["a"], [0, 1], {"alpha": 1.0}).server()
    with pytest.raises(InvalidInput, match="needs its classes"):
        FederationSpec("fed", "logistic", 4, ["a"]).server()


def test_schema_1_cannot_carry_gradient_only_or_class_statistics(digit_clients):
    X, _y, _parts, clients = digit_clients
    classes = tuple(range(10))
    W = np.zeros((10, X.shape[1]))
    no_hessian = clients["client-0"].statistics(
        RoundRequest("logistic", 0, W, False, None, classes, classes)
    )
    with pytest.raises(FederatedError, match="hessian optional"):
        no_hessian.to_events("digits", classes)
    class_rows = clients["client-0"].statistics(
        RoundRequest("logistic", 0, W, True, None, classes, classes, rows_label=3)
    )
    assert class_rows.n == int(np.sum(clients["client-0"]._y == 3))
    with pytest.raises(FederatedError, match="rows_label"):
        class_rows.to_events("digits", classes)


# -- training ------------------------------------------------------------------------------
@pytest.mark.parametrize("refresh_above", [0.25, 0.0])
def test_federated_fit_is_the_centralised_optimum(digit_clients, refresh_above):
    X, y, _parts, clients = digit_clients
    fed = _fit(clients, np.arange(10), X.shape[1], refresh_above=refresh_above)
    central = LogisticUnlearner(lam=LAM, seed=SEED).fit(X, y)
    assert fed.converged_
    assert _rel(fed.coef_, central.coef_) < 1e-7
    np.testing.assert_array_equal(fed.predict(X), central.predict(X))
    np.testing.assert_allclose(fed.predict_proba(X[:50]), central.predict_proba(X[:50]), atol=1e-8)
    assert fed.certificate_ <= 1e-9 * len(y) * 10
    if refresh_above == 0.0:  # plain Newton: every round carries curvature
        assert fed.last_curvature_rounds_ == fed.last_rounds_


def test_binary_federated_fit_matches_logistic_unlearner(cancer):
    X, y = cancer
    clients = make_clients(X, y, np.array_split(np.arange(len(y)), 3))
    fed = FederatedLogistic([0, 1], X.shape[1], lam=LAM, seed=SEED).fit(clients)
    central = LogisticUnlearner(lam=LAM, seed=SEED).fit(X, y)
    assert fed.coef_.shape == central.coef_.shape == (X.shape[1],)
    assert _rel(fed.coef_, central.coef_) < 1e-7
    assert fed.score(X, y) == central.score(X, y)


def test_driving_the_protocol_by_hand_equals_fit(digit_clients):
    X, _y, _parts, clients = digit_clients
    auto = _fit(clients, np.arange(10), X.shape[1])
    fed = FederatedLogistic(np.arange(10), X.shape[1], lam=LAM, seed=SEED)
    fed.start(clients)
    released = False
    while not released:
        req = fed.request()
        for cid in reversed(sorted(clients)):
            stats = clients[cid].statistics(req)
            assert fed.receive(stats)
            assert not fed.receive(stats)  # a redelivery is ignored
        released = fed.advance()
    np.testing.assert_allclose(fed.coef_, auto.coef_, rtol=1e-10)  # sums in another order
    assert fed.rounds_ == auto.rounds_


def test_protocol_rejects_bad_reports(digit_clients):
    X, _y, _parts, clients = digit_clients
    fed = FederatedLogistic(np.arange(10), X.shape[1], lam=LAM, seed=SEED)
    fed.start(clients)
    req = fed.request()
    assert req.curvature  # the first round must carry curvature
    good = clients["client-1"].statistics(req)
    with pytest.raises(UnknownClient, match="'mallory'"):
        fed.receive(ClientStatistics("mallory", 0, 3, good.gradient, good.hessian))
    with pytest.raises(RoundMismatch, match="round 5"):
        fed.receive(ClientStatistics("client-1", 5, good.n, good.gradient, good.hessian))
    with pytest.raises(FederatedError, match="gradient has shape"):
        fed.receive(ClientStatistics("client-1", 0, good.n, good.gradient[:3], good.hessian))
    with pytest.raises(FederatedError, match="asked for a Hessian"):
        fed.receive(ClientStatistics("client-1", 0, good.n, good.gradient, None))
    bad = good.gradient.copy()
    bad[0, 0] = np.nan
    with pytest.raises(FederatedError, match="NaN"):
        fed.receive(ClientStatistics("client-1", 0, good.n, bad, good.hessian))
    fed.receive(good)
    with pytest.raises(FederatedError, match="waits for clients"):
        fed.advance()
    with pytest.raises(FederatedError, match="in progress"):
        fed.remove_client("client-2")


def test_constructor_and_client_input_checks():
    with pytest.raises(InvalidInput, match="two distinct"):
        FederatedLogistic([1], 4)
    with pytest.raises(InvalidInput, match="lam"):
        FederatedLogistic([0, 1], 4, lam=0.0)
    with pytest.raises(InvalidInput, match="one label per row"):
        FederatedClient("a", np.zeros((3, 2)), [0, 1])
    with pytest.raises(InvalidInput, match="NaN"):
        FederatedClient("a", [[np.nan, 0.0]], [0])
    with pytest.raises(FederatedError, match="no released model"):
        FederatedLogistic([0, 1], 4).predict(np.zeros((1, 4)))


# -- removals on small data, run to convergence -------------------------------------------
def test_forgetting_clients_in_sequence_equals_retraining_without_them(digit_clients):
    X, y, parts, clients = digit_clients
    fed = _fit(clients, np.arange(10), X.shape[1], release_below=0.0)
    for cid in ("client-2", "client-4"):
        report = fed.forget_client(cid, clients)
        assert report.n_removed == len(parts[int(cid[-1])])
        assert report.certified and report.certificate_kind == "exact"
    keep = np.setdiff1d(np.arange(len(y)), np.concatenate([parts[2], parts[4]]))
    central = LogisticUnlearner(lam=LAM, seed=SEED).fit(X[keep], y[keep])
    assert fed.members_ == {"client-0", "client-1", "client-3"}
    assert fed.n_records_ == len(keep) == report.n_records
    assert _rel(fed.coef_, central.coef_) < 1e-7
    with pytest.raises(UnknownClient):
        fed.forget_client("client-2", clients)


@pytest.mark.parametrize("class_rows", [True, False], ids=["class_rows", "refresh"])
def test_forgetting_the_last_class_equals_retraining_without_it(digit_clients, class_rows):
    """Dropping the last label keeps b's other rows where a 9-class fit draws them."""
    X, y, _parts, clients = digit_clients
    fed = _fit(clients, np.arange(10), X.shape[1], release_below=0.0)
    report = fed.forget_class(9, clients, class_rows=class_rows)
    keep = y != 9
    central = LogisticUnlearner(lam=LAM, seed=SEED).fit(X[keep], y[keep])
    assert report.n_removed == int(np.sum(y == 9)) and report.n_records == int(keep.sum())
    assert list(fed.classes_) == list(range(9))
    assert _rel(fed.coef_, central.coef_) < 1e-7
    assert not np.any(fed.predict(X) == 9)
    with pytest.raises(UnknownClass):
        fed.forget_class(9, clients)


def test_class_removal_needs_one_vs_rest(cancer):
    X, y = cancer
    clients = make_clients(X, y, np.array_split(np.arange(len(y)), 2))
    fed = FederatedLogistic([0, 1], X.shape[1], lam=LAM, seed=SEED).fit(clients)
    with pytest.raises(FederatedError, match="single class would remain"):
        fed.forget_class(1, clients)
    fed.forget_client("client-0", clients)
    with pytest.raises(FederatedError, match="only member"):
        fed.forget_client("client-1", clients)


# -- ridge: exact ----------------------------------------------------------------------------
@pytest.mark.parametrize("sigma", [0.0, 1.0])
def test_federated_ridge_is_exact_and_forgets_without_rounds(sigma):
    X, y = load_diabetes(return_X_y=True)
    parts = np.array_split(np.random.default_rng(0).permutation(len(y)), 4)
    clients = make_clients(X, y, parts)
    fed = FederatedRidge(X.shape[1], alpha=0.1, sigma=sigma, seed=SEED).fit(clients)
    central = RidgeUnlearner(alpha=0.1, sigma=sigma, seed=SEED).fit(X, y)
    assert fed.last_rounds_ == 1
    np.testing.assert_allclose(fed.coef_, central.coef_, rtol=1e-10, atol=1e-9)
    assert fed.intercept_ == pytest.approx(central.intercept_, rel=1e-12)
    report = fed.forget_client("client-1", clients)
    assert fed.last_rounds_ == 0 and report.method == "exact"
    keep = np.setdiff1d(np.arange(len(y)), parts[1])
    retrained = RidgeUnlearner(alpha=0.1, sigma=sigma, seed=SEED).fit(X[keep], y[keep])
    np.testing.assert_allclose(fed.coef_, retrained.coef_, rtol=1e-10, atol=1e-9)
    np.testing.assert_allclose(fed.predict(X), retrained.predict(X), rtol=1e-10)
    assert report.certificate < 1e-6

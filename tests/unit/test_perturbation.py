"""The objective's perturbation b is secret by default: drawn from the OS, kept in the
checkpoint, never derived from a seed that was not asked for.

Guo et al.'s certificate (ICML 2020, Theorem 3) assumes b ~ N(0, sigma^2 I) is unknown to
whoever inspects the model; a default seed made b the same for every model of a shape.
"""

import numpy as np
import pytest
from typer.testing import CliRunner

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput
from pipeline.federated import FederatedLogistic, FederatedRidge, make_clients
from pipeline.store.codec import decode_state, encode_state
from pipeline.training import Table, train_model

ENGINES = {
    "logistic": (lambda **kw: LogisticUnlearner(lam=1e-2, sigma=1.0, **kw), "B"),
    "logistic-ovr": (lambda **kw: LogisticUnlearner(lam=1e-2, sigma=1.0, **kw), "B"),
    "ridge": (lambda **kw: RidgeUnlearner(alpha=1.0, sigma=0.5, **kw), "b"),
}


@pytest.fixture(params=sorted(ENGINES))
def engine(request, cancer, digits):
    X, y = digits if request.param == "logistic-ovr" else cancer
    make, key = ENGINES[request.param]
    return make, key, X[:300], y[:300]


def test_default_fits_draw_different_perturbations(engine):
    make, key, X, y = engine
    a, b = make().fit(X, y), make().fit(X, y)
    assert a.seed is None and a.state_dict()["seed"] is None  # no seed is recorded
    assert not np.array_equal(a.state_dict()[key], b.state_dict()[key])
    assert not np.allclose(a.coef_, b.coef_)


def test_a_fixed_seed_reproduces_b(engine):
    make, key, X, y = engine
    a, b = make(seed=11).fit(X, y), make(seed=11).fit(X, y)
    np.testing.assert_array_equal(a.state_dict()[key], b.state_dict()[key])
    np.testing.assert_array_equal(a.coef_, b.coef_)
    assert a.state_dict()["seed"] == 11


@pytest.mark.parametrize("include_records", [False, True])
def test_a_checkpoint_keeps_b_exactly(engine, include_records):
    make, key, X, y = engine
    model = make().fit(X, y)
    model.forget(range(10))
    state = decode_state(encode_state(model.state_dict(include_records=include_records)))
    assert state["seed"] is None
    if include_records:
        resumed = type(model).from_state_dict(state)
    else:
        resumed = type(model).from_state_dict(state, X[10:], y[10:], list(range(10, len(y))))
    assert resumed.seed is None
    np.testing.assert_array_equal(resumed.state_dict()[key], model.state_dict()[key])
    resumed.refit()  # a refit keeps the objective, b included
    model.refit()
    np.testing.assert_array_equal(resumed.state_dict()[key], model.state_dict()[key])
    np.testing.assert_allclose(resumed.coef_, model.coef_, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("seed", [-1, 1.5, "7"])
def test_a_bad_seed_is_named(seed):
    for cls in (LogisticUnlearner, RidgeUnlearner):
        with pytest.raises(InvalidInput, match=f"seed.*{seed!r}"):
            cls(seed=seed)


def test_federated_servers_draw_a_secret_b_by_default(cancer):
    X, y = cancer
    clients = make_clients(X, y, np.array_split(np.arange(len(y)), 3))
    a = FederatedLogistic([0, 1], X.shape[1], lam=1e-2, sigma=1.0).fit(clients)
    b = FederatedLogistic([0, 1], X.shape[1], lam=1e-2, sigma=1.0).fit(clients)
    assert a.seed is None and not np.allclose(a.coef_, b.coef_)
    seeded = FederatedLogistic([0, 1], X.shape[1], lam=1e-2, sigma=1.0, seed=4).fit(clients)
    central = LogisticUnlearner(lam=1e-2, sigma=1.0, seed=4).fit(X, y)
    np.testing.assert_allclose(seeded.coef_, central.coef_, rtol=1e-6)
    r1 = FederatedRidge(X.shape[1], sigma=0.5).fit(make_clients(X, y.astype(float), [range(50)]))
    r2 = FederatedRidge(X.shape[1], sigma=0.5).fit(make_clients(X, y.astype(float), [range(50)]))
    assert r1.seed is None and not np.allclose(r1.coef_, r2.coef_)


class _Publication:
    """What train_model writes, kept in memory (no Redis in the unit tier)."""

    def __init__(self, sink):
        self.sink = sink

    def __getattr__(self, name):
        def record(*args, **kwargs):
            self.sink.setdefault(name, []).append(args)
            return self

        return record


class _Models:
    def __init__(self, sink):
        self.sink = sink

    def current_version(self, model_id):
        return None

    def publication(self, model_id, version):
        return _Publication(self.sink)


class _Store:
    def __init__(self):
        self.sink: dict = {}
        self.models = _Models(self.sink)
        self.client = None
        self.keys = None


def _train(monkeypatch, table, **kwargs):
    monkeypatch.setattr("pipeline.training.index_subjects", lambda *a, **k: None, raising=False)
    store = _Store()
    engine, _ = train_model(store, "m", table, params={"lam": 1e-2, "sigma": 1.0}, **kwargs)
    (state,) = store.sink["checkpoint"][0]
    return engine, state


def test_train_model_draws_b_from_the_os_unless_seeded(monkeypatch, cancer):
    X, y = cancer
    table = Table(
        X=X, y=y, subjects=[f"s{i}" for i in range(len(y))], ids=[f"r{i}" for i in range(len(y))]
    )
    a, state_a = _train(monkeypatch, table)
    b, state_b = _train(monkeypatch, table)
    assert state_a["seed"] is None
    assert not np.array_equal(state_a["B"], state_b["B"])
    assert not np.allclose(a.coef_, b.coef_)
    c, state_c = _train(monkeypatch, table, seed=5)
    d, state_d = _train(monkeypatch, table, seed=5)
    assert state_c["seed"] == 5
    np.testing.assert_array_equal(state_c["B"], state_d["B"])
    assert c.record_ids_ == d.record_ids_  # the same holdout split
    np.testing.assert_array_equal(c.coef_, d.coef_)


def test_the_cli_seed_is_optional_and_says_it_voids_the_guarantee():
    from workers.cli import app

    runner = CliRunner()
    for command in ("train", "demo"):
        out = runner.invoke(app, [command, "--help"], env={"COLUMNS": "400"}, terminal_width=400)
        assert out.exit_code == 0, out.output
        text = " ".join(out.output.split())
        assert "voids the certified" in text, command
        assert "[default: 0]" not in text.split("--seed", 1)[1].split("--", 1)[0], command

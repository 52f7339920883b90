"""The registry of model kinds: every engine is in it once, under the kind it writes."""

import numpy as np
import pytest

from pipeline import LogisticUnlearner, RidgeUnlearner
from pipeline.errors import InvalidInput
from pipeline.unlearning.kinds import KINDS, kind_named, kind_of, kind_of_state

#: What `unlearn train` offers, for every kind at once.
CLI_OPTIONS = {
    "lam": 1e-3,
    "alpha": 1.0,
    "sigma": 1.0,
    "epsilon": 1.0,
    "delta": 1e-4,
    "seed": 3,
    "fit_intercept": True,
}


def test_every_kind_names_its_engine_and_the_engine_its_kind():
    assert set(KINDS) == {"logistic", "ridge"}
    assert {k.engine for k in KINDS.values()} == {LogisticUnlearner, RidgeUnlearner}
    for name, kind in KINDS.items():
        assert kind.name == name == kind.engine.kind
        assert kind.params() == kind.engine.param_names()


@pytest.mark.parametrize("name", sorted(KINDS))
def test_a_kind_builds_fits_and_resumes_its_engine(name, cancer):
    X, y = cancer
    kind = kind_named(name)
    engine = kind.build(**kind.select(CLI_OPTIONS)).fit(X[:100], y[:100])
    assert kind_of(engine) is kind
    state = engine.state_dict(include_records=True)
    assert kind_of_state(state) is kind
    resumed = kind.resume(state)
    assert type(resumed) is kind.engine
    np.testing.assert_array_equal(resumed.coef_, engine.coef_)
    assert kind.classes(engine) == ([0, 1] if kind.classifier else None)
    assert kind.score in ("accuracy", "r2")


def test_the_cli_options_each_kind_takes():
    assert set(kind_named("logistic").select(CLI_OPTIONS)) == set(CLI_OPTIONS) - {"alpha"}
    assert set(kind_named("ridge").select(CLI_OPTIONS)) == set(CLI_OPTIONS) - {"lam"}


def test_bad_kinds_and_parameters_are_named():
    with pytest.raises(InvalidInput, match="'forest' is not one of 'logistic', 'ridge'"):
        kind_named("forest")
    with pytest.raises(InvalidInput, match=r"takes no parameter\(s\) \['alpha'\]"):
        kind_named("logistic").build(alpha=1.0)
    with pytest.raises(InvalidInput, match="kind 'None'"):
        kind_of_state({})


def test_label_checks_name_the_record_the_label_and_the_fix(cancer):
    X, y = cancer
    logistic = LogisticUnlearner(lam=1e-2, sigma=1.0, seed=0).fit(X[:50], y[:50])
    ridge = RidgeUnlearner().fit(X[:50], y[:50].astype(float))
    check = kind_of(logistic).check_label
    assert check(logistic, 1, record_id="r", model_id="m") is None
    assert check(logistic, 7, record_id="r", model_id="m") == (
        "unknown_class",
        "record 'r' has label 7, not one of model 'm''s classes [0, 1]: refit the model to "
        "add a class",
    )
    assert check(logistic, "1", record_id="r", model_id="m")[0] == "unknown_class"
    check = kind_of(ridge).check_label
    assert check(ridge, 2.5, record_id="r", model_id="m") is None
    assert check(ridge, "x", record_id="r", model_id="m") == (
        "schema",
        "record 'r' has label 'x': model 'm' is a ridge regressor and needs a number",
    )
